"""A replayed synthetic night: `meridian generate --alerts` writes a night of Rubin alerts
(lsst.v9_0, from lsst-alert-packet's schema tree) over a synthetic survey, `meridian alerts
replay` publishes them to a real Kafka-protocol broker (Tansu, started here), and
`meridian alerts consume` stores them and runs users' filters, killed with SIGKILL in the
middle of the stream and restarted. Every alert a filter should match, as pandas and
astropy compute it from the Avro files (read by fastavro), reaches the filter's MyDB table,
Kafka topic (read by confluent-kafka) and webhook exactly once; light curves over TAP and
`/lightcurve` equal the rows pandas selects from the same alerts."""

import glob
import io
import os
import re
import shutil
import socket
import subprocess
import time

import fastavro
import pandas as pd
import pytest
import requests

from conftest import Server, add_users, meridian_bin, personal_env, run, token_of
from test_alert_filters import Hook, tap_ids, topic_messages


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tansu:
    """The Tansu broker (Kafka protocol, in-memory storage) on a free loopback port."""

    def __init__(self):
        exe = os.environ.get("MERIDIAN_TANSU") or shutil.which("tansu")
        if not exe:
            pytest.fail("the Tansu broker is not installed: scripts/test.sh installs it "
                        "(cargo install tansu --features dynostore)")
        port = free_port()
        self.brokers = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [exe, "broker", "--listener-url", f"tcp://{self.brokers}",
             "--advertised-listener-url", f"tcp://{self.brokers}",
             "--storage-engine", "memory://tansu/", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.close()
        pytest.fail("Tansu did not start")

    def close(self):
        self.proc.kill()
        self.proc.wait()


def schema_dir():
    import lsst.alert.packet
    return os.path.join(os.path.dirname(lsst.alert.packet.__file__), "schema")


def read_night(directory):
    alerts = []
    for f in sorted(glob.glob(str(directory / "visit-*.avro"))):
        with open(f, "rb") as fh:
            alerts.extend(fastavro.reader(fh))
    return alerts


def expected(alerts, objects):
    """What each filter should match: pandas over fastavro's records, astropy for the
    cross-match with the survey's Object table."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    src = pd.DataFrame([a["diaSource"] for a in alerts])
    src["alertId"] = [a["diaSourceId"] for a in alerts]
    threshold = float(src.psfFlux.quantile(0.8))
    bright = sorted(src.alertId[src.psfFlux > threshold])
    # Host galaxies brighter than r = 26.5 within 1" of the new source.
    hosts = objects[(objects.extendedness == 1) & (objects.r_mag < 26.5)]
    a_c = SkyCoord(src.ra.values * u.deg, src.dec.values * u.deg)
    o_c = SkyCoord(hosts.ra.values * u.deg, hosts.dec.values * u.deg)
    ia, io_, _, _ = o_c.search_around_sky(a_c, 1 * u.arcsec) if len(hosts) else ([], [], 0, 0)
    pairs = sorted(zip(src.alertId.values[ia].tolist(), hosts.objectId.values[io_].tolist()))
    # Objects with at least five detections including this one.
    n = [a["diaObject"]["nDiaSources"] for a in alerts]
    seasoned = sorted(src.alertId[[k >= 5 for k in n]])
    return {"threshold": threshold, "bright": bright, "hosts": pairs, "seasoned": seasoned}


def test_a_replayed_night_reaches_every_output_once_across_a_kill(tmp_path):
    survey = tmp_path / "survey"
    out = run("generate", "--out", survey, "--objects", 100_000, "--seed", 7, "--alerts",
              "--alert-schema-dir", schema_dir(), "--alert-schema", "9.0", "--alert-visits", 40,
              "--alert-fields", 4, "--alert-field-radius-deg", 6, "--variable-fraction", 0.3,
              "--alert-history", 10).stderr
    m = re.search(r"alerts: (\d+) alerts of (\d+) variables in 40 visits", out)
    assert m, out
    alerts = read_night(survey / "alerts")
    assert len(alerts) == int(m.group(1)) > 1000
    # Every alert is a 5-sigma detection with its history; ids are unique.
    assert len({a["diaSourceId"] for a in alerts}) == len(alerts)
    assert all(abs(a["diaSource"]["psfFlux"]) >= 4.99 * a["diaSource"]["psfFluxErr"] for a in alerts)
    objects = pd.read_parquet(survey / "object-00000.parquet")
    want = expected(alerts, objects)
    assert 0 < len(want["bright"]) < len(alerts) and want["hosts"] and want["seasoned"]

    data = tmp_path / "data"
    env = personal_env(tmp_path, MERIDIAN_ALERTS__WEBHOOK_ALLOW_PRIVATE="true")
    run("ingest", "object", survey / "object-00000.parquet", data_dir=data)
    add_users(data, env, "alice")
    broker = Tansu()
    hook = Hook(fail_first=1)
    try:
        files = sorted(glob.glob(str(survey / "alerts" / "visit-*.avro")))
        # One message per record batch: Tansu 0.6 answers a fetch from inside a record batch
        # with the next batch (the consumer logs the skipped offsets), so a consumer
        # resuming mid-batch after the kill would lose the rest of that batch.
        r = run("alerts", "replay", *files, "--kafka", broker.brokers, "--topic", "night",
                "--schema-id", 900, "--kafka-setting", "batch.num.messages=1")
        assert f"{len(alerts)} alerts published to night" in r.stdout, r.stdout
        with Server(data, env=env) as s:
            base = s.url.removesuffix("/tap")
            token = token_of(base, "alice")
            A = requests.Session()
            A.headers["Authorization"] = f"Bearer {token}"

            def add(**form):
                r = A.post(f"{base}/api/alerts/filters", data=form)
                assert r.status_code == 201, r.text

            add(name="bright", mydb_table="bright", kafka_topic="alice.bright", webhook=hook.url,
                query=f"SELECT a.alertId, a.diaObjectId, a.psfFlux FROM alert.diasource AS a "
                      f"WHERE a.psfFlux > {want['threshold']!r}")
            add(name="hosts", mydb_table="hosts", kafka_topic="alice.hosts",
                query="SELECT a.alertId, o.objectId, o.r_mag FROM alert.diasource AS a "
                      "JOIN object AS o ON 1 = CONTAINS(POINT('ICRS', a.ra, a.dec), "
                      "CIRCLE('ICRS', o.ra, o.dec, 1/3600.)) "
                      "WHERE o.extendedness = 1 AND o.r_mag < 26.5")
            add(name="seasoned", mydb_table="seasoned",
                query="SELECT d.alertId, d.nDiaSources FROM alert.diaobject AS d "
                      "WHERE d.nDiaSources >= 5")

            args = [meridian_bin(), "--quiet", "--data-dir", str(data), "alerts", "consume",
                    "--kafka", broker.brokers, "--topic", "night", "--schema-dir", schema_dir(),
                    "--batch-alerts", "200", "--batch-ms", "200",
                    "--kafka-setting", "session.timeout.ms=6000",
                    "--kafka-setting", "heartbeat.interval.ms=500"]
            penv = {**os.environ, **env}
            p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, env=penv)
            try:
                for _ in range(3):
                    line = p.stdout.readline()
                    assert line.startswith("batch"), line
            finally:
                p.kill()  # SIGKILL, mid-stream
                p.wait()
            # The restart waits out the killed member's session (6 s): Tansu 0.6 never
            # completes a join to a group that comes while a dead member's session still
            # runs (a join at once, or after the session, is served).
            time.sleep(7)
            done = subprocess.run(args + ["--stop-when-idle-s", "4"], capture_output=True,
                                  text=True, env=penv, timeout=600)
            assert done.returncode == 0, done.stderr[-2000:]
            assert "skipped offsets" not in done.stderr, done.stderr[-2000:]
            resumed = int(re.search(r"consumed\t(\d+) messages", done.stdout).group(1))
            assert 0 < resumed < len(alerts), done.stdout[-500:]

            # Each filter's MyDB table holds each match once.
            assert sorted(tap_ids(base, token, "bright")[0]) == want["bright"]
            _, names, rows = tap_ids(base, token, "hosts")
            got = sorted((r[names.index("alertId")], r[names.index("objectId")]) for r in rows)
            assert got == want["hosts"]
            assert sorted(tap_ids(base, token, "seasoned")[0]) == want["seasoned"]
            # The Kafka topics (on Tansu), each match once, keyed by alert.
            msgs = topic_messages(broker.brokers, "alice.bright", len(want["bright"]))
            assert sorted(int(k) for k, _ in msgs) == want["bright"]
            msgs = topic_messages(broker.brokers, "alice.hosts", len(want["hosts"]))
            assert sorted(int(k) for k, _ in msgs) == sorted({a for a, _ in want["hosts"]})
            # The webhook: every match; a post repeated after the kill has the same key.
            deadline = time.time() + 60
            while len({b["alertId"] for _, b in hook.posts}) < len(want["bright"]) and time.time() < deadline:
                time.sleep(0.5)
            assert sorted({b["alertId"] for _, b in hook.posts}) == want["bright"]
            for key, body in hook.posts:
                assert key.endswith(f"-{body['alertId']}")
            f = {f["name"]: f for f in A.get(f"{base}/api/alerts/filters").json()}
            assert all(v["state"] == "active" for v in f.values()), f

        # Light curves: the DIA tables the consumer made are served from a restart (a
        # server serves the catalogs that exist when it starts).
        with Server(data, env=env) as s:
            base = s.url.removesuffix("/tap")
            # The object with the most detections, against pandas over every alert's
            # sources (each once).
            det = pd.DataFrame([s for a in alerts for s in [a["diaSource"], *(a["prvDiaSources"] or [])]])
            det = det.drop_duplicates("diaSourceId")
            frc = pd.DataFrame([s for a in alerts for s in (a["prvDiaForcedSources"] or [])])
            frc = frc.drop_duplicates("diaForcedSourceId")
            obj = int(det.diaObjectId.value_counts().idxmax())
            want_det = det[det.diaObjectId == obj].sort_values(["midpointMjdTai", "diaSourceId"])
            want_frc = frc[frc.diaObjectId == obj].sort_values(["midpointMjdTai", "diaForcedSourceId"])
            assert len(want_det) >= 5
            r = requests.post(f"{base}/tap/sync", data={
                "LANG": "ADQL", "FORMAT": "csv",
                "QUERY": f'SELECT "diaSourceId", "psfFlux" FROM dia_source '
                         f'WHERE "diaObjectId" = {obj} ORDER BY "midpointMjdTai", "diaSourceId"'})
            assert r.status_code == 200, r.text
            tap = pd.read_csv(io.StringIO(r.text))
            assert list(tap.diaSourceId) == list(want_det.diaSourceId)
            assert (abs(tap.psfFlux.values - want_det.psfFlux.values) <= 1e-6 * abs(want_det.psfFlux.values)).all()
            r = requests.get(f"{base}/lightcurve", params={"ID": obj, "RESPONSEFORMAT": "csv"})
            assert r.status_code == 200, r.text
            lc = pd.read_csv(io.StringIO(r.text))
            assert list(lc[lc.kind == "detection"].measurement_id) == list(want_det.diaSourceId)
            assert list(lc[lc.kind == "forced"].measurement_id) == list(want_frc.diaForcedSourceId)
            assert list(lc[lc.kind == "detection"].band) == list(want_det.band)

        # The DIA tables are HATS catalogs whose partitions are directories of the files
        # the appends wrote (some merged by the compactor): lsdb reads every source once.
        import lsdb
        cat = data / "catalogs" / "dia_source"
        assert "hats_npix_suffix=/" in (cat / "hats.properties").read_text()
        got = lsdb.open_catalog(str(cat)).compute()
        assert sorted(got.diaSourceId) == sorted(det.diaSourceId)
        files = [len(list(p.glob("*.parquet")))
                 for p in (cat / "dataset").glob("Norder=*/Dir=*/Npix=*")]
        assert files and max(files) >= 2, files
    finally:
        hook.close()
        broker.close()
