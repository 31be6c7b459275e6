"""Data Lab's query service on the wire, called as astro-datalab's queryClient calls it
(../shared/specs/datalab-clients-wire.md): sync queries returned as CSV for pandas, async
jobs with status and results, errors as `Error: ...`, jobs private to their owner. The
answers are compared with the same query through TAP."""

import io
import time

import pandas as pd
import pytest
import requests

from conftest import Server, run

CLIENT_HEADERS = {"X-DL-ClientVersion": "2.24.0", "X-DL-OriginIP": "127.0.0.1",
                  "X-DL-OriginHost": "localhost"}
ANON = "anonymous.0.0.anon_access"


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    env = {"MERIDIAN_AUTH__DB": str(tmp_path_factory.mktemp("dl-accounts") / "accounts.sqlite")}
    for name in ["carol", "dave"]:
        run("user", "add", name, data_dir=store, input=f"{name}-password\n", env=env)
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        tokens = {}
        for name in ["carol", "dave"]:
            r = requests.get(f"{base}/auth/login", params={"username": name, "profile": "default"},
                             headers={"X-DL-Password": f"{name}-password"})
            assert r.status_code == 200, r.text
            tokens[name] = r.text
        yield base, tokens


def call(base, path, token=ANON, **params):
    """A GET as the client builds it: only the query text is quote_plus-encoded."""
    return requests.get(f"{base}/query/{path}", params=params,
                        headers={**CLIENT_HEADERS, "X-DL-AuthToken": token,
                                 "Content-Type": "text/ascii", "X-DL-TimeoutRequest": "300"})


def test_alive(service):
    base, _ = service
    assert requests.get(f"{base}/query").text.lower().startswith("hello world")


def test_sync_query_as_pandas_matches_tap(service):
    base, tokens = service
    sql = "SELECT source_id, ra, dec FROM gaia WHERE q3c_radial_query(ra, dec, 56.75, 24.12, 1) ORDER BY source_id"
    r = call(base, "query", tokens["carol"], sql=sql, ofmt="csv", out="None", **{"async": "False"},
             drop="False", profile="default")
    assert r.status_code == 200, r.text
    ours = pd.read_csv(io.StringIO(r.text))
    tap = requests.get(f"{base}/tap/sync", params={"LANG": "SQL", "QUERY": sql, "FORMAT": "csv",
                                                    "MAXREC": 10**9})
    theirs = pd.read_csv(io.StringIO(tap.text))
    assert len(ours) > 100
    pd.testing.assert_frame_equal(ours, theirs)
    # ADQL too, anonymously, and the other formats the client passes through.
    adql = "SELECT TOP 7 source_id FROM gaia ORDER BY source_id"
    r = call(base, "query", adql=adql, ofmt="csv")
    assert r.status_code == 200 and len(pd.read_csv(io.StringIO(r.text))) == 7
    r = call(base, "query", adql=adql, ofmt="ascii")
    assert r.status_code == 200 and len(r.text.strip().split("\n")) == 7 and "\t" not in r.text
    r = call(base, "query", adql=adql, ofmt="votable")
    assert r.status_code == 200 and b"<VOTABLE" in r.content


def test_errors_are_error_texts_with_4xx(service):
    base, tokens = service
    r = call(base, "query", tokens["carol"], adql="SELEC nothing FROM gaia")
    assert 400 <= r.status_code < 500 and r.text.startswith("Error: ")
    r = call(base, "query", tokens["carol"], adql="SELECT * FROM gaia", ofmt="hdf5")
    assert r.status_code == 400 and "hdf5" in r.text
    r = call(base, "query", "carol.1001.1001.$1$abcdefgh$abcdefghijklmnopqrstuv", adql="SELECT 1")
    assert r.status_code == 401 and r.text.startswith("Error: ") and "not issued" in r.text
    r = call(base, "query", tokens["carol"], sql="SELECT * FROM gaia", out="mydb://t")
    assert r.status_code == 400 and r.text.startswith("Error: ")


def test_async_query_status_results_and_privacy(service):
    base, tokens = service
    sql = "SELECT source_id FROM gaia WHERE phot_g_mean_mag < 4 ORDER BY source_id"
    r = call(base, "query", tokens["carol"], sql=sql, ofmt="csv", **{"async": "True"})
    assert r.status_code == 200, r.text
    job = r.text
    assert job.isalnum()  # never mistaken for a token by the client
    deadline = time.time() + 60
    while (status := call(base, "status", tokens["carol"], jobid=job).text) not in ("COMPLETED", "ERROR"):
        assert status in ("PENDING", "QUEUED", "EXECUTING"), status
        assert time.time() < deadline
        time.sleep(0.2)
    assert status == "COMPLETED"
    got = pd.read_csv(io.StringIO(call(base, "results", tokens["carol"], jobid=job, delete="True").text))
    sync = pd.read_csv(io.StringIO(call(base, "query", tokens["carol"], sql=sql).text))
    pd.testing.assert_frame_equal(got, sync)
    # The job is carol's: dave and anonymous callers cannot see it.
    for token in (tokens["dave"], ANON):
        for what in ("status", "results", "error", "abort"):
            r = call(base, what, token, jobid=job)
            assert r.status_code == 404 and r.text.startswith("Error: ")
    # A failing async query: the error call gives the message.
    r = call(base, "query", tokens["carol"], sql="SELECT no_such_column FROM gaia", **{"async": "True"})
    assert r.status_code == 200
    bad = r.text
    deadline = time.time() + 60
    while (status := call(base, "status", tokens["carol"], jobid=bad).text) not in ("COMPLETED", "ERROR"):
        assert time.time() < deadline
        time.sleep(0.2)
    assert status == "ERROR"
    message = call(base, "error", tokens["carol"], jobid=bad).text
    assert message.startswith("Error: ") and "no_such_column" in message


def test_profiles(service):
    base, _ = service
    assert call(base, "profiles", format="text").text == "default"
    prof = call(base, "profiles", profile="default", format="text").json()
    assert {"accessURL", "description", "database", "vosRoot", "type"} <= prof.keys()
