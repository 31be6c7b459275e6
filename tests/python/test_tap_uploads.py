"""Table uploads and output formats, checked by independent readers: an astropy Table of
10^5 rows uploaded through pyvo and joined with a catalog (astropy search_around_sky as the
oracle), uploads in VOTable, CSV and Parquet, limits, URL uploads, and every output format
read back by astropy/pandas/pyarrow with the same values, units and NULLs."""

import http.server
import io
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pyvo
import requests
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.votable import from_table, parse_single_table, writeto
from astropy.table import MaskedColumn, Table

from conftest import Server


@pytest.fixture(scope="module")
def gaia(shared):
    return pd.read_csv(shared / "catalogs/gaia_dr3_bright.csv.gz")


@pytest.fixture(scope="module")
def probes(gaia):
    """10^5 positions: half are Gaia sources moved by up to 0.5", half are random."""
    rng = np.random.default_rng(7)
    pick = gaia.sample(50_000, random_state=7)
    ra = pick["ra"].to_numpy() + rng.normal(0, 0.2 / 3600, len(pick)) / np.cos(np.radians(pick["dec"].to_numpy()))
    dec = pick["dec"].to_numpy() + rng.normal(0, 0.2 / 3600, len(pick))
    ra = np.concatenate([ra % 360, rng.uniform(0, 360, 50_000)])
    dec = np.concatenate([np.clip(dec, -90, 90), np.degrees(np.arcsin(rng.uniform(-1, 1, 50_000)))])
    t = Table({"pid": np.arange(100_000, dtype=np.int64), "ra": ra, "dec": dec})
    t["ra"].unit = u.deg
    t["dec"].unit = u.deg
    return t


def test_pyvo_upload_of_1e5_rows_joined_with_a_catalog(tap, gaia, probes):
    query = ("SELECT p.pid, g.source_id FROM TAP_UPLOAD.probes AS p JOIN gaia AS g "
             "ON 1 = CONTAINS(POINT('ICRS', g.ra, g.dec), CIRCLE('ICRS', p.ra, p.dec, 1.0 / 3600))")
    svc = pyvo.dal.TAPService(tap)
    got = svc.run_sync(query, uploads={"probes": probes}, maxrec=1_000_000).to_table()
    a = SkyCoord(np.asarray(probes["ra"]) * u.deg, np.asarray(probes["dec"]) * u.deg)
    b = SkyCoord(gaia["ra"].to_numpy() * u.deg, gaia["dec"].to_numpy() * u.deg)
    i, j, _, _ = a.search_around_sky(b, 1 * u.arcsec)
    want = set(zip(probes["pid"][j].tolist(), gaia["source_id"].to_numpy()[i].tolist()))
    assert len(want) > 45_000
    assert set(zip(got["pid"].tolist(), got["source_id"].tolist())) == want
    # The same through an async job.
    job = svc.submit_job(query, uploads={"probes": probes}, maxrec=1_000_000)
    job.run()
    job.wait(phases=["COMPLETED", "ERROR", "ABORTED"], timeout=120)
    job.raise_if_error()
    assert len(job.fetch_result().to_table()) == len(want)
    job.delete()


@pytest.fixture(scope="module")
def nulls():
    """A small table with NULLs in every kind of column, and units."""
    t = Table()
    t["id"] = np.arange(6, dtype=np.int64)
    t["flux"] = MaskedColumn([1.5, np.nan, 3.25, 4.0, -1e-3, 7.0], mask=[0, 1, 0, 0, 0, 1], unit="mJy")
    t["count"] = MaskedColumn(np.array([1, 2, 3, 4, 5, 6], dtype=np.int32), mask=[0, 0, 1, 0, 1, 0])
    t["name"] = MaskedColumn(["a", "b b", "", "d,e", "f", "g"], mask=[0, 0, 1, 0, 0, 0])
    return t


def upload(tap, name, data, filename, query, fmt="votable"):
    return requests.post(f"{tap}/sync", data={"QUERY": query, "UPLOAD": f"{name},param:{name}",
                                              "RESPONSEFORMAT": fmt},
                         files={name: (filename, data)}, timeout=120)


