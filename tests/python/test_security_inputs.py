"""Hostile inputs against the running service: `stored:` upload references forged by a
client (absolute paths, `..`, another user's MyDB table), a FITS header declaring 64 GB, a
gzip bomb through TAP UPLOAD and through Data Lab's /storage/xfer + /query/import, a client
creating jobs without end, and URL uploads declared (behind the private-network guard) by
default. The server's memory is read from /proc/<pid>/status."""

import re
import time
import zlib
from pathlib import Path

import pytest
import requests

from conftest import Server, add_users, personal_env, token_of

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
SECRET = b"name,value\nsecret,TOPSECRET\n"


def memory_kib(proc):
    """(VmRSS, VmHWM) of a process, KiB: its memory now, and the most it ever had."""
    status = Path(f"/proc/{proc.pid}/status").read_text()
    return tuple(int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M).group(1)) for k in ("VmRSS", "VmHWM"))


def bounded(server, call, max_growth_mib=400, max_seconds=60):
    """Runs `call()`, checking that the server's peak memory grew by less than
    `max_growth_mib` over what it used before and that the answer came in time; returns
    the answer."""
    rss, before = memory_kib(server.proc)
    t = time.time()
    r = call()
    elapsed = time.time() - t
    assert server.proc.poll() is None, "the server died"
    _, peak = memory_kib(server.proc)
    # The peak rose no higher than the memory before plus the allowance (or than an earlier
    # peak).
    assert peak <= max(before, rss + max_growth_mib * 1024), \
        f"memory grew from {rss} to a peak of {peak} KiB"
    assert elapsed < max_seconds, f"answered after {elapsed:.0f} s"
    return r


