"""Windows of a finished job's result (`/tap/async/{id}/results/result/window`): offset,
limit, server-side sort and filters, as Arrow IPC streams, compared with pandas on the whole
result; bad parameters are 400; another user's job is not theirs to window."""

import io
import time

import pandas as pd
import pyarrow.ipc as ipc
import pytest
import requests

from conftest import Server

QUERY = "SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia WHERE dec > 20"


def job_result(job, fmt):
    """The job's own result file, read by an independent reader, in its order."""
    body = requests.get(f"{job}/results/result").content
    if fmt == "votable":
        from astropy.io.votable import parse_single_table
        return parse_single_table(io.BytesIO(body)).to_table().to_pandas()
    if fmt == "csv":
        return pd.read_csv(io.BytesIO(body))
    if fmt == "arrow":
        return ipc.open_stream(body).read_all().to_pandas()
    return pd.read_parquet(io.BytesIO(body))


def finished(url, fmt):
    job = requests.post(f"{url}/async", data={"LANG": "ADQL", "QUERY": QUERY, "PHASE": "RUN",
                                              "RESPONSEFORMAT": fmt, "MAXREC": 10**7})
    for _ in range(300):
        if requests.get(f"{job.url}/phase").text.strip() in ("COMPLETED", "ERROR"):
            break
        time.sleep(0.1)
    assert requests.get(f"{job.url}/phase").text.strip() == "COMPLETED"
    return job.url


