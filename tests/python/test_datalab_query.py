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
    # Results kept as files need a login and a name inside the caller's reach.
    r = call(base, "query", None, sql="SELECT * FROM gaia", out="vos://t.csv")
    assert r.status_code == 401 and r.text.startswith("Error: ")
    r = call(base, "query", tokens["carol"], sql="SELECT * FROM gaia", out="vos://../t.csv")
    assert r.status_code == 400 and "not allowed" in r.text


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


def test_schema_lists_schemas_tables_and_columns(service):
    base, _ = service
    top = call(base, "schema", value="", format="text", profile="default")
    assert top.status_code == 200 and "TAP_SCHEMA" in top.text
    gaia = call(base, "schema", value="gaia", format="text").text
    assert "source_id" in gaia and "phot_g_mean_mag" in gaia
    tycho = call(base, "schema", value="tycho2", format="text").text
    assert "ra " in tycho and "[deg]" in tycho  # units from the FITS header
    r = call(base, "schema", value="no_such_thing")
    assert r.status_code == 404 and r.text.startswith("Error: ")


def test_profiles(service):
    base, _ = service
    assert call(base, "profiles", format="text").text == "default"
    prof = call(base, "profiles", profile="default", format="text").json()
    assert {"accessURL", "description", "database", "vosRoot", "type"} <= prof.keys()


def test_mydb_tables_are_kept_listed_queried_joined_and_private(service):
    base, tokens = service
    carol, dave = tokens["carol"], tokens["dave"]
    cone = "q3c_radial_query(ra, dec, 56.75, 24.12, 1)"
    sql = f"SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia WHERE {cone}"
    r = call(base, "query", carol, sql=sql, out="mydb://pleiades", drop="False")
    assert r.status_code == 200 and r.text.startswith("OK"), r.text
    r = call(base, "query", carol, sql=sql, out="mydb://pleiades", drop="False")
    assert r.status_code == 409 and r.text.startswith("Error: ") and "exists" in r.text
    r = call(base, "query", carol, sql=sql, out="mydb://pleiades", drop="True")
    assert r.status_code == 200, r.text

    assert call(base, "list", carol, table="").text == "pleiades"
    columns = call(base, "list", carol, table="mydb://pleiades").text.splitlines()
    assert [c.split(",")[0] for c in columns] == ["source_id", "ra", "dec", "phot_g_mean_mag"]
    assert call(base, "list", carol, table="nope").text == 'relation "nope" not known'

    expected = len(pd.read_csv(io.StringIO(call(base, "query", carol, sql=sql).text)))
    assert expected > 100
    # Data Lab style (mydb://) and ADQL through TAP with the same token (mydb.).
    n = pd.read_csv(io.StringIO(call(base, "query", carol, sql="SELECT COUNT(*) AS n FROM mydb://pleiades").text))
    assert int(n["n"][0]) == expected
    bearer = {"Authorization": f"Bearer {carol}"}
    tap = requests.get(f"{base}/tap/sync", headers=bearer, params={
        "LANG": "ADQL", "FORMAT": "csv",
        "QUERY": "SELECT COUNT(*) AS n FROM mydb.pleiades WHERE phot_g_mean_mag < 12"})
    assert tap.status_code == 200, tap.text
    bright = len(pd.read_csv(io.StringIO(call(base, "query", carol, sql=sql + " AND phot_g_mean_mag < 12").text)))
    assert int(pd.read_csv(io.StringIO(tap.text))["n"][0]) == bright

    # A cross-match of the MyDB table with a catalog gives the pairs the catalog itself gives.
    def pairs(table):
        q = (f"SELECT p.source_id, t.ra AS tra FROM {table} AS p JOIN tycho2 AS t "
             "ON 1 = CONTAINS(POINT('ICRS', t.ra, t.dec), CIRCLE('ICRS', p.ra, p.dec, 1.0 / 3600))")
        if table == "gaia":
            q += " WHERE 1 = CONTAINS(POINT('ICRS', p.ra, p.dec), CIRCLE('ICRS', 56.75, 24.12, 1))"
        r = requests.get(f"{base}/tap/sync", headers=bearer,
                         params={"LANG": "ADQL", "FORMAT": "csv", "MAXREC": 10**7, "QUERY": q})
        assert r.status_code == 200, r.text
        return pd.read_csv(io.StringIO(r.text)).sort_values(["source_id", "tra"]).reset_index(drop=True)
    mine, catalog = pairs("mydb.pleiades"), pairs("gaia")
    assert len(mine) > 20
    pd.testing.assert_frame_equal(mine, catalog)

    # An async TAP job of carol's sees her tables.
    r = requests.post(f"{base}/tap/async", headers=bearer, data={
        "LANG": "ADQL", "FORMAT": "csv", "PHASE": "RUN",
        "QUERY": "SELECT COUNT(*) AS n FROM mydb.pleiades"})
    job = r.url
    for _ in range(300):
        phase = requests.get(f"{job}/phase", headers=bearer).text
        if phase in ("COMPLETED", "ERROR"):
            break
        time.sleep(0.2)
    assert phase == "COMPLETED"
    got = requests.get(f"{job}/results/result", headers=bearer).text
    assert int(pd.read_csv(io.StringIO(got))["n"][0]) == expected

    # Private: dave neither lists nor queries carol's table; anonymous callers cannot write.
    assert call(base, "list", dave, table="").text == ""
    r = requests.get(f"{base}/tap/sync", headers={"Authorization": f"Bearer {dave}"},
                     params={"LANG": "ADQL", "QUERY": "SELECT * FROM mydb.pleiades"})
    assert r.status_code == 400
    r = call(base, "query", ANON, sql=sql, out="mydb://mine")
    assert r.status_code == 401 and r.text.startswith("Error: ")
    r = call(base, "query", carol, sql=sql, out="mydb://Bad-Name")
    assert r.status_code == 400 and "not allowed" in r.text

    assert call(base, "delete", carol, table="pleiades").text == "OK"
    assert call(base, "list", carol, table="").text == ""
    assert "not known" in call(base, "delete", carol, table="pleiades").text


