"""Shared fixtures: the meridian binary, the shared data, and catalogs ingested once."""

import os
import subprocess
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def meridian_bin() -> str:
    env = os.environ.get("TEST_MERIDIAN_BIN")
    if env:
        return env
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "debug" / "meridian")


def run(*args, data_dir=None, check=True, input=None, timeout=600, env=None):
    """Runs meridian (with `env` added to the environment); returns the CompletedProcess
    (stdout and stderr as text)."""
    cmd = [meridian_bin(), "--quiet"]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    cmd += [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout,
                       env=None if env is None else {**os.environ, **env})
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def shared():
    assert SHARED.exists(), f"shared data not found at {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def store(tmp_path_factory, shared):
    """A data directory with the Gaia and Tycho-2 samples ingested by meridian."""
    d = tmp_path_factory.mktemp("meridian-data")
    run("ingest", "gaia", shared / "catalogs/gaia_dr3_bright.csv.gz", "--partition-rows", 20000, data_dir=d)
    run("ingest", "tycho2", shared / "catalogs/tycho2_subset.fits.gz", "--partition-rows", 100000, data_dir=d)
    return d


def personal_env(d, **extra):
    """Environment for a server whose accounts, files and MyDB tables live in directory `d`
    (so that a test's users and their data are its own)."""
    return {"MERIDIAN_AUTH__DB": str(d / "accounts.sqlite"),
            "MERIDIAN_STORAGE__DB": str(d / "storage.sqlite"),
            "MERIDIAN_STORAGE__DIR": str(d / "bytes"),
            "MERIDIAN_MYDB__DIR": str(d / "mydb"),
            **extra}


def add_users(store, env, *names):
    """Accounts `names` (in the account database `env` names), each with the password
    '<name>-password'."""
    for name in names:
        run("user", "add", name, data_dir=store, input=f"{name}-password\n", env=env)


def token_of(base, name):
    """A login token of a user made by `add_users`, from the service at `base`."""
    import requests
    r = requests.post(f"{base}/api/auth/login",
                      data={"username": name, "password": f"{name}-password"})
    assert r.status_code == 200, r.text
    return r.json()["token"]


class Server:
    """`meridian serve` on a free loopback port, with `env` added to its environment."""

    def __init__(self, store, env=None, jobs_dir=None):
        import re
        import tempfile
        import time
        # Each server gets a job directory of its own unless told which to use (a restart).
        if jobs_dir is None:
            self._jobs = tempfile.TemporaryDirectory(prefix="meridian-jobs-")
            jobs_dir = self._jobs.name
        self.jobs_dir = jobs_dir
        cmd = [meridian_bin(), "--data-dir", str(store), "serve", "--addr", "127.0.0.1:0"]
        # Per-client limits are off unless a test sets them (test_quotas.py): the tests
        # come from one address, faster than any user.
        quotas = {f"MERIDIAN_QUOTAS__{k}": "0" for k in
                  ("REQUESTS_PER_MINUTE", "CONCURRENT_QUERIES", "RESULT_MIB_PER_DAY", "UPLOADS_PER_HOUR")}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **quotas, **(env or {}),
                                          "MERIDIAN_JOBS__DIR": str(jobs_dir)})
        self.url = None
        deadline = time.time() + 60
        while self.url is None and time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            m = re.search(r"TAP service: (http://\S+)", line)
            if m:
                self.url = m.group(1)
        assert self.url, "meridian serve did not start"
        # Keep reading the log so that the server never blocks on a full pipe; the tail is
        # kept for failure messages.
        import collections
        import threading
        self.log = collections.deque(maxlen=200)

        def drain():
            for line in self.proc.stderr:
                self.log.append(line)
        threading.Thread(target=drain, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def tap(store):
    """A running `meridian serve` over the Gaia and Tycho-2 store; yields the TAP URL."""
    with Server(store) as s:
        yield s.url


class SourceAddress(HTTPAdapter):
    """Connections from a given local address."""

    def __init__(self, ip, **kw):
        self.ip = ip
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw["source_address"] = (self.ip, 0)
        super().init_poolmanager(*args, **kw)


def client(ip):
    """A requests session whose connections come from `ip` (any 127.x.y.z works on Linux)."""
    s = requests.Session()
    s.mount("http://", SourceAddress(ip))
    return s


def sessions_of(base, names):
    """A requests session per user, carrying the user's token as Data Lab's client does."""
    sessions = {}
    for name in names:
        sess = requests.Session()
        sess.headers["X-DL-AuthToken"] = token_of(base, name)
        sessions[name] = sess
    return sessions


def storage_put(sess, base, name, data):
    """Writes `data` to storage node `name` as Data Lab's client does: a transfer URL from
    /storage/put (its answer when it refuses), then a PUT of the bytes to it."""
    r = sess.get(f"{base}/storage/put", params={"name": name})
    return r if r.status_code != 200 else requests.put(r.text, data=data)


def storage_get(sess, base, name):
    """Reads storage node `name`: the answer of /storage/get when it refuses, else the
    bytes fetched from the transfer URL it gives."""
    r = sess.get(f"{base}/storage/get", params={"name": name})
    return r if r.status_code != 200 else requests.get(r.text)


CHROMIUM = "/usr/lib/chromium/chromium"


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (no browser is downloaded), with software
    WebGL, and no host name resolving but loopback: a request that tries to leave the
    machine fails, and the tests see it."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
        yield b
        b.close()
