"""Per-client limits through the real server and real clients: a request rate, queries at
once, result bytes a day and uploads an hour, per user and per anonymous address; 429 with
Retry-After and a message naming the limit, in each service's own error form;
administrators exempt; health, HiPS tiles and the portal's files never counted; refusals
counted in /metrics."""

import concurrent.futures
import io
import re
import time

import pytest
import pyvo
import requests
from astropy.table import Table

from conftest import Server, add_users, client, personal_env, run


def limits(tmp_path, **q):
    env = personal_env(tmp_path)
    env.update({f"MERIDIAN_QUOTAS__{k.upper()}": str(v) for k, v in q.items()})
    return env


def refused_as(r, limit_words):
    assert r.status_code == 429, (r.status_code, r.text[:300])
    wait = int(r.headers["Retry-After"])
    assert wait >= 1
    assert limit_words in r.text, r.text
    return wait


def metric(base, name):
    text = requests.get(f"{base}/metrics").text
    m = re.search(rf"^{re.escape(name)} (\d+)", text, re.M)
    return int(m.group(1)) if m else None


def test_request_rate_per_address_and_per_user_with_admins_exempt(store, tmp_path):
    env = limits(tmp_path, requests_per_minute=20, concurrent_queries=0, result_mib_per_day=0,
                 uploads_per_hour=0)
    run("user", "add", "root", "--admin", data_dir=store, input="root-password\n", env=env)
    add_users(store, env, "ann")
    with Server(store, env=env) as s:
        base = s.url.rsplit("/tap", 1)[0]

        def login(name):
            # From an address of its own, so that the logins count against nobody's here.
            r = client("127.0.0.9").post(f"{base}/api/auth/login",
                                         data={"username": name, "password": f"{name}-password"})
            sess = requests.Session()
            sess.headers["Authorization"] = f"Bearer {r.json()['token']}"
            return sess

        ann, root = login("ann"), login("root")
        anon = client("127.0.0.1")
        for i in range(20):
            r = anon.get(f"{s.url}/capabilities")
            assert r.status_code == 200, i
            # A response of known size keeps its length.
            assert int(r.headers["Content-Length"]) == len(r.content)
        # The 21st within the minute: a DALI error document with the wait.
        r = anon.get(f"{s.url}/capabilities")
        wait = refused_as(r, "request rate limit reached: at most 20 requests a minute")
        assert wait <= 3
        assert "QUERY_STATUS" in r.text
        # pyvo sees the refusal too, with the message.
        with pytest.raises((pyvo.dal.DALServiceError, pyvo.dal.DALQueryError)) as e:
            pyvo.dal.TAPService(s.url, session=anon).run_sync("SELECT TOP 1 ra FROM gaia")
        assert "429" in str(e.value) or "rate limit" in str(e.value), str(e.value)
        # Not counted: health, metrics, HiPS tiles and the portal's files.
        assert anon.get(f"{base}/health").status_code == 200
        assert anon.get(f"{base}/").status_code == 200
        # Another address, and a user, have limits of their own.
        assert client("127.0.0.2").get(f"{s.url}/capabilities").status_code == 200
        for i in range(20):
            assert ann.get(f"{s.url}/capabilities").status_code == 200, i
        r = ann.get(f"{base}/api/auth/whoami")
        refused_as(r, "request rate limit reached")
        assert r.json()["error"].startswith("request rate limit reached")
        # An administrator is never limited.
        for _ in range(40):
            assert root.get(f"{s.url}/capabilities").status_code == 200
        # After the wait, the anonymous caller is admitted again.
        time.sleep(wait)
        assert anon.get(f"{s.url}/capabilities").status_code == 200
        assert metric(base, 'meridian_quota_refused_total{limit="requests"}') >= 2


