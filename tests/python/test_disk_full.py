"""A full disk (ENOSPC) during ingest, MyDB save and import, a TAP upload, an async result
and a storage put: a clear error (HTTP 507 Insufficient Storage from the services), nothing
half-visible, the space given back, and the service still serving.

Everything the service writes (catalogs, jobs, MyDB, files, accounts, temporary files)
lives on a small tmpfs that the test mounts; a filler file takes all but a little of it
while an operation runs. Mounting needs root (as the CI runs); elsewhere the tests skip."""

import io
import os
import subprocess
import time

import pytest
import requests

from conftest import Server, add_users, personal_env, run, token_of

DISK_MIB = 256
# Bytes left free while an operation runs: less than any of them needs.
LEFT = 1 << 20
# What a failed operation may keep for good: a job's record, SQLite pages.
SLACK = 1 << 20


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Fill:
    """Takes all but `left` bytes of the disk at `disk` while in its block."""

    def __init__(self, disk, left=LEFT):
        self.path = disk / "filler"
        self.left = left

    def __enter__(self):
        with open(self.path, "wb") as f:
            size = free_bytes(self.path.parent) - self.left
            os.posix_fallocate(f.fileno(), 0, max(size, 1))
        return self

    def __exit__(self, *exc):
        self.path.unlink()


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    d = tmp_path_factory.mktemp("small-disk")
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture(scope="module")
def service(disk, shared):
    data = disk / "data"
    run("ingest", "gaia", shared / "catalogs/gaia_dr3_bright.csv.gz", "--partition-rows", 20000,
        data_dir=data)
    (disk / "tmp").mkdir()
    env = personal_env(disk, TMPDIR=str(disk / "tmp"))
    add_users(data, env, "carol")
    jobs = disk / "jobs"
    jobs.mkdir()
    with Server(data, env=env, jobs_dir=jobs) as s:
        base = s.url.removesuffix("/tap")
        yield {"base": base, "tap": s.url, "data": data, "disk": disk, "jobs": jobs,
               "token": token_of(base, "carol"), "server": s}


def query(svc, path, **params):
    return requests.get(f"{svc['base']}/query/{path}", params=params,
                        headers={"X-DL-AuthToken": svc["token"]}, timeout=300)


def full_disk_error(r):
    """A refusal for want of space: 507, with a message that says so."""
    assert r.status_code == 507, (r.status_code, r.text[:500])
    assert "disk" in r.text.lower() and "full" in r.text.lower(), r.text[:500]


def still_serving(svc):
    r = requests.get(f"{svc['tap']}/sync", params={
        "REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "csv",
        "QUERY": "SELECT COUNT(*) AS n FROM gaia"}, timeout=60)
    assert r.status_code == 200 and int(r.text.split()[1]) > 100_000, r.text


def settled(disk, before):
    """The free space is back to `before` (within SLACK), once removals are done."""
    deadline = time.time() + 10
    while free_bytes(disk) < before - SLACK and time.time() < deadline:
        time.sleep(0.1)
    assert free_bytes(disk) >= before - SLACK, (before, free_bytes(disk))


def test_ingest_fails_cleanly_on_a_full_disk(service, shared):
    disk, data = service["disk"], service["data"]
    before = free_bytes(disk)
    with Fill(disk):
        p = run("ingest", "big", shared / "catalogs/gaia_dr3_bright.csv.gz", data_dir=data,
                check=False)
    assert p.returncode != 0
    assert "no space left" in p.stderr.lower() or "disk is full" in p.stderr.lower(), p.stderr
    assert "big" not in run("catalogs", data_dir=data).stdout.split()
    assert not any((data / ".staging").glob("*")), list((data / ".staging").iterdir())
    settled(disk, before)
    still_serving(service)


def test_mydb_save_fails_cleanly_on_a_full_disk(service):
    disk = service["disk"]
    before = free_bytes(disk)
    with Fill(disk):
        r = query(service, "query", sql="SELECT * FROM gaia", out="mydb://everything", ofmt="csv")
    full_disk_error(r)
    assert r.text.startswith("Error: ")
    assert "everything" not in query(service, "list", table="").text.split()
    settled(disk, before)
    # With room again, the same save works.
    r = query(service, "query", sql="SELECT * FROM gaia WHERE phot_g_mean_mag < 6",
              out="mydb://bright", ofmt="csv")
    assert r.status_code == 200 and r.text.startswith("OK"), r.text
    assert query(service, "delete", table="bright").text == "OK"


