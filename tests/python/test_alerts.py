"""Alert packets into tables: `meridian alerts convert` splits the real Rubin (with Fink's
fields) and ZTF samples into their tables, and `meridian alerts load` appends them to the
alert database served over TAP; every field of every row equals what fastavro (the Avro
reader most brokers use) reads from the same files, each source once."""

import math

import fastavro
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import Server, run


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


def deep_same(a, b):
    """Records equal field by field (NaN equal to NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(deep_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(deep_same(x, y) for x, y in zip(a, b))
    return same(a, b)


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


RUBIN = "alerts/rubin_fink_sample_7alerts.avro"
ZTF = "alerts/ztf_fink_sample_31alerts.avro"


def rubin_tables(alerts):
    """The Rubin tables pandas-free, from fastavro's records: {table: ({key: row}, key)}."""
    sources = [a["diaSource"] for a in alerts] + [s for a in alerts for s in (a["prvDiaSources"] or [])]
    forced = [s for a in alerts for s in (a["prvDiaForcedSources"] or [])]
    objects = [a["diaObject"] for a in alerts if a["diaObject"] is not None]
    cutouts = [{"diaSourceId": a["diaSource"]["diaSourceId"], "ra": a["diaSource"]["ra"],
                "dec": a["diaSource"]["dec"], "cutoutScience": a["cutoutScience"],
                "cutoutTemplate": a["cutoutTemplate"], "cutoutDifference": a["cutoutDifference"]}
               for a in alerts]
    return {"DiaSource": (unique(sources, "diaSourceId"), "diaSourceId"),
            "DiaForcedSource": (unique(forced, "diaForcedSourceId"), "diaForcedSourceId"),
            "DiaObject": (unique(objects, "diaObjectId", last=True), "diaObjectId"),
            "Cutout": (unique(cutouts, "diaSourceId"), "diaSourceId")}


def ztf_tables(alerts):
    """The ZTF candidates and stamps as `rubin_tables` gives them, and the upper limits
    keyed by (objectId, jd, fid), each placed at its alert's candidate when it has no
    position of its own."""
    cands = [{"objectId": a["objectId"], **a["candidate"]} for a in alerts]
    cands += [{"objectId": a["objectId"], **p} for a in alerts for p in (a["prv_candidates"] or [])
              if p["candid"] is not None]
    stamps = [{"candid": a["candid"], "ra": a["candidate"]["ra"], "dec": a["candidate"]["dec"],
               **{c: a[c]["stampData"] for c in ("cutoutScience", "cutoutTemplate", "cutoutDifference")}}
              for a in alerts]
    limits = {}
    for a in alerts:
        for p in a["prv_candidates"] or []:
            if p["candid"] is not None:
                continue
            row = {"objectId": a["objectId"], **{k: v for k, v in p.items() if k != "candid"}}
            for c in ("ra", "dec"):
                if row.get(c) is None:
                    row[c] = a["candidate"][c]
            limits.setdefault((row["objectId"], row["jd"], row["fid"]), row)
    return ({"ZtfCandidate": (unique(cands, "candid"), "candid"),
             "Cutout": (unique(stamps, "candid"), "candid")}, limits)


def check_limits(got, limits, equal=None):
    """The upper limits equal the expected ones (by `equal`, default `same`), one row each,
    with distinct ids."""
    equal = equal or same
    assert len(got) == len(limits) > 0, (len(got), len(limits))
    assert len({g["upperLimitId"] for g in got}) == len(got)
    for g in got:
        want = limits[(g["objectId"], g["jd"], g["fid"])]
        for name, value in g.items():
            if name not in ("upperLimitId", "_healpix_29"):
                assert equal(value, want.get(name)), (name, value, want.get(name))


