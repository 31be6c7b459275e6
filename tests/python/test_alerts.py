"""Alert packets into tables: `meridian alerts convert` splits the real Rubin (with Fink's
fields) and ZTF samples into their tables, and every field of every row equals what
fastavro (the Avro reader most brokers use) reads from the same files, each source once."""

import math

import fastavro
import pyarrow.parquet as pq
import pytest

from conftest import run


def read(path):
    with open(path, "rb") as f:
        return list(fastavro.reader(f))


def unique(rows, key, last=False):
    out, seen = {}, set()
    for r in (reversed(rows) if last else rows):
        k = r.get(key)
        if k is None or k in seen:
            continue
        seen.add(k)
        out[k] = r
    return out


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, float) and math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        return float(a) == float(b)
    return a == b


def check(table_path, expected, key, extra_null=()):
    """Every row of the Parquet table equals the expected record with its key, field by
    field; fields of the table that a record lacks (`extra_null`, or all of them for rows
    from a record with fewer fields) are null."""
    got = pq.read_table(table_path).to_pylist()
    assert len(got) == len(expected), (table_path, len(got), len(expected))
    for row in got:
        want = expected[row[key]]
        for name, value in row.items():
            if name in want:
                assert same(value, want[name]), (table_path, row[key], name, value, want[name])
            else:
                assert value is None or name in extra_null, (table_path, row[key], name, value)
        missing = set(want) - set(row)
        assert not missing, (table_path, missing)
    return got


def test_rubin_alerts_equal_fastavro(shared, tmp_path):
    src = shared / "alerts/rubin_fink_sample_7alerts.avro"
    out = run("alerts", "convert", src, "--out", tmp_path).stdout
    assert "DiaSource" in out and "Cutout" in out, out
    alerts = read(src)
    assert len(alerts) == 7
    sources = [a["diaSource"] for a in alerts] + [s for a in alerts for s in (a["prvDiaSources"] or [])]
    got = check(tmp_path / "DiaSource.parquet", unique(sources, "diaSourceId"), "diaSourceId")
    assert len(got) > 7
    forced = [s for a in alerts for s in (a["prvDiaForcedSources"] or [])]
    check(tmp_path / "DiaForcedSource.parquet", unique(forced, "diaForcedSourceId"), "diaForcedSourceId")
    objects = [a["diaObject"] for a in alerts if a["diaObject"] is not None]
    check(tmp_path / "DiaObject.parquet", unique(objects, "diaObjectId", last=True), "diaObjectId")
    cutouts = [{"diaSourceId": a["diaSource"]["diaSourceId"], "cutoutScience": a["cutoutScience"],
                "cutoutTemplate": a["cutoutTemplate"], "cutoutDifference": a["cutoutDifference"]}
               for a in alerts]
    check(tmp_path / "Cutout.parquet", unique(cutouts, "diaSourceId"), "diaSourceId")


def test_ztf_alerts_equal_fastavro(shared, tmp_path):
    src = shared / "alerts/ztf_fink_sample_31alerts.avro"
    run("alerts", "convert", src, "--out", tmp_path)
    alerts = read(src)
    assert len(alerts) == 31
    cands = [{"objectId": a["objectId"], **a["candidate"]} for a in alerts]
    cands += [{"objectId": a["objectId"], **p} for a in alerts for p in (a["prv_candidates"] or [])
              if p["candid"] is not None]
    check(tmp_path / "ZtfCandidate.parquet", unique(cands, "candid"), "candid")
    limits = [{"objectId": a["objectId"], **{k: v for k, v in p.items() if k != "candid"}}
              for a in alerts for p in (a["prv_candidates"] or []) if p["candid"] is None]
    got = pq.read_table(tmp_path / "ZtfUpperLimit.parquet").to_pylist()
    assert len(got) == len(limits) > 0
    key = lambda r: (r["objectId"], r["jd"], r["fid"])  # noqa: E731
    for g, w in zip(sorted(got, key=key), sorted(limits, key=key)):
        for name, value in g.items():
            assert same(value, w.get(name)), (name, value, w.get(name))
    stamps = [{"candid": a["candid"], **{c: a[c]["stampData"] for c in
                                        ("cutoutScience", "cutoutTemplate", "cutoutDifference")}}
              for a in alerts]
    check(tmp_path / "Cutout.parquet", unique(stamps, "candid"), "candid")


def test_bad_alert_files_fail_clearly(shared, tmp_path):
    bad = tmp_path / "bad.avro"
    bad.write_bytes(b"Obj\x01 not really avro")
    p = run("alerts", "convert", bad, "--out", tmp_path / "out", check=False)
    assert p.returncode != 0 and "bad.avro" in p.stderr, p.stderr
    truncated = tmp_path / "truncated.avro"
    data = (shared / "alerts/ztf_fink_sample_31alerts.avro").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    p = run("alerts", "convert", truncated, "--out", tmp_path / "out2", check=False)
    assert p.returncode != 0 and "truncated.avro" in p.stderr, p.stderr
    assert not (tmp_path / "out2" / "ZtfCandidate.parquet").exists()
    # Mixed surveys are refused.
    p = run("alerts", "convert", shared / "alerts/ztf_fink_sample_31alerts.avro",
            shared / "alerts/rubin_fink_sample_7alerts.avro", "--out", tmp_path / "out3", check=False)
    assert p.returncode != 0 and "one survey" in p.stderr, p.stderr