def votable_bytes(t, serialization="binary2"):
    buf = io.BytesIO()
    vt = from_table(t)
    vt.get_first_table().format = serialization
    if serialization == "binary":
        # BINARY has no NULL flags: integers need a null value (astropy will not write
        # masked ones without it).
        for f in vt.get_first_table().fields:
            if f.datatype in ("short", "int", "long"):
                f.values.null = -999
    writeto(vt, buf)
    return buf.getvalue()


@pytest.mark.parametrize("serialization", ["tabledata", "binary", "binary2"])
def test_votable_uploads_in_every_serialization(tap, nulls, serialization):
    r = upload(tap, "t", votable_bytes(nulls, serialization), "t.xml",
               "SELECT * FROM TAP_UPLOAD.t ORDER BY id")
    assert r.status_code == 200, r.text
    back = parse_single_table(io.BytesIO(r.content)).to_table()
    check_same(nulls, back)


def test_csv_and_parquet_uploads(tap):
    csv = b"id,ra,dec\n1,10.5,-3.25\n2,11.0,4.5\n"
    r = upload(tap, "c", csv, "c.csv", "SELECT SUM(ra) AS s FROM TAP_UPLOAD.c", fmt="csv")
    assert r.status_code == 200, r.text
    assert pd.read_csv(io.BytesIO(r.content))["s"][0] == 21.5
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2, 3], "mag": [10.0, None, 12.0]}), buf)
    r = upload(tap, "p", buf.getvalue(), "p.parquet", "SELECT COUNT(mag) AS n FROM TAP_UPLOAD.p", fmt="csv")
    assert r.status_code == 200, r.text
    assert pd.read_csv(io.BytesIO(r.content))["n"][0] == 2


def test_upload_errors_are_clear(tap, store):
    r = upload(tap, "t", b"not a table\x00\x01", "t.bin", "SELECT * FROM TAP_UPLOAD.t")
    assert r.status_code == 400 and 'value="ERROR"' in r.text and "UPLOAD &apos;t&apos;" in r.text
    r = requests.post(f"{tap}/sync", data={"QUERY": "SELECT * FROM TAP_UPLOAD.t", "UPLOAD": "t,param:missing"})
    assert r.status_code == 400 and "param:missing" in r.text
    r = requests.post(f"{tap}/sync", data={"QUERY": "SELECT 1 AS x", "UPLOAD": "1bad,param:x"})
    assert r.status_code == 400 and "not an ADQL identifier" in r.text
    rows = "\n".join(f"{i},{i}" for i in range(50))
    with Server(store, env={"MERIDIAN_SERVER__UPLOAD_MAX_ROWS": "10",
                            "MERIDIAN_SERVER__ALLOW_URL_UPLOADS": "false"}) as s:
        r = upload(s.url, "t", f"a,b\n{rows}\n".encode(), "t.csv", "SELECT * FROM TAP_UPLOAD.t")
        assert r.status_code == 400 and "more than 10 rows" in r.text
        # URL uploads turned off.
        r = requests.post(f"{s.url}/sync", data={"QUERY": "SELECT * FROM TAP_UPLOAD.t",
                                                 "UPLOAD": "t,http://example.org/t.xml"})
        assert r.status_code == 400 and "disabled" in r.text
    with Server(store, env={"MERIDIAN_SERVER__UPLOAD_MAX_MIB": "1"}) as s:
        r = upload(s.url, "t", b"a,b\n" + b"1,2\n" * 400_000, "t.csv", "SELECT * FROM TAP_UPLOAD.t")
        assert r.status_code in (400, 413), r.status_code


def test_url_uploads_when_enabled(store, nulls, tmp_path):
    (tmp_path / "t.xml").write_bytes(votable_bytes(nulls))
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/t.xml"
    q = {"QUERY": "SELECT COUNT(*) AS n FROM TAP_UPLOAD.t", "UPLOAD": f"t,{url}", "RESPONSEFORMAT": "csv"}
    try:
        # Enabled by default, but loopback is refused: the service is no proxy into its own
        # network.
        with Server(store) as s:
            r = requests.post(f"{s.url}/sync", data=q)
            assert r.status_code == 400 and "private network" in r.text
        with Server(store, env={"MERIDIAN_SERVER__ALLOW_URL_UPLOADS": "true",
                                "MERIDIAN_SERVER__URL_UPLOADS_ALLOW_PRIVATE": "true"}) as s:
            r = requests.post(f"{s.url}/sync", data=q)
            assert r.status_code == 200, r.text
            assert pd.read_csv(io.BytesIO(r.content))["n"][0] == 6
    finally:
        httpd.shutdown()