def test_staged_uploads_import_append_and_refusals(service):
    import pyarrow as pa
    import pyarrow.parquet as pq
    base, tokens = service
    carol = tokens["carol"]

    def xfer(name, data, init=True, token=carol):
        return requests.post(f"{base}/storage/xfer", data=data, headers={
            "X-DL-AuthToken": token, "X-DL-FileName": name,
            "X-DL-InitXfer": "True" if init else "False",
            "Content-type": "application/octet-stream"})

    def imp(table, filename, **extra):
        return requests.post(f"{base}/query/import", headers={"X-DL-AuthToken": carol}, params={
            "table": table, "delimiter": ",", "append": "False", "profile": "default",
            "csv_header": "True", "schema_def": "", "filename": filename, **extra})

    def count(table):
        r = call(base, "query", carol, sql=f"SELECT COUNT(*) AS n FROM mydb://{table}")
        return int(pd.read_csv(io.StringIO(r.text))["n"][0])

    # Chunks append; the first one starts the file.
    assert xfer("part.csv", b"x,y\n1,2.5\n").status_code == 200
    assert xfer("part.csv", b"2,3.5\n3,4.5\n", init=False).status_code == 200
    r = imp("parts", "part.csv")
    assert r.status_code == 200 and r.text == "OK", r.text
    assert count("parts") == 3
    r = imp("parts", "part.csv")
    assert r.status_code == 409 and "append=True" in r.text
    # An import consumes its staged file.
    assert imp("parts", "part.csv", append="True").status_code == 404
    assert xfer("part.csv", b"x,y\n1,2.5\n2,3.5\n3,4.5\n").status_code == 200
    assert imp("parts", "part.csv", append="True").status_code == 200
    assert count("parts") == 6
    assert xfer("other.csv", b"a,b,c\n1,2,3\n").status_code == 200
    r = imp("parts", "other.csv", append="True")
    assert r.status_code == 400 and "cannot append" in r.text
    assert count("parts") == 6  # nothing lost

    # schema_def gives column types; create makes an empty table that ingest (mydb_insert)
    # fills, the rows taking the created types.
    assert xfer("typed.csv", b"id,mag\n1,2.5\n2,3.5\n").status_code == 200
    r = imp("typed", "typed.csv", schema_def="id,bigint\nmag,real")
    assert r.status_code == 200, r.text
    assert call(base, "list", carol, table="typed").text.split("\n") == ["id,bigint", "mag,real"]
    r = requests.post(f"{base}/query/create", headers={"X-DL-AuthToken": carol},
                      params={"table": "made", "schema": "id,smallint\nname,text\n", "drop": "True"})
    assert r.status_code == 200 and count("made") == 0
    assert xfer("rows.csv", b"id,name\n7,vega\n8,deneb\n").status_code == 200
    r = requests.post(f"{base}/query/ingest", headers={"X-DL-AuthToken": carol},
                      params={"table": "made", "filename": "rows.csv", "csv_header": "True"})
    assert r.status_code == 200, r.text
    assert call(base, "list", carol, table="made").text.split("\n") == ["id,smallint", "name,text"]
    assert count("made") == 2
    r = requests.post(f"{base}/query/create", headers={"X-DL-AuthToken": carol},
                      params={"table": "bad", "schema": "id,geometry"})
    assert r.status_code == 400 and "geometry" in r.text
    services = call(base, "services", carol, profile="default", type="vos", mode="list").text
    assert f"{base}/storage" in services and f"{base}/vospace" in services

    # Parquet, recognised from its content whatever the name.
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "ra": [10.0, 20, 30, 40]}), buf)
    assert xfer("tmpabc", buf.getvalue()).status_code == 200
    assert imp("fromparquet", "tmpabc").status_code == 200
    assert count("fromparquet") == 4

    # Refusals: names that would leave the user's space, no login, a missing file, bad data.
    for bad in ["../evil.csv", "a/b.csv", ".hidden", "%2e%2e%2fx"]:
        r = xfer(bad, b"x\n1\n")
        assert r.status_code == 400 and r.text.startswith("Error: "), bad
    r = xfer("anon.csv", b"x\n1\n", token=ANON)
    assert r.status_code == 401
    r = imp("nothing", "never-uploaded.csv")
    assert r.status_code == 404 and "upload it" in r.text
    assert xfer("broken.csv", b"x,y\n1,2\n3\n").status_code == 200
    r = imp("broken", "broken.csv")
    assert r.status_code == 400 and r.text.startswith("Error: ") and "broken.csv" in r.text
    assert "broken" not in call(base, "list", carol, table="").text.split("\n")
    # Another user's staged file is not theirs to import.
    assert xfer("mine.csv", b"x\n1\n").status_code == 200
    r = requests.post(f"{base}/query/import", headers={"X-DL-AuthToken": tokens["dave"]},
                      params={"table": "stolen", "filename": "mine.csv", "csv_header": "True"})
    assert r.status_code == 404
    for t in ["parts", "fromparquet"]:
        assert call(base, "delete", carol, table=t).text == "OK"