@pytest.mark.parametrize("fmt", ["votable", "csv", "arrow", "parquet"])
def test_windows_equal_pandas_on_the_whole_result(store, fmt):
    with Server(store) as s:
        job = finished(s.url, fmt)
        whole = pd.read_csv(io.StringIO(requests.get(f"{s.url}/sync", params={
            "LANG": "ADQL", "QUERY": QUERY, "FORMAT": "csv", "MAXREC": 10**7}).text))
        w = f"{job}/results/result/window"
        r = requests.get(w, params={"OFFSET": 10, "LIMIT": 25, "SORT": "-phot_g_mean_mag,source_id"})
        assert r.status_code == 200, r.text
        got = ipc.open_stream(r.content).read_all().to_pandas()
        assert int(r.headers["X-Total-Rows"]) == len(whole) > 1000
        want = whole.sort_values(["phot_g_mean_mag", "source_id"], ascending=[False, True]).iloc[10:35]
        assert list(got["source_id"]) == list(want["source_id"])
        r = requests.get(w, params=[("FILTER", "phot_g_mean_mag:lt:6"), ("FILTER", "ra:ge:100"),
                                    ("SORT", "source_id"), ("LIMIT", 10000)])
        got = ipc.open_stream(r.content).read_all().to_pandas()
        want = whole[(whole.phot_g_mean_mag < 6) & (whole.ra >= 100)].sort_values("source_id")
        assert int(r.headers["X-Total-Rows"]) == len(want) == len(got) > 0
        assert list(got["source_id"]) == list(want["source_id"])
        text = requests.get(w, params={"FILTER": "source_id:contains:123", "LIMIT": 10000})
        ids = ipc.open_stream(text.content).read_all().column("source_id").to_pylist()
        assert ids and all("123" in str(i) for i in ids)
        assert len(ids) == sum("123" in str(i) for i in whole.source_id)
        # Without SORT the rows come in result order; `_row` numbers them from 0.
        whole = job_result(job, fmt)
        r = requests.get(w, params={"OFFSET": 500, "LIMIT": 40, "COLUMNS": "_row,*"})
        got = ipc.open_stream(r.content).read_all().to_pandas()
        assert list(got.columns) == ["_row", *whole.columns]
        assert list(got["_row"]) == list(range(500, 540))
        assert list(got["source_id"]) == list(whole.source_id[500:540])
        # A selection made on a plot: a list of `_row`s, filtered by the server.
        pick = [3, 77, 501, len(whole) - 1]
        r = requests.get(w, params={"FILTER": "_row:in:" + ",".join(map(str, pick)),
                                    "COLUMNS": "source_id"})
        got = ipc.open_stream(r.content).read_all().to_pandas()
        assert list(got.columns) == ["source_id"] and int(r.headers["X-Total-Rows"]) == 4
        assert list(got["source_id"]) == list(whole.source_id.iloc[pick])
        # Two columns for a plot: the whole result in one window, in result order.
        r = requests.get(w, params={"COLUMNS": "ra,dec", "LIMIT": 1_000_000})
        got = ipc.open_stream(r.content).read_all().to_pandas()
        assert r.status_code == 200 and len(got) == len(whole)
        assert got.ra.tolist() == pytest.approx(whole.ra.tolist())
        ncols = len(whole.columns)
        for bad in [{"LIMIT": 1_000_001, "COLUMNS": "ra"},
                    {"LIMIT": 4_000_000 // ncols + 1, "COLUMNS": "*"},
                    {"COLUMNS": "ra,nope"}, {"COLUMNS": ","},
                    {"FILTER": "_row:in:1,x"}, {"OFFSET": -1}, {"SORT": "nope"}, {"FILTER": "ra:lt:x"},
                    {"FILTER": "nope:eq:1"}, {"FILTER": "ra:between:1"}, {"FILTER": "ra"}]:
            r = requests.get(w, params=bad)
            assert r.status_code == 400, (bad, r.status_code, r.text)
        assert requests.get(f"{s.url}/async/nope/results/result/window").status_code == 404


def test_column_statistics_equal_numpy(store):
    import numpy as np
    with Server(store) as s:
        job = finished(s.url, "votable")
        whole = pd.read_csv(io.StringIO(requests.get(f"{s.url}/sync", params={
            "LANG": "ADQL", "QUERY": QUERY, "FORMAT": "csv", "MAXREC": 10**7}).text))
        st = requests.get(f"{job}/results/result/stats",
                          params={"COLUMN": "phot_g_mean_mag", "BINS": 10}).json()
        flt = requests.get(f"{job}/results/result/stats",
                           params={"COLUMN": "ra", "FILTER": "phot_g_mean_mag:lt:6"}).json()
        text = requests.get(f"{job}/results/result/stats", params={"COLUMN": "nope"})
    g = whole.phot_g_mean_mag
    assert st["rows"] == len(whole) and st["count"] == g.count() and st["nulls"] == g.isna().sum()
    assert st["min"] == pytest.approx(g.min()) and st["max"] == pytest.approx(g.max())
    assert st["mean"] == pytest.approx(g.mean()) and st["stddev"] == pytest.approx(g.std())
    counts, edges = np.histogram(g.dropna(), bins=10, range=(g.min(), g.max()))
    np.testing.assert_allclose(st["histogram"]["edges"], edges)
    assert st["histogram"]["counts"] == counts.tolist()
    assert flt["rows"] == (g < 6).sum()
    assert text.status_code == 400


def test_downloads_in_every_format_keep_the_filters_and_the_sort(store):
    """`/as`: the rows a grid shows (filtered, sorted), in each TAP format, read back by
    independent readers; the JSON list of jobs counts the result's rows; TAP_SCHEMA gives
    the catalogs' sizes."""
    from astropy.io.votable import parse_single_table
    from astropy.table import Table
    with Server(store) as s:
        job = finished(s.url, "parquet")
        whole = job_result(job, "parquet")
        want = whole[whole.phot_g_mean_mag < 7].sort_values("phot_g_mean_mag", ascending=False,
                                                             kind="stable")
        readers = {
            "csv": lambda b: pd.read_csv(io.BytesIO(b)),
            "tsv": lambda b: pd.read_csv(io.BytesIO(b), sep="\t"),
            "parquet": lambda b: pd.read_parquet(io.BytesIO(b)),
            "arrow": lambda b: ipc.open_stream(b).read_all().to_pandas(),
            "fits": lambda b: Table.read(io.BytesIO(b), format="fits").to_pandas(),
            "votable": lambda b: parse_single_table(io.BytesIO(b)).to_table().to_pandas(),
            "votable/td": lambda b: parse_single_table(io.BytesIO(b)).to_table().to_pandas(),
        }
        for fmt, read in readers.items():
            r = requests.get(f"{job}/results/result/as", params=[
                ("RESPONSEFORMAT", fmt), ("SORT", "-phot_g_mean_mag"), ("FILTER", "phot_g_mean_mag:lt:7")])
            assert r.status_code == 200, (fmt, r.text)
            assert "attachment" in r.headers["Content-Disposition"]
            got = read(r.content)
            assert "_row" not in got.columns, fmt
            assert got.source_id.tolist() == want.source_id.tolist(), fmt
        assert requests.get(f"{job}/results/result/as", params={"RESPONSEFORMAT": "xls"}).status_code == 400
        # The JSON list of jobs gives each result's rows.
        listed = {j["id"]: j for j in requests.get(f"{s.url.removesuffix('/tap')}/api/jobs").json()}
        entry = listed[job.rsplit("/", 1)[1]]
        assert entry["phase"] == "COMPLETED" and entry["query"] == QUERY
        assert entry["results"][0]["rows"] == len(whole) and entry["started"] <= entry["ended"]
        assert requests.get(f"{s.url.removesuffix('/tap')}/api/jobs", params={"LAST": "x"}).status_code == 400
        sizes = pd.read_csv(io.StringIO(requests.get(f"{s.url}/sync", params={
            "LANG": "ADQL", "FORMAT": "csv",
            "QUERY": "SELECT table_name, nrows FROM TAP_SCHEMA.tables"}).text))
        n = dict(zip(sizes.table_name, sizes.nrows))
        count = pd.read_csv(io.StringIO(requests.get(f"{s.url}/sync", params={
            "LANG": "ADQL", "FORMAT": "csv", "QUERY": "SELECT COUNT(*) AS n FROM gaia"}).text)).n[0]
        assert n["gaia"] == count
        assert pd.isna(n["TAP_SCHEMA.tables"])