def test_rubin_alerts_equal_fastavro(shared, tmp_path):
    src = shared / RUBIN
    out = run("alerts", "convert", src, "--out", tmp_path).stdout
    assert "DiaSource" in out and "Cutout" in out, out
    alerts = read(src)
    assert len(alerts) == 7
    for table, (rows, key) in rubin_tables(alerts).items():
        got = check(tmp_path / f"{table}.parquet", rows, key)
        assert table != "DiaSource" or len(got) > 7


def test_ztf_alerts_equal_fastavro(shared, tmp_path):
    src = shared / ZTF
    run("alerts", "convert", src, "--out", tmp_path)
    alerts = read(src)
    assert len(alerts) == 31
    tables, limits = ztf_tables(alerts)
    for table, (rows, key) in tables.items():
        check(tmp_path / f"{table}.parquet", rows, key)
    check_limits(pq.read_table(tmp_path / "ZtfUpperLimit.parquet").to_pylist(), limits)


def tap_rows(tap, table):
    """Every row of a served table, as dicts of Python values (TAP's VOTable, read by
    pyvo and astropy)."""
    t = tap.run_sync(f"SELECT * FROM {table}", maxrec=1_000_000).to_table()
    rows = []
    for r in t:
        row = {}
        for name in t.colnames:
            v = r[name]
            if isinstance(v, np.ndarray) and v.ndim == 1:
                # An unsignedByte array (a cutout; astropy widens the values): its bytes.
                v = bytes(np.asarray(v, dtype=np.uint8))
            elif hasattr(v, "mask") and bool(getattr(v, "mask", False)) is True:
                v = None
            elif hasattr(v, "item"):
                v = v.item()
            row[name] = v
        rows.append(row)
    return rows


def same_served(value, want):
    """A served value equals the Avro one (TAP carries booleans, integers, floats, text
    and binary; a float32 travels as such; VOTable text has no null apart from empty)."""
    if want is None and value == "":
        return True
    if want is None or value is None:
        return (want is None or (isinstance(want, float) and math.isnan(want))) and (
            value is None or (isinstance(value, float) and math.isnan(value)))
    if isinstance(want, float):
        return math.isclose(float(value), want, rel_tol=1e-6, abs_tol=0) or (
            math.isnan(want) and math.isnan(float(value)))
    if isinstance(want, bytes):
        return bytes(value) == want
    return value == want


def check_served(rows, expected, key):
    assert len(rows) == len(expected), (len(rows), len(expected))
    for row in rows:
        want = expected[row[key]]
        for name, value in row.items():
            if name in want:
                assert same_served(value, want[name]), (row[key], name, value, want[name])
            elif name != "_healpix_29":
                assert value is None or value == "", (row[key], name, value)