def test_uploads_and_tables_share_the_quota(store, tmp_path):
    env = {"MERIDIAN_AUTH__DB": str(tmp_path / "accounts.sqlite"),
           "MERIDIAN_MYDB__DIR": str(tmp_path / "mydb"), "MERIDIAN_MYDB__QUOTA_MIB": "1"}
    run("user", "add", "gina", data_dir=store, input="gina-password\n", env=env)
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        token = requests.get(f"{base}/auth/login", params={"username": "gina"},
                             headers={"X-DL-Password": "gina-password"}).text
        chunk = b"x\n" + b"1\n" * 300_000  # 600 kB

        def xfer(init):
            return requests.post(f"{base}/storage/xfer", data=chunk, headers={
                "X-DL-AuthToken": token, "X-DL-FileName": "big.csv",
                "X-DL-InitXfer": "True" if init else "False"})
        assert xfer(True).status_code == 200
        r = xfer(False)
        assert r.status_code == 403 and "quota" in r.text
        assert not (tmp_path / "mydb" / "gina" / "uploads" / "big.csv").exists()
        # A query result past the quota is refused too, and leaves nothing behind.
        r = call(base, "query", token, sql="SELECT * FROM tycho2", out="mydb://all")
        assert r.status_code == 403 and "quota" in r.text
        assert call(base, "list", token, table="").text == ""
        assert [p.name for p in (tmp_path / "mydb" / "gina").iterdir()] in ([], ["uploads"])


def test_saving_to_mydb_obeys_the_clients_timeout(service):
    base, tokens = service
    r = requests.get(f"{base}/query/query", params={"sql": "SELECT * FROM tycho2 ORDER BY ra", "out": "mydb://slow"},
                     headers={**CLIENT_HEADERS, "X-DL-AuthToken": tokens["dave"], "X-DL-TimeoutRequest": "0.001"})
    assert r.status_code >= 400 and r.text.startswith("Error: ") and "time limit" in r.text
    assert "slow" not in call(base, "list", tokens["dave"], table="").text
