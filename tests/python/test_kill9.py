"""A kill -9 during ingest leaves the earlier catalog intact and readable."""

import os
import signal
import subprocess
import time

import hats
import lsdb

from conftest import meridian_bin, run


def test_kill9_during_ingest_keeps_previous_version(tmp_path, shared):
    data = tmp_path / "data"
    run("ingest", "cat", shared / "catalogs/hipparcos2.vot", data_dir=data)
    before = run("info", "cat", data_dir=data).stdout
    assert "hats_nrows = 117955" in before
    run("generate", "--out", tmp_path / "big", "--objects", 1_500_000, "--format", "csv", "--profile", "narrow")
    big = sorted((tmp_path / "big").glob("object-*.csv"))
    proc = subprocess.Popen([meridian_bin(), "--quiet", "--data-dir", str(data), "ingest", "cat", *map(str, big),
                             "--partition-rows", "20000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = data / "catalogs" / ".staging"
    deadline = time.time() + 120
    # Wait until the ingest has written spill or partition files, then kill it.
    while time.time() < deadline:
        files = [f for f in staging.rglob("*") if f.is_file()]
        if len(files) > 5:
            break
        assert proc.poll() is None, "ingest finished before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(staging.iterdir()), "the killed ingest left its staging directory"
    # The earlier version is intact for meridian, hats and lsdb.
    assert run("info", "cat", data_dir=data).stdout == before
    assert hats.read_hats(data / "catalogs" / "cat").main_catalog.catalog_info.total_rows == 117955
    assert len(lsdb.open_catalog(data / "catalogs" / "cat").cone_search(10, 10, 3600).compute()) > 0
    # The next ingest removes the leftovers and replaces the catalog.
    run("ingest", "cat", big[0], data_dir=data)
    assert not any(staging.iterdir())
    assert "hats_nrows = 1000000" in run("info", "cat", data_dir=data).stdout


# The services killed mid-operation: after a restart nothing is half-visible, every completed
# operation is there, and `meridian check` finds what the cut-off left and repairs it.

import threading
from pathlib import Path

import requests

from conftest import Server, add_users, personal_env, sessions_of, storage_put


def backdate(root, seconds=300):
    """Ages every file under `root` (what check leaves alone while it may be in use is what
    changed in the last minute)."""
    old = time.time() - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (old, old))


def checked(data, env, *args):
    return run("check", *args, data_dir=data, env=env, check=False)


def restart(server, store, env):
    server.proc.kill()
    server.proc.wait()
    return Server(store, env=env, jobs_dir=server.jobs_dir)


def in_background(fn):
    t = threading.Thread(target=lambda: _swallow(fn), daemon=True)
    t.start()
    return t


def _swallow(fn):
    try:
        fn()
    except requests.RequestException:
        pass


def test_kill9_during_mydb_import_and_storage_upload(store, tmp_path):
    env = personal_env(tmp_path)
    add_users(store, env, "kim")
    s = Server(store, env=env)
    try:
        base = s.url.removesuffix("/tap")
        kim = sessions_of(base, ["kim"])["kim"]
        # Completed before the kill: a table and a file.
        r = kim.get(f"{base}/query/query", params={"sql": "SELECT source_id, ra, dec FROM gaia LIMIT 100",
                                                   "out": "mydb://kept", "ofmt": "csv"})
        assert r.status_code == 200, r.text
        assert storage_put(kim, base, "vos://kept.txt", b"kept\n").status_code in (200, 201)
        # A large staged file, then its import, killed while the table is being written.
        rows = "".join(f"{i},{i % 360}.5,{i % 90}.25,name {i}\n" for i in range(1_500_000))
        r = kim.post(f"{base}/storage/xfer", data="id,ra,dec,name\n" + rows,
                     headers={"X-DL-FileName": "big.csv", "X-DL-InitXfer": "True",
                              "Content-type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        mydb = tmp_path / "mydb" / "kim"
        in_background(lambda: kim.post(f"{base}/query/import", params={
            "table": "big", "filename": "big.csv", "csv_header": "True", "delimiter": ","}, timeout=300))
        writing = lambda: [p for p in mydb.glob(".*") if ".big." in p.name]
        deadline = time.time() + 120
        while not writing() and time.time() < deadline:
            time.sleep(0.005)
        assert writing(), "the import never started writing"
        s = restart(s, store, env)
        base = s.url.removesuffix("/tap")
        kim = sessions_of(base, ["kim"])["kim"]
        tables = kim.get(f"{base}/query/list", params={"table": ""}).text.split()
        assert "big" not in tables and "kept" in tables, tables

        # An upload killed while its bytes stream in.
        bytes_dir = tmp_path / "bytes"
        ticket = kim.get(f"{base}/storage/put", params={"name": "vos://half.bin"})
        assert ticket.status_code == 200, ticket.text

        def slow():
            for _ in range(400):
                yield os.urandom(64 << 10)
                time.sleep(0.01)
        in_background(lambda: requests.put(ticket.text, data=slow(), timeout=300))
        deadline = time.time() + 60
        staged = []
        while time.time() < deadline:
            staged = [p for p in bytes_dir.rglob("*") if "#" in p.name and p.stat().st_size > 1 << 20]
            if staged:
                break
            time.sleep(0.01)
        assert staged, "the upload never reached the store"
        s = restart(s, store, env)
        base = s.url.removesuffix("/tap")
        kim = sessions_of(base, ["kim"])["kim"]
        listing = kim.get(f"{base}/storage/ls", params={"name": "vos://"}).text
        assert "half.bin" not in listing and "kept.txt" in listing, listing
        assert kim.get(f"{base}/storage/get", params={"name": "vos://kept.txt"}).status_code == 200
    finally:
        s.proc.kill()
        s.proc.wait()
    # What the two cut-offs left, found and repaired.
    backdate(tmp_path / "bytes")
    found = checked(store, env)
    assert found.returncode == 1
    assert "MyDB of kim: an interrupted write left" in found.stdout, found.stdout
    assert "an interrupted upload left" in found.stdout, found.stdout
    checked(store, env, "--repair")
    again = checked(store, env)
    assert again.returncode == 0, again.stdout
    assert not [p for p in (tmp_path / "mydb" / "kim").rglob(".*") if p.is_file()]
    assert not [p for p in (tmp_path / "bytes").rglob("*") if "#" in p.name]


def test_kill9_during_group_dissolve(store, tmp_path):
    env = personal_env(tmp_path)
    add_users(store, env, "gus")
    s = Server(store, env=env)
    try:
        base = s.url.removesuffix("/tap")
        gus = sessions_of(base, ["gus"])["gus"]
        assert gus.post(f"{base}/api/groups", data={"name": "crew"}).status_code == 201
        for i in range(300):
            assert storage_put(gus, base, f"crew://f{i}.txt", b"x" * 1000).status_code == 201
        r = gus.get(f"{base}/query/query", params={"sql": "SELECT 1 AS x", "out": "mydb://crew.t"})
        assert r.status_code == 200, r.text
        objects = lambda: sum(1 for p in (tmp_path / "bytes").rglob("*") if p.is_file())
        before = objects()
        in_background(lambda: gus.delete(f"{base}/api/groups/crew", timeout=60))
        deadline = time.time() + 30
        while objects() == before and time.time() < deadline:
            time.sleep(0.001)
        s = restart(s, store, env)
        base = s.url.removesuffix("/tap")
        gus = sessions_of(base, ["gus"])["gus"]
        groups = gus.get(f"{base}/api/groups").json()
        if groups:
            # Killed before the dissolution was recorded: the group is whole.
            assert groups == [{"name": "crew", "role": "owner"}]
            listing = gus.get(f"{base}/storage/ls", params={"name": "crew://"}).text
            assert sum(1 for n in listing.split(",") if n.startswith("f")) == 300, listing
        else:
            # Dissolved: a new group of the name starts empty, whatever the cut-off left.
            assert gus.post(f"{base}/api/groups", data={"name": "crew"}).status_code == 201
            listing = gus.get(f"{base}/storage/ls", params={"name": "crew://"}).text
            assert set(listing.replace(",", " ").split()) <= {"public", "tmp"}, listing
            r = gus.get(f"{base}/query/list", params={"table": ""})
            assert "crew.t" not in r.text, r.text
            assert gus.delete(f"{base}/api/groups/crew").status_code in (200, 204)
    finally:
        s.proc.kill()
        s.proc.wait()
    backdate(tmp_path / "bytes")
    # No file that is listed lost its bytes; what the cut-off left is only unreferenced.
    found = checked(store, env).stdout
    assert "are missing" not in found, found
    checked(store, env, "--repair")
    again = checked(store, env)
    assert again.returncode == 0, again.stdout


def test_check_finds_missing_results_and_orphaned_job_directories(store, tmp_path):
    env = personal_env(tmp_path)
    with Server(store, env=env) as s:
        jobs = s.jobs_dir
        r = requests.post(f"{s.url}/async", data={
            "LANG": "ADQL", "QUERY": "SELECT TOP 10 * FROM gaia", "PHASE": "RUN"})
        job = r.url
        deadline = time.time() + 60
        while requests.get(f"{job}/phase").text != "COMPLETED" and time.time() < deadline:
            time.sleep(0.1)
        assert requests.get(f"{job}/phase").text == "COMPLETED"
    job_id = job.rstrip("/").rsplit("/", 1)[-1]
    env = {**env, "MERIDIAN_JOBS__DIR": str(jobs)}
    assert checked(store, env).returncode == 0
    # A result file lost, and a directory whose job is gone (a destruction cut off).
    for f in (Path(jobs) / job_id).iterdir():
        f.unlink()
    (Path(jobs) / "orphan-job").mkdir()
    (Path(jobs) / "orphan-job" / "result.vot").write_text("half")
    found = checked(store, env)
    assert found.returncode == 1
    assert f"job {job_id}: result 'result'" in found.stdout and "is missing" in found.stdout, found.stdout
    assert "orphan-job belongs to no job" in found.stdout, found.stdout
    checked(store, env, "--repair")
    assert not (Path(jobs) / "orphan-job").exists()
    again = checked(store, env).stdout
    assert "orphan-job" not in again and f"job {job_id}" in again, again
