"""The TAP service through real clients (pyvo, plain HTTP) against independent oracles
(astropy on the input catalog): sync queries, MAXREC overflow, errors, every output
format, VOSI."""

import io
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import pyvo
import requests
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.votable import parse_single_table

from conftest import Server

CONE = ("SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia "
        "WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 56.75, 24.12, 2))")


@pytest.fixture(scope="module")
def gaia(shared):
    return pd.read_csv(shared / "catalogs/gaia_dr3_bright.csv.gz")


@pytest.fixture(scope="module")
def cone_ids(gaia):
    c = SkyCoord(gaia["ra"].values * u.deg, gaia["dec"].values * u.deg)
    sep = c.separation(SkyCoord(56.75 * u.deg, 24.12 * u.deg)).deg
    return set(gaia["source_id"].values[sep < 2])


def test_pyvo_sync_cone_matches_astropy(tap, cone_ids):
    svc = pyvo.dal.TAPService(tap)
    t = svc.run_sync(CONE, maxrec=100_000).to_table()
    assert len(cone_ids) > 100
    assert set(t["source_id"]) == cone_ids


def test_maxrec_overflow_is_flagged_and_server_limits_warn(tap):
    svc = pyvo.dal.TAPService(tap)
    r = svc.run_sync("SELECT source_id FROM gaia", maxrec=7)
    assert len(r) == 7 and r.status[0] == "OVERFLOW"
    r = svc.run_sync("SELECT source_id FROM gaia WHERE source_id < 0", maxrec=7)
    assert len(r) == 0 and r.status[0] == "OK"
    # Without MAXREC the service default (100,000 rows) cuts the 482,106-row table, and
    # pyvo warns about it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = svc.run_sync("SELECT source_id FROM gaia")
    assert len(r) == 100_000
    assert any("truncated" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_maxrec_zero_returns_metadata_only(tap):
    r = requests.get(f"{tap}/sync", params={"QUERY": CONE, "LANG": "ADQL", "MAXREC": 0})
    assert r.status_code == 200
    t = parse_single_table(io.BytesIO(r.content)).to_table()
    assert len(t) == 0 and t.colnames == ["source_id", "ra", "dec", "phot_g_mean_mag"]


def test_adql_errors_surface_with_position(tap):
    svc = pyvo.dal.TAPService(tap)
    with pytest.raises(pyvo.dal.DALQueryError) as e:
        svc.run_sync("SELECT ra FROM gaia WHERE")
    assert "line 1" in str(e.value), str(e.value)
    with pytest.raises(pyvo.dal.DALQueryError) as e:
        svc.run_sync("SELECT nosuchcolumn FROM gaia")
    assert "nosuchcolumn" in str(e.value)
    r = requests.post(f"{tap}/sync", data={"LANG": "ADQL"})
    assert r.status_code == 400 and 'value="ERROR"' in r.text and "QUERY" in r.text
    r = requests.post(f"{tap}/sync", data={"QUERY": CONE, "RESPONSEFORMAT": "x/nope"})
    assert r.status_code == 400 and "RESPONSEFORMAT" in r.text
    r = requests.post(f"{tap}/sync", data={"QUERY": CONE, "RESPONSEFORMAT": "votable;version=1.1"})
    assert r.status_code == 400 and "version 1.1" in r.text


@pytest.mark.parametrize("fmt", ["votable", "application/x-votable+xml;serialization=TABLEDATA",
                                 "application/x-votable+xml;serialization=BINARY", "csv", "tsv",
                                 "fits", "parquet", "json"])
def test_every_format_reads_back_the_same_rows(tap, cone_ids, fmt):
    r = requests.post(f"{tap}/sync", data={"QUERY": CONE, "LANG": "ADQL", "RESPONSEFORMAT": fmt,
                                           "MAXREC": 100_000})
    assert r.status_code == 200, r.text
    body = io.BytesIO(r.content)
    if "votable" in fmt:
        ids = parse_single_table(body, verify="exception").to_table()["source_id"]
    elif fmt == "csv":
        ids = pd.read_csv(body)["source_id"]
    elif fmt == "tsv":
        ids = pd.read_csv(body, sep="\t")["source_id"]
    elif fmt == "fits":
        ids = fits.open(body)[1].data["source_id"]
    elif fmt == "parquet":
        ids = pq.read_table(body)["source_id"].to_numpy()
    else:
        ids = pd.read_json(body, lines=True)["source_id"]
    assert set(np.asarray(ids).tolist()) == cone_ids


def test_vosi_tables_capabilities_availability(tap):
    svc = pyvo.dal.TAPService(tap)
    assert svc.available
    langs = [lang.name for lang in svc.capabilities[-1].languages] if hasattr(svc.capabilities[-1], "languages") else []
    assert "ADQL" in langs
    names = [t.name for t in svc.tables]
    assert "gaia" in names and "tycho2" in names
    cols = {c.name: c for c in svc.tables["tycho2"].columns}
    assert cols["ra"].unit == "deg" and cols["ra"].datatype.content == "double"
    r = requests.get(f"{tap}/tables/nosuch")
    assert r.status_code == 404


def test_health_and_metrics(tap):
    base = tap.rsplit("/tap", 1)[0]
    assert requests.get(f"{base}/health").text.strip() == "ok"
    m = requests.get(f"{base}/metrics").text
    assert "meridian_http_requests_total" in m and "meridian_result_bytes_total" in m


def test_sync_time_limit_stops_a_runaway_query(store):
    import time
    with Server(store, env={"MERIDIAN_SERVER__SYNC_TIMEOUT_S": "2"}) as s:
        start = time.time()
        r = requests.post(f"{s.url}/sync", data={
            "QUERY": "SELECT COUNT(*) FROM gaia AS a, gaia AS b WHERE a.ra + b.ra > 1000"})
        elapsed = time.time() - start
        assert r.status_code == 500 and "time limit of 2 s" in r.text, r.text
        assert 'value="ERROR"' in r.text
        assert elapsed < 6, elapsed
        # The service is still there.
        assert requests.get(f"{s.url}/availability").status_code == 200


def test_time_limit_mid_stream_breaks_the_transfer(store):
    """A result already streaming when the time limit strikes must end as a broken
    transfer, never as a well-formed but silently short table."""
    import time
    with Server(store, env={"MERIDIAN_SERVER__SYNC_TIMEOUT_S": "2"}) as s:
        query = "SELECT a.source_id, b.source_id AS other FROM gaia AS a, gaia AS b"
        got = b""
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            with requests.post(f"{s.url}/sync", stream=True, data={
                    "QUERY": query, "MAXREC": "100000000", "FORMAT": "csv"}) as r:
                assert r.status_code == 200
                for chunk in r.iter_content(65536):
                    got += chunk
                    time.sleep(0.01)  # a slow reader: the server must wait, not buffer
        assert got.startswith(b"source_id,other\r\n") or got.startswith(b"source_id,other\n")
        assert requests.get(f"{s.url}/availability").status_code == 200


def test_client_leaving_mid_stream_stops_the_query(store):
    with Server(store) as s:
        base = s.url.rsplit("/tap", 1)[0]
        query = "SELECT a.source_id, b.source_id AS other FROM gaia AS a, gaia AS b"
        for fmt in ("votable", "fits", "csv"):
            with requests.post(f"{s.url}/sync", stream=True, data={
                    "QUERY": query, "MAXREC": "100000000", "FORMAT": fmt}) as r:
                assert r.status_code == 200
                next(r.iter_content(65536))
        # The server is still serving, and the abandoned queries do not hold it up.
        r = requests.post(f"{s.url}/sync", data={"QUERY": "SELECT COUNT(*) AS n FROM tycho2",
                                                  "FORMAT": "csv"}, timeout=30)
        assert r.status_code == 200 and r.text.splitlines()[1].strip().isdigit()
        assert requests.get(f"{base}/health").status_code == 200


def test_empty_csv_and_tsv_results_keep_their_header(tap):
    """An empty result is still a table: its header names the columns."""
    for fmt, sep in (("csv", ","), ("tsv", "\t")):
        r = requests.post(f"{tap}/sync", data={
            "QUERY": "SELECT source_id, ra FROM gaia WHERE ra < -1", "FORMAT": fmt})
        assert r.status_code == 200, r.text
        df = pd.read_csv(io.StringIO(r.text), sep=sep)
        assert list(df.columns) == ["source_id", "ra"] and len(df) == 0, r.text
