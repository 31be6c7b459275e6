"""Users' alert filters: ADQL over the incoming alerts (with cross-matches against served
catalogs and the owner's MyDB watchlists), managed over `/api/alerts/filters`, run by
`meridian alerts consume` on every batch; matches reach the filter's MyDB table (read back
over TAP), its Kafka topic (read by a confluent-kafka consumer), its webhook (a Python HTTP
server) and its event stream, each exactly once, also across a kill -9 of the consumer.
The expected matches are computed by fastavro and astropy from the same alert files."""

import http.server
import json
import re
import subprocess
import threading
import time

import fastavro
import pytest
import requests

from conftest import Server, add_users, meridian_bin, personal_env, run, token_of

RUBIN = "alerts/rubin_fink_sample_7alerts.avro"
ZTF = "alerts/ztf_fink_sample_31alerts.avro"


def read(path):
    with open(path, "rb") as f:
        return list(fastavro.reader(f))


def mock_kafka():
    import confluent_kafka as ck
    p = ck.Producer({"test.mock.num.brokers": 1, "log_level": 3})
    broker = next(iter(p.list_topics(timeout=10).brokers.values()))
    return p, f"{broker.host}:{broker.port}"


class Hook:
    """A webhook: records every POST (its Idempotency-Key and JSON body); the first
    `fail_first` answers are 503 (to show retries)."""

    def __init__(self, fail_first=0):
        self.posts = []
        self.failures_left = fail_first
        hook = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.failures_left > 0:
                    hook.failures_left -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                hook.posts.append((self.headers.get("Idempotency-Key"), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.server.shutdown()


def topic_messages(brokers, topic, want, timeout=60):
    import confluent_kafka as ck
    c = ck.Consumer({"bootstrap.servers": brokers, "group.id": f"check-{time.time()}",
                     "auto.offset.reset": "earliest", "enable.partition.eof": True})
    c.subscribe([topic])
    got, deadline, eof = [], time.time() + timeout, False
    while time.time() < deadline and not (eof and len(got) >= want):
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            eof = m.error().code() == ck.KafkaError._PARTITION_EOF or eof
            continue
        got.append((m.key().decode(), json.loads(m.value())))
    c.close()
    return got


def events(base, token, fid):
    """The filter's event stream, from the start, until the matches so far are sent."""
    r = requests.get(f"{base}/api/alerts/filters/{fid}/events",
                     params={"after": 0, "follow": "false"},
                     headers={"Authorization": f"Bearer {token}"}, stream=True, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    out, current = [], {}
    for line in r.iter_lines(decode_unicode=True):
        if not line:
            if "data" in current:
                out.append(current)
            current = {}
        elif not line.startswith(":"):
            k, _, v = line.partition(":")
            current[k] = v.strip()
    return out


def tap_ids(base, token, table, column="alertId"):
    r = requests.post(f"{base}/tap/sync", data={
        "LANG": "ADQL", "FORMAT": "json", "QUERY": f"SELECT * FROM mydb.{table}"},
        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    # FORMAT=json is one JSON object per row.
    rows = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    names = list(rows[0]) if rows else []
    key = next(n for n in names if n.lower() == column.lower())
    return [row[key] for row in rows], names, [[row[n] for n in names] for row in rows]


@pytest.fixture()
def site(shared, tmp_path):
    """A data directory with the Rubin sample's DIA tables and the user alice, a mock
    Kafka cluster with both samples on topics `rubin` (Confluent framing, schema id 3) and
    `ztf`, and the writer schema file."""
    data = tmp_path / "data"
    env = personal_env(tmp_path, MERIDIAN_ALERTS__WEBHOOK_ALLOW_PRIVATE="true")
    run("alerts", "load", shared / RUBIN, data_dir=data)
    add_users(data, env, "alice")
    keep_alive, brokers = mock_kafka()
    run("alerts", "replay", shared / RUBIN, "--kafka", brokers, "--topic", "rubin", "--schema-id", 3)
    run("alerts", "replay", shared / ZTF, "--kafka", brokers, "--topic", "ztf")
    with open(shared / RUBIN, "rb") as f:
        schema_file = tmp_path / "rubin.avsc"
        schema_file.write_text(json.dumps(fastavro.reader(f).writer_schema))
    yield {"data": data, "env": env, "brokers": brokers, "schema": schema_file,
           "keep": keep_alive}


def consume_args(site, *extra):
    return ["alerts", "consume", "--kafka", site["brokers"], "--topic", "rubin", "--topic", "ztf",
            "--schema", f"3={site['schema']}", "--kafka-setting", "session.timeout.ms=6000",
            "--kafka-setting", "heartbeat.interval.ms=500", *extra]


def expected(shared):
    """What each filter below should match, by fastavro and astropy."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    rubin, ztf = read(shared / RUBIN), read(shared / ZTF)
    fluxes = sorted(a["diaSource"]["psfFlux"] for a in rubin)
    threshold = (fluxes[2] + fluxes[3]) / 2
    bright = sorted(a["diaSourceId"] for a in rubin if a["diaSource"]["psfFlux"] > threshold)
    faint = sorted(a["candidate"]["candid"] for a in ztf if a["candidate"]["magpsf"] < 18.5)
    # The stored diaObjects (each object's newest summary) within 1" of each new source.
    objects = {}
    for a in rubin:
        if a["diaObject"] is not None:
            objects[a["diaObject"]["diaObjectId"]] = a["diaObject"]
    objs = list(objects.values())
    oc = SkyCoord([o["ra"] for o in objs] * u.deg, [o["dec"] for o in objs] * u.deg)
    near = []
    for a in rubin:
        s = a["diaSource"]
        sep = SkyCoord(s["ra"] * u.deg, s["dec"] * u.deg).separation(oc).arcsec
        near.extend((a["diaSourceId"], objs[i]["diaObjectId"]) for i in range(len(objs)) if sep[i] < 1)
    # The watchlist: the positions of two alerts' sources.
    watch = [rubin[1]["diaSource"], rubin[5]["diaSource"]]
    watched = sorted(a["diaSourceId"] for a in rubin
                     if any(SkyCoord(a["diaSource"]["ra"] * u.deg, a["diaSource"]["dec"] * u.deg)
                            .separation(SkyCoord(w["ra"] * u.deg, w["dec"] * u.deg)).arcsec < 2
                            for w in watch))
    return {"threshold": threshold, "bright": bright, "faint": faint, "near": sorted(near),
            "watch": watch, "watched": watched}


def test_filters_send_each_match_to_every_output_once(shared, site, tmp_path):
    want = expected(shared)
    assert 0 < len(want["bright"]) < 7 and 0 < len(want["faint"]) < 31 and want["near"]
    hook = Hook(fail_first=2)
    with Server(site["data"], env=site["env"]) as s:
        base = s.url.removesuffix("/tap")
        token = token_of(base, "alice")
        A = requests.Session()
        A.headers["Authorization"] = f"Bearer {token}"
        # The watchlist: a MyDB table of positions (as a user would make one).
        ids = ", ".join(str(w["diaSourceId"]) for w in want["watch"])
        r = A.get(f"{base}/query/query", params={
            "sql": f"SELECT \"diaSourceId\" AS name, ra, dec FROM dia_source WHERE \"diaSourceId\" IN ({ids})",
            "out": "mydb://watch", "drop": "True"})
        assert r.status_code == 200, r.text
        r = A.get(f"{base}/query/query", params={
            "sql": f"SELECT \"diaSourceId\" AS name, ra, dec FROM dia_source WHERE \"diaSourceId\" IN ({ids})",
            "out": "mydb://gone", "drop": "True"})
        assert r.status_code == 200, r.text

        def add(**form):
            return A.post(f"{base}/api/alerts/filters", data=form)

        # Refused: bad ADQL (with the parser's message), no alertId, an unknown column.
        r = add(name="bad", query="SELECT alertId FROM alert.diasource WHERE")
        assert r.status_code == 400 and "ADQL" in r.text, r.text
        r = add(name="nokey", query="SELECT a.psfFlux FROM alert.diasource AS a")
        assert r.status_code == 400 and "alertId" in r.text, r.text
        r = add(name="nocol", query="SELECT a.alertId, a.noSuchColumn FROM alert.diasource AS a")
        assert r.status_code == 400 and "noSuchColumn" in r.text, r.text
        r = add(name="private", query="SELECT a.alertId FROM alert.diasource AS a",
                webhook="http://127.0.0.1:1/x", kafka_topic="bad topic!")
        assert r.status_code == 400, r.text

        r = add(name="bright", mydb_table="bright", kafka_topic="alice.bright", webhook=hook.url,
                query=f"SELECT a.alertId, a.diaSourceId, a.psfFlux FROM alert.diasource AS a "
                      f"WHERE a.psfFlux > {want['threshold']}")
        assert r.status_code == 201, r.text
        bright = r.json()["id"]
        r = add(name="faint", mydb_table="faint", kafka_topic="alice.faint",
                query="SELECT c.alertId, c.objectId, c.magpsf FROM alert.candidate AS c "
                      "WHERE c.magpsf < 18.5")
        assert r.status_code == 201, r.text
        faint = r.json()["id"]
        r = add(name="near", mydb_table="near",
                query="SELECT a.alertId, o.diaObjectId FROM alert.diasource AS a JOIN dia_object AS o "
                      "ON 1 = CONTAINS(POINT('ICRS', a.ra, a.dec), CIRCLE('ICRS', o.ra, o.dec, 1/3600.))")
        assert r.status_code == 201, r.text
        near = r.json()["id"]
        r = add(name="watched", mydb_table="watched",
                query="SELECT a.alertId, w.name FROM alert.diasource AS a JOIN mydb.watch AS w "
                      "ON 1 = CONTAINS(POINT('ICRS', a.ra, a.dec), CIRCLE('ICRS', w.ra, w.dec, 2/3600.))")
        assert r.status_code == 201, r.text
        watched = r.json()["id"]
        r = add(name="breaks", mydb_table="broken",
                query="SELECT a.alertId FROM alert.diasource AS a JOIN mydb.gone AS g "
                      "ON a.diaSourceId = g.name")
        assert r.status_code == 201, r.text
        breaks = r.json()["id"]
        # Its watchlist goes away: at run time the filter fails, and is paused.
        assert A.get(f"{base}/query/delete", params={"table": "gone"}).status_code == 200

        out = run(*consume_args(site, "--stop-when-idle-s", 3), data_dir=site["data"],
                  env=site["env"]).stdout
        assert "consumed\t38 messages\t38 alerts stored\t0 dead letters" in out, out

        got = {f["name"]: f for f in A.get(f"{base}/api/alerts/filters").json()}
        assert got["breaks"]["state"] == "paused" and "gone" in got["breaks"]["reason"], got["breaks"]
        for name in ("bright", "faint", "near", "watched"):
            assert got[name]["state"] == "active", got[name]
        assert got["bright"]["matches"] == len(want["bright"])
        assert got["bright"]["deliveries"] == {"pending": 0, "delivered": 2 * len(want["bright"]),
                                               "failed": 0}

        # MyDB tables, over TAP.
        assert sorted(tap_ids(base, token, "bright")[0]) == want["bright"]
        assert sorted(tap_ids(base, token, "faint")[0]) == want["faint"]
        _, names, rows = tap_ids(base, token, "near")
        pairs = sorted((r[names.index("alertId")], r[names.index("diaObjectId")]) for r in rows)
        assert pairs == want["near"]
        assert sorted(tap_ids(base, token, "watched")[0]) == want["watched"]

        # Kafka topics, each match once, keyed by alert.
        msgs = topic_messages(site["brokers"], "alice.bright", len(want["bright"]))
        assert sorted(int(k) for k, _ in msgs) == want["bright"]
        for k, m in msgs:
            assert m["filter"] == bright and m["name"] == "bright" and m["alertId"] == int(k)
            assert m["rows"][0]["psfFlux"] > want["threshold"]
        msgs = topic_messages(site["brokers"], "alice.faint", len(want["faint"]))
        assert sorted(int(k) for k, _ in msgs) == want["faint"]

        # The webhook: every match once, after two refused posts (retried with backoff).
        keys = [k for k, _ in hook.posts]
        assert sorted(keys) == sorted(f"{bright}-{a}" for a in want["bright"]), keys
        assert sorted(b["alertId"] for _, b in hook.posts) == want["bright"]

        # The event stream, and resuming it after an event.
        ev = events(base, token, bright)
        assert sorted(json.loads(e["data"])["alertId"] for e in ev) == want["bright"]
        assert all(e["event"] == "match" for e in ev)
        r = requests.get(f"{base}/api/alerts/filters/{bright}/events",
                         params={"follow": "false"}, stream=True, timeout=30,
                         headers={"Authorization": f"Bearer {token}", "Last-Event-ID": ev[0]["id"]})
        rest = [json.loads(line[5:]) for line in r.iter_lines(decode_unicode=True)
                if line.startswith("data:")]
        assert len(rest) == len(ev) - 1

        # Consuming the same alerts again (a new group) matches nothing new.
        out = run(*consume_args(site, "--group", "again", "--stop-when-idle-s", 3),
                  data_dir=site["data"], env=site["env"]).stdout
        assert all("\t0 matches\t" in line for line in out.splitlines() if line.startswith("batch")), out
        assert sorted(tap_ids(base, token, "bright")[0]) == want["bright"]
        assert len(hook.posts) == len(want["bright"])
        assert len(topic_messages(site["brokers"], "alice.bright", len(want["bright"]))) == len(want["bright"])

        # Pause, resume, delete; another user sees none of it.
        assert A.post(f"{base}/api/alerts/filters/{near}/pause").json()["state"] == "paused"
        assert A.post(f"{base}/api/alerts/filters/{near}/resume").json()["state"] == "active"
        assert A.delete(f"{base}/api/alerts/filters/{watched}").status_code == 204
        assert A.get(f"{base}/api/alerts/filters/{watched}").status_code == 404
        assert requests.get(f"{base}/api/alerts/filters").status_code == 401
        assert faint and breaks
    hook.close()


def test_a_consumer_killed_mid_stream_delivers_each_match_once(shared, site):
    """SIGKILL after the first stored batch, then a restart: the MyDB table and the Kafka
    topic hold each match once; the webhook received every match, repeats (a post in
    flight at the kill) carrying the same Idempotency-Key."""
    want = expected(shared)
    hook = Hook()
    with Server(site["data"], env=site["env"]) as s:
        base = s.url.removesuffix("/tap")
        token = token_of(base, "alice")
        A = requests.Session()
        A.headers["Authorization"] = f"Bearer {token}"
        r = A.post(f"{base}/api/alerts/filters", data={
            "name": "all", "mydb_table": "all_rubin", "kafka_topic": "alice.all",
            "webhook": hook.url, "query": "SELECT a.alertId, a.psfFlux FROM alert.diasource AS a"})
        assert r.status_code == 201, r.text
        r = A.post(f"{base}/api/alerts/filters", data={
            "name": "ztf", "mydb_table": "all_ztf", "kafka_topic": "alice.ztf",
            "query": "SELECT c.alertId FROM alert.candidate AS c"})
        assert r.status_code == 201, r.text
        args = consume_args(site, "--batch-alerts", "2", "--batch-ms", "100")
        p = subprocess.Popen([meridian_bin(), "--quiet", "--data-dir", str(site["data"]), *args],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env={**__import__("os").environ, **site["env"]})
        try:
            for _ in range(3):
                line = p.stdout.readline()
                assert line.startswith("batch"), line
        finally:
            p.kill()
            p.wait()
        out = run(*args, "--stop-when-idle-s", 3, data_dir=site["data"], env=site["env"]).stdout
        resumed = int(re.search(r"consumed\t(\d+) messages", out).group(1))
        assert 0 < resumed < 38, out
        rubin = sorted(a["diaSourceId"] for a in read(shared / RUBIN))
        ztf = sorted(a["candidate"]["candid"] for a in read(shared / ZTF))
        assert sorted(tap_ids(base, token, "all_rubin")[0]) == rubin
        assert sorted(tap_ids(base, token, "all_ztf")[0]) == ztf
        assert sorted(int(k) for k, _ in topic_messages(site["brokers"], "alice.all", 7)) == rubin
        assert sorted(int(k) for k, _ in topic_messages(site["brokers"], "alice.ztf", 31)) == ztf
        assert sorted(set(b["alertId"] for _, b in hook.posts)) == rubin
        for key, body in hook.posts:
            assert key.endswith(f"-{body['alertId']}")
    hook.close()
