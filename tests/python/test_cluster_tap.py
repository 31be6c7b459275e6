"""TAP on a cluster: `meridian serve` with `[cluster] scheduler` set runs its queries on a
scheduler and two executors started from the binary (loopback), and pyvo gets the same
answers, sync and async, as from a server running them itself; a query reading an upload
runs in the server and says so in its log. `meridian cluster status` lists the
executors."""

import json
import os
import re
import subprocess
import time

import numpy as np
import pytest
import pyvo
from astropy.table import Table

from conftest import Server, meridian_bin, run

QUERIES = [
    "SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia "
    "WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 56.75, 24.12, 3))",
    "SELECT ivo_healpix_index(1, ra, dec) AS cell, COUNT(*) AS n, AVG(phot_g_mean_mag) AS g "
    "FROM gaia GROUP BY ivo_healpix_index(1, ra, dec)",
    # A cross-match (the cross-match operator, on the executors).
    "SELECT g.source_id, t.vt_mag, DISTANCE(POINT('ICRS', g.ra, g.dec), "
    "POINT('ICRS', t.ra, t.dec)) * 3600 AS sep FROM gaia AS g JOIN tycho2 AS t "
    "ON 1 = CONTAINS(POINT('ICRS', g.ra, g.dec), CIRCLE('ICRS', t.ra, t.dec, 5.0 / 3600)) "
    "WHERE g.phot_g_mean_mag < 8",
]