def test_queries_at_once(store, tmp_path):
    env = limits(tmp_path, requests_per_minute=0, concurrent_queries=2, result_mib_per_day=0,
                 uploads_per_hour=0)
    env["MERIDIAN_SERVER__SYNC_TIMEOUT_S"] = "4"
    slow = "SELECT COUNT(*) FROM gaia AS a, gaia AS b WHERE a.ra + b.ra > 1000"
    with Server(store, env=env) as s:
        base = s.url.rsplit("/tap", 1)[0]

        def query(q):
            return requests.post(f"{s.url}/sync", data={"LANG": "ADQL", "QUERY": q})

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = [pool.submit(query, slow) for _ in range(2)]
            time.sleep(1.0)
            # A third query of the same client waits for neither: refused at once.
            start = time.time()
            r = query("SELECT TOP 1 ra FROM gaia")
            assert time.time() - start < 1.0
            refused_as(r, "too many queries at once: 2 of yours are running (limit 2)")
            # Metadata requests are not queries.
            assert requests.get(f"{s.url}/tables").status_code == 200
            # Another address is admitted meanwhile (on 2 cores it may then wait for the
            # running cross joins' workers until its own time limit).
            r = client("127.0.0.3").post(f"{s.url}/sync", data={"LANG": "ADQL",
                                                              "QUERY": "SELECT TOP 1 ra FROM gaia"})
            assert r.status_code == 200 or "time limit" in r.text, r.text
            for f in running:
                assert f.result().status_code in (200, 400, 500)
        # Both done: room again. The stopped cross joins end within a batch's work (they
        # used to hold both workers for minutes, and every later query timed out).
        deadline = time.time() + 10
        while True:
            r = query("SELECT TOP 1 ra FROM gaia")
            if r.status_code == 200 or time.time() > deadline:
                break
            assert r.status_code != 429, r.text
        assert r.status_code == 200, r.text
        assert metric(base, 'meridian_quota_refused_total{limit="concurrent_queries"}') == 1
        assert metric(base, "meridian_queries_running") == 0


def test_result_bytes_a_day(store, tmp_path):
    env = limits(tmp_path, requests_per_minute=0, concurrent_queries=0, result_mib_per_day=1,
                 uploads_per_hour=0)
    with Server(store, env=env) as s:
        tap = pyvo.dal.TAPService(s.url)
        # About 2 MiB of CSV: sent whole (a response under way is never cut).
        r = requests.post(f"{s.url}/sync", data={"LANG": "ADQL", "FORMAT": "csv",
                                                "QUERY": "SELECT TOP 30000 * FROM gaia"})
        assert r.status_code == 200 and len(r.content) > 1 << 20
        assert len(r.text.splitlines()) == 30001
        r = requests.get(f"{s.url}/capabilities")
        wait = refused_as(r, "result volume limit reached")
        assert wait <= 86400
        with pytest.raises((pyvo.dal.DALServiceError, pyvo.dal.DALQueryError)):
            tap.run_sync("SELECT TOP 1 ra FROM gaia")
        # Another address is not affected.
        assert client("127.0.0.4").get(f"{s.url}/capabilities").status_code == 200


def test_uploads_an_hour(store, tmp_path):
    env = limits(tmp_path, requests_per_minute=0, concurrent_queries=0, result_mib_per_day=0,
                 uploads_per_hour=2)
    table = Table({"ra": [10.0, 20.0], "dec": [1.0, 2.0]})
    with Server(store, env=env) as s:
        tap = pyvo.dal.TAPService(s.url)
        q = "SELECT COUNT(*) AS n FROM TAP_UPLOAD.t"
        for _ in range(2):
            assert tap.run_sync(q, uploads={"t": table}).to_table()["n"][0] == 2
        with pytest.raises((pyvo.dal.DALServiceError, pyvo.dal.DALQueryError)) as e:
            tap.run_sync(q, uploads={"t": table})
        assert "429" in str(e.value) or "upload limit" in str(e.value), str(e.value)
        buf = io.BytesIO()
        table.write(buf, format="votable")
        r = requests.post(f"{s.url}/sync", data={"LANG": "ADQL", "QUERY": q, "UPLOAD": "t,param:t"},
                          files={"t": ("t.xml", buf.getvalue())})
        wait = refused_as(r, "upload limit reached: at most 2 uploads an hour")
        assert 1700 <= wait <= 1800
        # Queries without uploads go on.
        assert tap.run_sync("SELECT TOP 1 ra FROM gaia").to_table()["ra"][0] is not None