def fits_header_bomb():
    """8.6 kB of FITS whose table declares 65536 rows of 10^6 bytes (64 GB)."""
    def block(cards):
        text = "".join(c.ljust(80) for c in cards + ["END"])
        return text.ljust(-(-len(text) // 2880) * 2880).encode()
    primary = block(["SIMPLE  =                    T", "BITPIX  =                    8",
                     "NAXIS   =                    0", "EXTEND  =                    T"])
    table = block(["XTENSION= 'BINTABLE'", "BITPIX  =                    8",
                   "NAXIS   =                    2", "NAXIS1  =              1000000",
                   "NAXIS2  =                65536", "PCOUNT  =                    0",
                   "GCOUNT  =                    1", "TFIELDS =                    1",
                   "TTYPE1  = 's'", "TFORM1  = '1000000A'"])
    return primary + table + b"x" * 2880


@pytest.fixture(scope="module")
def gzip_bomb():
    """A CSV of one 600 MB field, gzip-compressed to about 611 kB."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [c.compress(b"a\n")]
    chunk = b"x" * (1 << 20)
    out += [c.compress(chunk) for _ in range(600)]
    out += [c.compress(b"\n"), c.flush()]
    data = b"".join(out)
    assert len(data) < 700_000
    return data


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    """A server of its own (its memory is measured) with users 'victim' and 'mallory', and
    a MyDB table of the victim's."""
    d = tmp_path_factory.mktemp("security")
    env = personal_env(d)
    add_users(store, env, "victim", "mallory")
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        tokens = {n: token_of(base, n) for n in ["victim", "mallory"]}
        r = requests.get(f"{base}/query/query", headers={"X-DL-AuthToken": tokens["victim"]},
                         params={"sql": "SELECT source_id FROM gaia LIMIT 3", "out": "mydb://secret"})
        assert r.status_code == 200, r.text
        tables = list((d / "mydb").rglob("secret.parquet"))
        assert len(tables) == 1, tables
        secret = d / "secret.csv"
        secret.write_bytes(SECRET)
        yield s, base, tokens, secret, tables[0]


def sync_upload(url, data, files=None):
    return requests.post(f"{url}/sync", data={"QUERY": "SELECT * FROM TAP_UPLOAD.t", "UPLOAD": "t,param:t",
                                              "RESPONSEFORMAT": "csv", **data}, files=files, timeout=120)


def test_forged_stored_references_are_refused_in_sync_queries(service, tmp_path):
    s, _, _, secret, mydb_table = service
    # Another user's MyDB table and any file by absolute path, by `..` from the request's
    # upload directory (a temporary directory under /tmp), or not there at all.
    forged = [f"stored:{secret}", f"stored:{mydb_table}", "stored:" + "../" * 12 + str(secret).lstrip("/"),
              f"stored:{tmp_path / 'missing.csv'}", "stored:upload-t.csv"]
    answers = []
    for value in forged:
        r = sync_upload(s.url, {"t": value})
        assert r.status_code == 400, (value, r.status_code, r.text)
        assert b"TOPSECRET" not in r.content and "source_id" not in r.text, value
        assert "no file part named" in r.text, r.text
        answers.append(r.text)
    # The answer is the same whether the path exists or not: it tells nothing about it.
    assert len(set(answers)) == 1
    # The same as a form field of a multipart request beside a real file part: the file is
    # read, not what the field names.
    r = sync_upload(s.url, {"t": f"stored:{secret}"}, files={"t": ("t.csv", b"a\n42\n")})
    assert r.status_code == 200, r.text
    assert r.text.split() == ["a", "42"]


def test_forged_stored_references_are_refused_in_async_jobs(service):
    s, _, _, secret, mydb_table = service
    # Beside the job directories: `..` from a job's own directory.
    beside = Path(s.jobs_dir) / "secret.csv"
    beside.write_bytes(SECRET)
    for value in ["stored:../secret.csv", f"stored:{secret}", f"stored:{mydb_table}", "stored:../../x.csv"]:
        r = requests.post(f"{s.url}/async", data={"QUERY": "SELECT * FROM TAP_UPLOAD.t", "UPLOAD": "t,param:t",
                                                  "t": value, "PHASE": "RUN", "RESPONSEFORMAT": "csv"},
                          timeout=60)
        assert r.status_code == 200, r.text
        job = r.url
        doc = requests.get(job, params={"WAIT": 30}, timeout=60).text
        assert "<uws:phase>ERROR</uws:phase>" in doc, doc
        assert "no file part named" in doc and "TOPSECRET" not in doc
        assert str(Path(s.jobs_dir)) not in doc
        assert requests.get(f"{job}/results/result", timeout=30).status_code == 404
    # Set on a pending job's parameters after its creation: the same.
    r = requests.post(f"{s.url}/async", data={"QUERY": "SELECT * FROM TAP_UPLOAD.t", "UPLOAD": "t,param:t"},
                      files={"t": ("t.csv", b"a\n1\n")}, timeout=60)
    job = r.url
    requests.post(f"{job}/parameters", data={"t": "stored:../secret.csv"}, timeout=30)
    requests.post(f"{job}/phase", data={"PHASE": "RUN"}, timeout=30)
    doc = requests.get(job, params={"WAIT": 30}, timeout=60).text
    assert "<uws:phase>ERROR</uws:phase>" in doc and "TOPSECRET" not in doc, doc


def test_a_fits_header_bomb_is_refused_quickly_and_small(service):
    s = service[0]
    bomb = fits_header_bomb()
    assert len(bomb) < 9000
    r = bounded(s, lambda: sync_upload(s.url, {}, files={"t": ("t.fits", bomb)}), max_seconds=30)
    assert r.status_code in (400, 413), r.text
    assert "only 2880 bytes follow" in r.text, r.text
    # Where the service keeps the file is not told.
    assert "upload-t" not in r.text and "/tmp" not in r.text
    # Compressed, its size is only known by reading: the upload limit refuses it at once.
    packed = zlib.compressobj(9, zlib.DEFLATED, 31)
    packed = packed.compress(bomb) + packed.flush()
    r = bounded(s, lambda: sync_upload(s.url, {}, files={"t": ("t.fits.gz", packed)}), max_seconds=30)
    assert r.status_code == 413, r.text
    assert "limit of 268435456 bytes" in r.text, r.text


def test_a_gzip_bomb_through_tap_upload(service, gzip_bomb):
    s = service[0]
    r = bounded(s, lambda: sync_upload(s.url, {}, files={"t": ("t.csv.gz", gzip_bomb)}))
    assert r.status_code in (400, 413), r.text
    assert "limit" in r.text and "QUERY_STATUS" in r.text, r.text
    # The service still answers, and ordinary gzip uploads still read.
    plain = zlib.compressobj(9, zlib.DEFLATED, 31)
    small = plain.compress(b"a,b\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(1000))) + plain.flush()
    r = requests.post(f"{s.url}/sync", data={"QUERY": "SELECT COUNT(*) AS n, SUM(b) AS s FROM TAP_UPLOAD.t",
                                             "UPLOAD": "t,param:t", "RESPONSEFORMAT": "csv"},
                      files={"t": ("t.csv.gz", small)}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.text.split()[1] == f"1000,{sum(i * i for i in range(1000))}"


def test_a_gzip_bomb_through_datalab_import(service, gzip_bomb):
    s, base, tokens, _, _ = service
    token = tokens["mallory"]
    r = requests.post(f"{base}/storage/xfer", data=gzip_bomb, headers={
        "X-DL-AuthToken": token, "X-DL-FileName": "bomb.csv.gz", "X-DL-InitXfer": "True",
        "Content-type": "application/octet-stream"}, timeout=60)
    assert r.status_code == 200, r.text
    r = bounded(s, lambda: requests.post(f"{base}/query/import", headers={"X-DL-AuthToken": token}, params={
        "table": "bomb", "delimiter": ",", "append": "False", "profile": "default", "csv_header": "True",
        "schema_def": "", "filename": "bomb.csv.gz"}, timeout=120))
    assert 400 <= r.status_code < 500, r.text
    assert "limit" in r.text or "bomb" in r.text, r.text
    r = requests.get(f"{base}/query/list", headers={"X-DL-AuthToken": token}, params={"table": ""}, timeout=30)
    assert "bomb" not in r.text


def create_job(url, data=b"a\n1\n"):
    return requests.post(f"{url}/async", data={"QUERY": "SELECT * FROM TAP_UPLOAD.t", "UPLOAD": "t,param:t"},
                         files={"t": ("t.csv", data)}, allow_redirects=False, timeout=60)


def test_pending_anonymous_jobs_are_capped(store):
    """120 anonymous jobs, never run, each with an upload: the first 100 (the default limit
    of unfinished jobs per client) are accepted, the rest refused with 429 and a DALI error;
    an anonymous job lives a day, not a week."""
    with Server(store) as s:
        answers = [create_job(s.url) for _ in range(120)]
        codes = [r.status_code for r in answers]
        assert codes == [303] * 100 + [429] * 20, codes
        refused = answers[-1]
        assert 'value="ERROR"' in refused.text and "too many unfinished jobs" in refused.text, refused.text
        jobs = [r.headers["Location"] for r in answers[:100]]
        # Nothing of a refused job is kept.
        assert len([p for p in Path(s.jobs_dir).iterdir() if p.is_dir()]) == 100
        # A day, not the week an owned job gets (and no more on request).
        assert requests.get(f"{jobs[0]}/destruction", timeout=30).text <= _in_days(1.01)
        requests.post(f"{jobs[0]}/destruction", data={"DESTRUCTION": "2099-01-01T00:00:00Z"}, timeout=30)
        assert requests.get(f"{jobs[0]}/destruction", timeout=30).text <= _in_days(1.01)
        # Deleting jobs makes room again.
        assert requests.delete(jobs[1], allow_redirects=False, timeout=30).status_code == 303
        assert create_job(s.url).status_code == 303
        assert create_job(s.url).status_code == 429


def test_uploads_kept_with_jobs_are_bounded(store):
    with Server(store, env={"MERIDIAN_JOBS__MAX_UPLOAD_MIB_PER_CLIENT": "1"}) as s:
        assert create_job(s.url, b"a\n" + b"1\n" * 300_000).status_code == 303
        r = create_job(s.url, b"a\n" + b"1\n" * 300_000)
        assert r.status_code == 413 and "limit of 1048576 bytes" in r.text, r.text
        assert len([p for p in Path(s.jobs_dir).iterdir() if p.is_dir()]) == 1


def _in_days(days):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + days * 86400))


def test_url_uploads_are_declared_and_guarded_by_default(tap, tmp_path):
    caps = requests.get(f"{tap}/capabilities", timeout=30).text
    assert "ivo://ivoa.net/std/TAPRegExt#upload-http" in caps
    # On by default, but never into this machine or its private network.
    r = requests.post(f"{tap}/sync", data={"QUERY": "SELECT * FROM TAP_UPLOAD.t",
                                           "UPLOAD": "t,http://127.0.0.1:9/t.vot"}, timeout=60)
    assert r.status_code == 400 and "private network" in r.text, r.text
