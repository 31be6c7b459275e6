"""Every output format of `meridian query` (in SQL mode, for a boolean column), read back by astropy (VOTable, FITS, CSV) and
pyarrow (Parquet): same values, NULLs, units and UCDs, and DALI's OVERFLOW status."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io.votable import parse
from astropy.table import Table

from conftest import run

QUERY = ("SELECT hip, ra, dec, plx, CASE WHEN plx > 10 THEN hip END AS near_hip, "
         "CASE WHEN plx > 10 THEN 'near' ELSE 'far' END AS label, "
         "CASE WHEN plx > 10 THEN plx END AS near_plx, plx > 10 AS is_near "
         "FROM hipparcos WHERE adql_contains_circle(ra, dec, 10, 10, 5) = 1 ORDER BY hip")


@pytest.fixture(scope="module")
def hip_store(tmp_path_factory, shared):
    d = tmp_path_factory.mktemp("formats")
    run("ingest", "hipparcos", shared / "catalogs/hipparcos2.vot", data_dir=d)
    return d


@pytest.fixture(scope="module")
def reference(hip_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.parquet"
    run("query", QUERY, "--lang", "sql", "--format", "parquet", "--out", out, data_dir=hip_store)
    t = pq.read_table(out)
    assert 100 < t.num_rows < 5000
    assert t.column("near_hip").null_count > 0 and t.column("near_plx").null_count > 0
    return t


def check(table, ref, nulls_masked=True):
    assert len(table) == ref.num_rows
    for name in ["hip", "ra", "dec", "plx"]:
        assert np.array_equal(np.asarray(table[name], dtype=float), ref.column(name).to_numpy()), name
    want_null = ref.column("near_hip").is_null().to_numpy(zero_copy_only=False)
    for name in ["near_hip", "near_plx"]:
        col = table[name]
        mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)))
        if name == "near_plx":
            mask = mask | np.isnan(np.asarray(col, dtype=float))
        assert np.array_equal(mask, want_null), name
        vals = np.asarray(col, dtype=float)[~want_null]
        assert np.array_equal(vals, ref.column(name).drop_null().to_numpy().astype(float)), name
    if "label" in table.colnames:
        assert [str(x) for x in table["label"]] == ref.column("label").to_pylist()


@pytest.mark.parametrize("fmt", ["votable", "votable-tabledata", "votable-binary"])
def test_votable_round_trip(hip_store, reference, tmp_path, fmt):
    out = tmp_path / "r.vot"
    run("query", QUERY, "--lang", "sql", "--format", fmt, "--out", out, data_dir=hip_store)
    vot = parse(str(out), verify="exception")
    assert vot.resources[0].infos[0].name == "QUERY_STATUS" and vot.resources[0].infos[0].value == "OK"
    table = vot.get_first_table()
    fields = {f.name: f for f in table.fields}
    assert fields["ra"].unit == "deg" and fields["ra"].ucd == "pos.eq.ra;meta.main"
    assert fields["plx"].unit == "mas"
    assert fields["hip"].datatype == "long" and fields["label"].datatype == "char"
    t = table.to_table()
    check(t, reference)
    assert list(t["is_near"]) == reference.column("is_near").to_pylist()


def test_fits_round_trip(hip_store, reference, tmp_path):
    out = tmp_path / "r.fits"
    run("query", QUERY, "--lang", "sql", "--format", "fits", "--out", out, data_dir=hip_store)
    t = Table.read(out)
    assert str(t["ra"].unit) == "deg" and str(t["plx"].unit) == "mas"
    check(t, reference)
    assert list(t["is_near"]) == reference.column("is_near").to_pylist()


def test_fits_round_trip_without_text_columns(hip_store, reference, tmp_path):
    """Every column's width known from its type: rows are encoded as they come (the other
    path, with a text column, is the test above)."""
    out = tmp_path / "n.fits"
    query = QUERY.replace("CASE WHEN plx > 10 THEN 'near' ELSE 'far' END AS label, ", "")
    run("query", query, "--lang", "sql", "--format", "fits", "--out", out, data_dir=hip_store)
    t = Table.read(out)
    assert "label" not in t.colnames
    check(t, reference)
    assert list(t["is_near"]) == reference.column("is_near").to_pylist()
    assert out.stat().st_size % 2880 == 0


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_text_round_trip(hip_store, reference, tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    run("query", QUERY, "--lang", "sql", "--format", fmt, "--out", out, data_dir=hip_store)
    t = Table.read(out, format="ascii.csv" if fmt == "csv" else "ascii.tab")
    check(t, reference)


def test_votable_overflow_status_after_the_table(hip_store, tmp_path):
    out = tmp_path / "o.vot"
    p = run("query", QUERY, "--lang", "sql", "--format", "votable", "--maxrec", "7", "--out", out, data_dir=hip_store)
    assert "MAXREC 7 reached" in p.stderr
    vot = parse(str(out))
    assert len(vot.get_first_table().to_table()) == 7
    text = out.read_text()
    assert text.index('value="OVERFLOW"') > text.index("</TABLE>")


def test_fits_to_standard_output(hip_store):
    import subprocess
    from conftest import meridian_bin
    p = subprocess.run([meridian_bin(), "--quiet", "--data-dir", str(hip_store), "query", QUERY, "--lang", "sql", "--format", "fits"],
                       capture_output=True, check=True)
    assert p.stdout[:6] == b"SIMPLE" and len(p.stdout) % 2880 == 0


def test_in_unit_converts_with_the_declared_unit(hip_store, tmp_path):
    from astropy import units as u
    out = tmp_path / "u.parquet"
    run("query", "SELECT plx, IN_UNIT(plx, 'arcsec') AS plx_as, ra, IN_UNIT(ra, 'rad') AS ra_rad, "
        "IN_UNIT(pmra, 'arcsec/yr') AS pm FROM hipparcos WHERE plx > 100", "--format", "parquet", "--out", out,
        data_dir=hip_store)
    t = pq.read_table(out).to_pandas()
    assert len(t) > 10
    assert np.allclose(t["plx_as"], (t["plx"].values * u.mas).to_value(u.arcsec), rtol=1e-14)
    assert np.allclose(t["ra_rad"], (t["ra"].values * u.deg).to_value(u.rad), rtol=1e-14)
    p = run("query", "SELECT IN_UNIT(plx, 'km') FROM hipparcos", data_dir=hip_store, check=False)
    assert p.returncode == 1 and "'mas'" in p.stderr and "cannot be converted to 'km'" in p.stderr
    p = run("query", "SELECT IN_UNIT(hip, 'deg') FROM hipparcos", data_dir=hip_store, check=False)
    assert p.returncode == 1 and "declares no unit" in p.stderr


def test_tap_answers_arrow_ipc_streams(hip_store, reference):
    """RESPONSEFORMAT=application/vnd.apache.arrow.stream (sync and async) reads back with
    pyarrow, values and NULLs equal to the Parquet reference; VOSI lists the format."""
    import time

    import pyarrow.ipc as ipc
    import requests

    from conftest import Server
    with Server(hip_store) as s:
        r = requests.post(f"{s.url}/sync", data={"LANG": "SQL", "QUERY": QUERY,
                                                 "RESPONSEFORMAT": "application/vnd.apache.arrow.stream"})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("application/vnd.apache.arrow.stream")
        t = ipc.open_stream(r.content).read_all()
        job = requests.post(f"{s.url}/async", data={"LANG": "SQL", "QUERY": QUERY, "PHASE": "RUN",
                                                    "RESPONSEFORMAT": "arrow"})
        url = job.url
        for _ in range(100):
            if requests.get(f"{url}/phase").text.strip() in ("COMPLETED", "ERROR"):
                break
            time.sleep(0.1)
        a = ipc.open_stream(requests.get(f"{url}/results/result").content).read_all()
        caps = requests.get(f"{s.url}/capabilities").text
    assert t.num_rows == reference.num_rows == a.num_rows
    for name in ["hip", "ra", "dec", "plx", "near_hip", "near_plx", "label", "is_near"]:
        assert t.column(name).to_pylist() == reference.column(name).to_pylist(), name
        assert a.column(name).to_pylist() == reference.column(name).to_pylist(), name
    assert "application/vnd.apache.arrow.stream" in caps