class Cluster:
    """A scheduler and `executors` executors started from the binary on loopback, with `env`
    added to their environment."""

    def __init__(self, store, executors=2, env=None, bind="127.0.0.1:0"):
        self.procs = []
        self.store = store
        self.env = None if env is None else {**os.environ, **env}
        env = self.env
        self.url = self.start_scheduler(bind)
        for i in range(executors):
            self.procs.append(subprocess.Popen(
                [meridian_bin(), "--data-dir", str(store), "cluster", "executor", "--scheduler", self.url,
                 "--concurrent-tasks", "2", "--id", f"exec-{i}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        deadline = time.time() + 60
        while len(self.status()) < executors:
            assert time.time() < deadline, "executors did not register"
            time.sleep(0.3)

    def start_scheduler(self, bind):
        """Starts the scheduler (as the first process) and returns its URL."""
        p = subprocess.Popen([meridian_bin(), "--data-dir", str(self.store), "cluster",
                              "scheduler", "--bind", bind], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=self.env)
        if self.procs:
            self.procs[0] = p
        else:
            self.procs.append(p)
        url = None
        deadline = time.time() + 60
        while url is None and time.time() < deadline:
            m = re.search(r"Cluster scheduler: (df://\S+)", p.stderr.readline())
            if m:
                url = m.group(1)
        assert url, "the scheduler did not start"
        import threading
        threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
        return url

    def restart_scheduler(self):
        """Kills the scheduler and starts it again at the same address."""
        self.procs[0].kill()
        self.procs[0].wait()
        assert self.start_scheduler(self.url.removeprefix("df://")) == self.url

    def status(self):
        p = run("cluster", "status", "--scheduler", self.url, "--json", check=False)
        return json.loads(p.stdout) if p.returncode == 0 else []

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def cluster(store):
    c = Cluster(store)
    yield c
    c.close()


def tables_equal(a, b, ordered):
    assert a.colnames == b.colnames
    assert len(a) == len(b)
    if not ordered:
        a = a[np.lexsort([a[c] for c in reversed(a.colnames)])]
        b = b[np.lexsort([b[c] for c in reversed(b.colnames)])]
    for c in a.colnames:
        if a[c].dtype.kind == "f":
            np.testing.assert_allclose(np.asarray(a[c]), np.asarray(b[c]), rtol=1e-12)
        else:
            assert list(a[c]) == list(b[c]), c


def test_status_lists_the_executors(cluster):
    executors = cluster.status()
    assert sorted(e["id"] for e in executors) == ["exec-0", "exec-1"]
    assert all(e["task_slots"] == 2 for e in executors)
    text = run("cluster", "status", "--scheduler", cluster.url).stdout
    assert "2 executor(s)" in text and "exec-0" in text


def test_tap_sync_and_async_on_the_cluster_equal_the_embedded_server(store, cluster, tmp_path):
    with Server(store) as local, Server(store, env={"MERIDIAN_CLUSTER__SCHEDULER": cluster.url,
                                                    "MERIDIAN_CLUSTER__REQUIRED": "true"}) as remote:
        here = pyvo.dal.TAPService(local.url)
        there = pyvo.dal.TAPService(remote.url)
        for q in QUERIES:
            want = here.run_sync(q, maxrec=1_000_000).to_table()
            assert len(want) > 0, q
            ordered = "ORDER BY" in q
            tables_equal(there.run_sync(q, maxrec=1_000_000).to_table(), want, ordered)
            tables_equal(there.run_async(q, maxrec=1_000_000).to_table(), want, ordered)


def test_an_upload_query_runs_in_the_server_and_says_why(store, cluster, tmp_path):
    up = Table({"ra": [56.75, 10.0], "dec": [24.12, 41.2]})
    with Server(store, env={"MERIDIAN_CLUSTER__SCHEDULER": cluster.url,
                            "MERIDIAN_LOG__LEVEL": "info"}) as remote:
        svc = pyvo.dal.TAPService(remote.url)
        t = svc.run_sync("SELECT COUNT(*) AS n FROM TAP_UPLOAD.up AS u JOIN gaia AS g ON "
                         "1 = CONTAINS(POINT('ICRS', g.ra, g.dec), CIRCLE('ICRS', u.ra, u.dec, 1))",
                         uploads={"up": up}).to_table()
        assert int(t["n"][0]) > 0
        deadline = time.time() + 10
        while not any("query runs in this process" in line for line in remote.log):
            assert time.time() < deadline, "".join(remote.log)
            time.sleep(0.2)
    with Server(store, env={"MERIDIAN_CLUSTER__SCHEDULER": cluster.url,
                            "MERIDIAN_CLUSTER__REQUIRED": "true"}) as strict:
        svc = pyvo.dal.TAPService(strict.url)
        with pytest.raises(pyvo.dal.DALQueryError, match="cannot run on the cluster"):
            svc.run_sync("SELECT COUNT(*) AS n FROM TAP_UPLOAD.up", uploads={"up": up})


def test_metrics_show_the_cluster(store, cluster):
    import urllib.request
    with Server(store, env={"MERIDIAN_CLUSTER__SCHEDULER": cluster.url,
                            "MERIDIAN_CLUSTER__REQUIRED": "true"}) as remote:
        svc = pyvo.dal.TAPService(remote.url)
        assert len(svc.run_sync(QUERIES[0]).to_table()) > 0
        text = urllib.request.urlopen(remote.url.rsplit("/tap", 1)[0] + "/metrics").read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values["meridian_cluster_up"] == 1
    assert values["meridian_cluster_executors"] == 2
    assert values['meridian_cluster_executor_task_slots{executor="exec-0"}'] == 2
    assert 0 <= values['meridian_cluster_executor_heartbeat_age_seconds{executor="exec-1"}'] < 60
    assert values['meridian_cluster_jobs{status="Completed"}'] >= 1
    assert values["meridian_cluster_stages_completed"] >= 1


def test_a_restarted_scheduler_serves_again(store):
    """The scheduler is killed and started again at the same address: while it is down a
    query fails clearly (it does not hang), the executors register again, and the service's
    next queries run on the cluster with the same answers."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    c = Cluster(store, bind=f"127.0.0.1:{port}")
    try:
        with Server(store) as local, Server(store, env={"MERIDIAN_CLUSTER__SCHEDULER": c.url,
                                                        "MERIDIAN_CLUSTER__REQUIRED": "true"}) as remote:
            here = pyvo.dal.TAPService(local.url)
            there = pyvo.dal.TAPService(remote.url)
            want = here.run_sync(QUERIES[1]).to_table()
            tables_equal(there.run_sync(QUERIES[1]).to_table(), want, False)
            c.procs[0].kill()
            c.procs[0].wait()
            started = time.time()
            with pytest.raises((pyvo.dal.DALServiceError, pyvo.dal.DALQueryError)):
                there.run_sync(QUERIES[1])
            assert time.time() - started < 60
            c.restart_scheduler()
            deadline = time.time() + 60
            while len(c.status()) < 2:
                assert time.time() < deadline, "executors did not register again"
                time.sleep(0.5)
            tables_equal(there.run_sync(QUERIES[1]).to_table(), want, False)
    finally:
        c.close()