def write_avro(path, src, records):
    with open(src, "rb") as f:
        schema = fastavro.reader(f).writer_schema
    with open(path, "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(schema), records)


def test_loaded_alerts_are_served_over_tap_as_they_arrive(shared, tmp_path):
    """The Rubin sample in two files, loaded one after the other while the server runs,
    and the ZTF sample: the DIA tables served over TAP equal fastavro's records after each
    load (each source once, each object's newest summary), loading again changes nothing,
    and a cone search reads only the partitions around it."""
    import pyvo
    alerts = read(shared / RUBIN)
    first, second = tmp_path / "first.avro", tmp_path / "second.avro"
    write_avro(first, shared / RUBIN, alerts[:4])
    write_avro(second, shared / RUBIN, alerts[4:])
    data = tmp_path / "data"
    out = run("alerts", "load", first, data_dir=data).stdout
    assert "dia_source" in out and "dia_object" in out, out
    with Server(data) as s:
        tap = pyvo.dal.TAPService(s.url)
        for table, (rows, key) in {"dia_source": rubin_tables(alerts[:4])["DiaSource"],
                                   "dia_object": rubin_tables(alerts[:4])["DiaObject"]}.items():
            check_served(tap_rows(tap, table), rows, key)
        run("alerts", "load", second, data_dir=data)
        names = {"dia_source": "DiaSource", "dia_forced_source": "DiaForcedSource",
                 "dia_object": "DiaObject", "dia_cutout": "Cutout"}
        want = rubin_tables(alerts)
        for table, split in names.items():
            rows, key = want[split]
            check_served(tap_rows(tap, table), rows, key)
        # Again: nothing new.
        again = run("alerts", "load", first, second, data_dir=data).stdout
        for table, split in names.items():
            assert len(tap_rows(tap, table)) == len(want[split][0]), table
        for line in again.splitlines():
            assert line.startswith("dia_object") or "\t0 stored\t" in line, again
        # A cone around one source finds it.
        src = alerts[0]["diaSource"]
        got = tap.run_sync(
            f"SELECT diaSourceId FROM dia_source WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
            f"CIRCLE('ICRS', {src['ra']}, {src['dec']}, 0.001))").to_table()
        assert src["diaSourceId"] in list(got["diaSourceId"])

    # Catalogs new to the store are served from the next start.
    run("alerts", "load", shared / ZTF, data_dir=data)
    with Server(data) as s:
        tap = pyvo.dal.TAPService(s.url)
        ztf = read(shared / ZTF)
        tables, limits = ztf_tables(ztf)
        check_served(tap_rows(tap, "ztf_candidate"), *tables["ZtfCandidate"])
        check_served(tap_rows(tap, "ztf_cutout"), *tables["Cutout"])
        check_limits(tap_rows(tap, "ztf_upper_limit"), limits, same_served)


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


def mock_kafka():
    """A Kafka-protocol broker on loopback TCP: librdkafka's mock cluster, hosted by the
    confluent-kafka client in this process (alive while the returned producer is)."""
    import confluent_kafka as ck
    p = ck.Producer({"test.mock.num.brokers": 1, "log_level": 3})
    broker = next(iter(p.list_topics(timeout=10).brokers.values()))
    return p, f"{broker.host}:{broker.port}"


def test_alerts_from_kafka_are_served_over_tap(shared, tmp_path):
    """`meridian alerts replay` publishes the samples (Rubin's in the Confluent wire format,
    ZTF's as one-alert Avro containers); a confluent-kafka consumer reads them back and
    fastavro decodes each to the file's alert; `meridian alerts consume` stores them, and
    the tables served over TAP equal fastavro's records."""
    import io
    import json

    import confluent_kafka as ck
    import pyvo
    keep_alive, brokers = mock_kafka()
    run("alerts", "replay", shared / RUBIN, "--kafka", brokers, "--topic", "rubin", "--schema-id", 3)
    run("alerts", "replay", shared / ZTF, "--kafka", brokers, "--topic", "ztf")
    rubin, ztf = read(shared / RUBIN), read(shared / ZTF)
    with open(shared / RUBIN, "rb") as f:
        writer_schema = fastavro.reader(f).writer_schema
    parsed = fastavro.parse_schema(writer_schema)

    c = ck.Consumer({"bootstrap.servers": brokers, "group.id": "check", "auto.offset.reset": "earliest"})
    c.subscribe(["rubin", "ztf"])
    got = {"rubin": [], "ztf": []}
    import time
    deadline = time.time() + 60
    while sum(map(len, got.values())) < 38 and time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        v = m.value()
        if m.topic() == "rubin":
            assert v[0] == 0 and int.from_bytes(v[1:5], "big") == 3
            got["rubin"].append(fastavro.schemaless_reader(io.BytesIO(v[5:]), parsed))
        else:
            got["ztf"].extend(fastavro.reader(io.BytesIO(v)))
    c.close()
    key = lambda a: a["diaSource"]["diaSourceId"]  # noqa: E731
    assert deep_same(sorted(got["rubin"], key=key), sorted(rubin, key=key))
    assert sorted(a["candid"] for a in got["ztf"]) == sorted(a["candid"] for a in ztf)

    schema_file = tmp_path / "rubin.avsc"
    schema_file.write_text(json.dumps(writer_schema))
    data = tmp_path / "data"
    out = run("alerts", "consume", "--kafka", brokers, "--topic", "rubin", "--topic", "ztf",
              "--schema", f"3={schema_file}", "--stop-when-idle-s", 3, data_dir=data).stdout
    assert "consumed\t38 messages\t38 alerts stored\t0 dead letters" in out, out
    with Server(data) as s:
        tap = pyvo.dal.TAPService(s.url)
        want = rubin_tables(rubin)
        for table, split in {"dia_source": "DiaSource", "dia_object": "DiaObject",
                             "dia_forced_source": "DiaForcedSource"}.items():
            check_served(tap_rows(tap, table), *want[split])
        tables, limits = ztf_tables(ztf)
        check_served(tap_rows(tap, "ztf_candidate"), *tables["ZtfCandidate"])
        check_limits(tap_rows(tap, "ztf_upper_limit"), limits, same_served)
    del keep_alive


def test_alerts_without_a_position_go_to_the_dead_letter_table(shared, tmp_path):
    """An alert whose diaSource has a NaN position is not stored: it is counted, and kept
    in the dead-letter table with its file and index; the others are stored."""
    import sqlite3
    alerts = read(shared / RUBIN)
    bad = [dict(a) for a in alerts]
    bad[2] = {**bad[2], "diaSource": {**bad[2]["diaSource"], "ra": float("nan")}}
    path = tmp_path / "bad.avro"
    write_avro(path, shared / RUBIN, bad)
    data = tmp_path / "data"
    out = run("alerts", "load", path, data_dir=data).stdout
    assert "1 alert(s) without a valid position" in out, out
    with sqlite3.connect(data / "alerts" / "dead_letters.sqlite") as db:
        rows = db.execute("SELECT source, offset, reason FROM dead_letter").fetchall()
    assert len(rows) == 1 and rows[0][1] == 2 and "bad.avro" in rows[0][0], rows
    assert "nan" in rows[0][2].lower(), rows
    kept = alerts[:2] + alerts[3:]
    n = [line for line in out.splitlines() if line.startswith("dia_object")][0]
    assert f"\t{len(unique([a['diaObject'] for a in kept], 'diaObjectId'))} rows in all" in n, out


def test_light_curves_over_tap_and_lightcurve_equal_pandas(shared, tmp_path):
    """The light curve of a Rubin object (its DIA sources and forced photometry) and of a
    ZTF object (its detections and upper limits), from `/lightcurve` as CSV and VOTable and
    from TAP, equal the rows pandas selects from fastavro's records of the samples."""
    import io

    import pandas as pd
    import pyvo
    import requests
    from astropy.io.votable import parse_single_table
    data = tmp_path / "data"
    run("alerts", "load", shared / RUBIN, data_dir=data)
    run("alerts", "load", shared / ZTF, data_dir=data)
    alerts = read(shared / RUBIN)
    tables = rubin_tables(alerts)
    sources = pd.DataFrame(list(tables["DiaSource"][0].values()))
    forced = pd.DataFrame(list(tables["DiaForcedSource"][0].values()))
    obj = int(sources[sources.diaObjectId != 0].diaObjectId.value_counts().index[0])
    want_src = sources[sources.diaObjectId == obj].sort_values(["midpointMjdTai", "diaSourceId"])
    want_forced = forced[forced.diaObjectId == obj].sort_values(["midpointMjdTai", "diaForcedSourceId"])
    assert len(want_src) > 3 and len(want_forced) > 3

    def close(a, b):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-6, equal_nan=True)

    with Server(data) as s:
        base = s.url.removesuffix("/tap")
        tap = pyvo.dal.TAPService(s.url)
        got = tap.run_sync(f"SELECT diaSourceId, midpointMjdTai, band, psfFlux FROM dia_source "
                           f"WHERE diaObjectId = {obj} ORDER BY midpointMjdTai, diaSourceId").to_table()
        assert list(got["diaSourceId"]) == list(want_src.diaSourceId)
        close(got["psfFlux"], want_src.psfFlux)
        assert [str(b) for b in got["band"]] == list(want_src.band)

        r = requests.get(f"{base}/lightcurve", params={"ID": obj, "RESPONSEFORMAT": "csv"})
        assert r.status_code == 200, r.text
        lc = pd.read_csv(io.StringIO(r.text))
        assert list(lc.mjd) == sorted(lc.mjd)
        det, frc = lc[lc.kind == "detection"], lc[lc.kind == "forced"]
        assert list(det.measurement_id) == list(want_src.diaSourceId)
        assert list(frc.measurement_id) == list(want_forced.diaForcedSourceId)
        close(det.mjd, want_src.midpointMjdTai)
        close(det.psf_flux, want_src.psfFlux)
        close(det.psf_flux_err, want_src.psfFluxErr)
        close(frc.psf_flux, want_forced.psfFlux)
        assert list(det.band) == list(want_src.band)
        vot = parse_single_table(io.BytesIO(requests.get(
            f"{base}/lightcurve", params={"ID": obj, "SURVEY": "rubin"}).content)).to_table()
        assert len(vot) == len(lc) and list(vot["measurement_id"]) == list(lc.measurement_id)

        ztf = read(shared / ZTF)
        zobj = ztf[0]["objectId"]
        ztables, limits = ztf_tables(ztf)
        cands = pd.DataFrame(list(ztables["ZtfCandidate"][0].values()))
        want_det = cands[cands.objectId == zobj].sort_values(["jd", "candid"])
        want_lim = [v for k, v in limits.items() if k[0] == zobj]
        r = requests.get(f"{base}/lightcurve", params={"ID": zobj, "RESPONSEFORMAT": "csv"})
        assert r.status_code == 200, r.text
        lz = pd.read_csv(io.StringIO(r.text))
        zdet = lz[lz.kind == "detection"]
        assert list(zdet.measurement_id) == list(want_det.candid)
        close(zdet.mag, want_det.magpsf)
        close(zdet.mjd, want_det.jd - 2400000.5)
        assert list(zdet.band) == [{1: "g", 2: "r", 3: "i"}[f] for f in want_det.fid]
        zlim = lz[lz.kind == "upper_limit"]
        assert len(zlim) == len(want_lim) > 0
        close(sorted(zlim.limiting_mag), sorted(w["diffmaglim"] for w in want_lim))

        bad = requests.get(f"{base}/lightcurve", params={"ID": "1 OR 1=1", "SURVEY": "rubin"})
        assert bad.status_code == 400 and "not a diaObjectId" in bad.text, bad.text