def test_mydb_import_fails_cleanly_on_a_full_disk(service):
    disk, token = service["disk"], service["token"]
    rows = "".join(f"{i},{i * 0.001:.3f},{-i * 0.001:.3f},star {i}\n" for i in range(200_000))
    staged = requests.post(f"{service['base']}/storage/xfer", data="id,ra,dec,name\n" + rows,
                           headers={"X-DL-AuthToken": token, "X-DL-FileName": "many.csv",
                                    "X-DL-InitXfer": "True",
                                    "Content-type": "application/octet-stream"})
    assert staged.status_code == 200, staged.text
    before = free_bytes(disk)
    with Fill(disk):
        r = requests.post(f"{service['base']}/query/import", headers={"X-DL-AuthToken": token},
                          params={"table": "many", "filename": "many.csv", "csv_header": "True",
                                  "delimiter": ",", "append": "False"})
    full_disk_error(r)
    assert "many" not in query(service, "list", table="").text.split()
    settled(disk, before)


def test_tap_upload_fails_cleanly_on_a_full_disk(service):
    disk = service["disk"]
    table = io.BytesIO()
    table.write(b"id,ra,dec\n")
    for i in range(100_000):
        table.write(f"{i},{i * 0.0036:.4f},{(i % 1000) * 0.01:.2f}\n".encode())
    before = free_bytes(disk)
    with Fill(disk):
        r = requests.post(f"{service['tap']}/sync", data={
            "REQUEST": "doQuery", "LANG": "ADQL", "UPLOAD": "mine,param:t",
            "QUERY": "SELECT COUNT(*) FROM TAP_UPLOAD.mine"},
            files={"t": ("t.csv", table.getvalue(), "text/csv")}, timeout=120)
    full_disk_error(r)
    assert "QUERY_STATUS" in r.text and "ERROR" in r.text, r.text[:500]
    settled(disk, before)
    still_serving(service)


def test_async_result_fails_cleanly_on_a_full_disk(service):
    disk, jobs = service["disk"], service["jobs"]
    before = free_bytes(disk)
    with Fill(disk):
        r = requests.post(f"{service['tap']}/async", data={
            "REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "votable", "PHASE": "RUN",
            "QUERY": "SELECT * FROM gaia"}, timeout=60)
        assert r.status_code in (200, 303), r.text
        job = r.url
        deadline = time.time() + 120
        phase = ""
        while time.time() < deadline:
            phase = requests.get(f"{job}/phase", timeout=30).text.strip()
            if phase in ("COMPLETED", "ERROR", "ABORTED"):
                break
            time.sleep(0.2)
    assert phase == "ERROR", phase
    summary = requests.get(f"{job}/error", timeout=30).text
    assert "disk" in summary.lower() and "full" in summary.lower(), summary
    results = requests.get(f"{job}/results", timeout=30).text
    assert "result" not in results.split("<uws:results")[-1].split("</uws:results")[0], results
    job_id = job.rstrip("/").rsplit("/", 1)[-1]
    leftovers = [p for p in jobs.rglob("*") if job_id in str(p) and p.is_file()
                 and p.stat().st_size > 64 << 10]
    assert not leftovers, leftovers
    assert requests.delete(job, timeout=30).status_code in (200, 303)
    settled(disk, before)
    still_serving(service)


def test_storage_put_fails_cleanly_on_a_full_disk(service):
    disk, token = service["disk"], service["token"]
    headers = {"X-DL-AuthToken": token}
    before = free_bytes(disk)
    with Fill(disk):
        ticket = requests.get(f"{service['base']}/storage/put", params={"name": "vos://big.bin"},
                              headers=headers)
        assert ticket.status_code == 200, ticket.text
        r = requests.put(ticket.text, data=os.urandom(4 << 20))
    full_disk_error(r)
    listing = requests.get(f"{service['base']}/storage/ls", params={"name": "vos://"},
                           headers=headers).text
    assert "big.bin" not in listing, listing
    settled(disk, before)
    # With room again the same put works, under the same quota.
    ticket = requests.get(f"{service['base']}/storage/put", params={"name": "vos://big.bin"},
                          headers=headers)
    assert requests.put(ticket.text, data=os.urandom(4 << 20)).status_code in (200, 201)
    assert requests.get(f"{service['base']}/storage/rm", params={"file": "vos://big.bin"},
                        headers=headers).status_code in (200, 204)
    still_serving(service)