def check_same(want, got, units=True):
    assert list(got.colnames) == list(want.colnames)
    for c in want.colnames:
        w, g = want[c], got[c]
        if w.dtype.kind in "US":
            # VOTable, FITS and headerless text have no NULL distinct from the empty
            # string: the two compare equal.
            wv = [str(v) for v in (w.filled("") if hasattr(w, "filled") else w)]
            gv = [str(v) for v in (g.filled("") if hasattr(g, "filled") else g)]
            assert [v.strip() for v in gv] == [v.strip() for v in wv], c
            continue
        wmask = np.asarray(getattr(w, "mask", np.zeros(len(w), bool)))
        gmask = np.asarray(getattr(g, "mask", np.zeros(len(g), bool)))
        if g.dtype.kind == "f":
            gmask = gmask | np.isnan(np.asarray(g, dtype=float))
        assert gmask.tolist() == wmask.tolist(), c
        keep = ~wmask
        assert np.asarray(g)[keep].tolist() == np.asarray(w)[keep].tolist(), c
        if units and w.unit is not None:
            assert str(g.unit) == str(w.unit), c


FORMATS = ["votable", "application/x-votable+xml;serialization=TABLEDATA",
           "application/x-votable+xml;serialization=BINARY",
           "application/x-votable+xml;serialization=TABLEDATA;version=1.5",
           "application/x-votable+xml;version=1.5",
           "csv", "text/csv;header=absent", "tsv", "text/tab-separated-values;header=absent",
           "fits", "parquet", "json"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_keeps_values_units_and_nulls(tap, nulls, fmt):
    r = upload(tap, "t", votable_bytes(nulls), "t.xml", "SELECT * FROM TAP_UPLOAD.t ORDER BY id", fmt=fmt)
    assert r.status_code == 200, r.text
    body = io.BytesIO(r.content)
    if "votable" in fmt:
        back = parse_single_table(body, verify="exception").to_table()
        if "version=1.5" in fmt:
            assert b'version="1.5"' in r.content[:300]
        check_same(nulls, back)
    elif fmt == "fits":
        back = Table.read(fits.open(body)[1], mask_invalid=True)
        # FITS has no NULL for text: empty strings stand for them.
        want = nulls.copy()
        want["name"] = MaskedColumn(list(nulls["name"].filled("")), mask=[False] * 6)
        back["name"] = MaskedColumn([s.strip() for s in np.asarray(back["name"])], mask=[False] * 6)
        check_same(want, back)
    elif fmt == "parquet":
        # Values and NULLs from pyarrow; units from the VO-Parquet VOTable, read by astropy
        # (astropy's own parquet.votable reader cannot take NULL strings).
        f = pq.ParquetFile(body)
        pt = f.read()
        meta = parse_single_table(io.BytesIO(f.metadata.metadata[b"IVOA.VOTable-Parquet.content"]))
        units = {fld.name: fld.unit for fld in meta.fields}
        back = Table()
        for c in pt.column_names:
            col = pt[c]
            back[c] = MaskedColumn(col.to_pandas().to_numpy(), mask=col.is_null().to_numpy(zero_copy_only=False),
                                   unit=units.get(c))
        check_same(nulls, back)
    else:
        sep = "\t" if "tab" in fmt or fmt == "tsv" else ","
        header = "absent" not in fmt
        df = pd.read_csv(body, sep=sep, header=0 if header else None, keep_default_na=False,
                         na_values=[""]) if fmt != "json" else pd.read_json(body, lines=True)
        if not header:
            assert len(df) == 6 and df.shape[1] == 4
            df.columns = nulls.colnames
        back = Table.from_pandas(df)
        for c in ["flux", "count"]:
            back[c] = MaskedColumn(np.asarray(back[c], dtype=float),
                                   mask=np.asarray(pd.isna(df[c])))
        want = nulls.copy()
        want["count"] = MaskedColumn(np.asarray(nulls["count"], dtype=float), mask=nulls["count"].mask)
        back["name"] = MaskedColumn([("" if pd.isna(v) else v) for v in df["name"]],
                                    mask=np.asarray(pd.isna(df["name"])))
        check_same(want, back, units=False)