def test_a_consumer_killed_mid_stream_loses_and_duplicates_nothing(shared, tmp_path):
    """`meridian alerts consume` killed with SIGKILL after its first stored batch, then
    started again: the tables hold every alert once, equal to fastavro's records (offsets
    are committed after each batch is stored; a batch read again is dropped by id)."""
    import json
    import subprocess

    import pyvo
    from conftest import meridian_bin
    keep_alive, brokers = mock_kafka()
    run("alerts", "replay", shared / RUBIN, "--kafka", brokers, "--topic", "rubin", "--schema-id", 3)
    run("alerts", "replay", shared / ZTF, "--kafka", brokers, "--topic", "ztf")
    with open(shared / RUBIN, "rb") as f:
        schema_file = tmp_path / "rubin.avsc"
        schema_file.write_text(json.dumps(fastavro.reader(f).writer_schema))
    data = tmp_path / "data"
    args = ["alerts", "consume", "--kafka", brokers, "--topic", "rubin", "--topic", "ztf",
            "--schema", f"3={schema_file}", "--batch-alerts", "2", "--batch-ms", "100",
            "--kafka-setting", "session.timeout.ms=6000",
            "--kafka-setting", "heartbeat.interval.ms=500"]
    p = subprocess.Popen([meridian_bin(), "--quiet", "--data-dir", str(data), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("batch"), line
    finally:
        p.kill()
        p.wait()
    out = run(*args, "--stop-when-idle-s", 3, data_dir=data).stdout
    import re
    resumed = int(re.search(r"consumed\t(\d+) messages", out).group(1))
    # It resumed after the committed batches, not from the start.
    assert 0 < resumed < 38, out
    with Server(data) as s:
        tap = pyvo.dal.TAPService(s.url)
        want = rubin_tables(read(shared / RUBIN))
        for table, split in {"dia_source": "DiaSource", "dia_forced_source": "DiaForcedSource",
                             "dia_object": "DiaObject", "dia_cutout": "Cutout"}.items():
            check_served(tap_rows(tap, table), *want[split])
        tables, limits = ztf_tables(read(shared / ZTF))
        check_served(tap_rows(tap, "ztf_candidate"), *tables["ZtfCandidate"])
        check_limits(tap_rows(tap, "ztf_upper_limit"), limits, same_served)
    del keep_alive


def test_an_alert_the_tables_cannot_take_is_a_dead_letter_and_the_rest_are_stored(shared, tmp_path):
    """An alert of another writer schema whose midpointMjdTai is text ("not a date") cannot
    go into dia_source (a double): it goes to the dead-letter table with its topic,
    partition and offset, and the alerts consumed with it are stored."""
    import copy
    import io
    import json
    import sqlite3

    import confluent_kafka as ck
    keep_alive, brokers = mock_kafka()
    run("alerts", "replay", shared / RUBIN, "--kafka", brokers, "--topic", "rubin", "--schema-id", 3)
    with open(shared / RUBIN, "rb") as f:
        reader = fastavro.reader(f)
        schema, alerts = reader.writer_schema, list(reader)
    odd = copy.deepcopy(schema)
    source = next(f for f in odd["fields"] if f["name"] == "diaSource")
    rec = source["type"] if isinstance(source["type"], dict) else next(
        t for t in source["type"] if isinstance(t, dict))
    next(f for f in rec["fields"] if f["name"] == "midpointMjdTai")["type"] = "string"
    bad = copy.deepcopy(alerts[0])
    bad["diaSource"]["midpointMjdTai"] = "not a date"
    bad["diaSource"]["diaSourceId"] += 1
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(odd), bad)
    p = ck.Producer({"bootstrap.servers": brokers})
    p.produce("rubin", b"\x00" + (4).to_bytes(4, "big") + buf.getvalue())
    p.flush(30)
    files = []
    for i, s in ((3, schema), (4, odd)):
        path = tmp_path / f"schema{i}.avsc"
        path.write_text(json.dumps(s))
        files += ["--schema", f"{i}={path}"]
    data = tmp_path / "data"
    out = run("alerts", "consume", "--kafka", brokers, "--topic", "rubin", *files,
              "--stop-when-idle-s", 3, data_dir=data).stdout
    assert "consumed\t8 messages\t7 alerts stored\t1 dead letters" in out, out
    with sqlite3.connect(data / "alerts" / "dead_letters.sqlite") as db:
        rows = db.execute("SELECT source, partition, offset, reason FROM dead_letter").fetchall()
    assert len(rows) == 1 and rows[0][0] == "rubin" and rows[0][1] is not None and rows[0][2] >= 0, rows
    assert "midpointMjdTai" in rows[0][3], rows
    out = run("query", "SELECT COUNT(*) AS n FROM dia_object", data_dir=data).stdout
    assert str(len(unique([a["diaObject"] for a in alerts], "diaObjectId"))) in out, out
    del keep_alive
