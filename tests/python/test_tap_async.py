"""TAP asynchronous queries (UWS 1.1) through pyvo and plain HTTP: the job lifecycle,
blocking WAIT, job list filters, 303 redirects, errors in the job's error summary, and
recovery after the server is killed."""

import os
import signal
import time
import xml.etree.ElementTree as ET

import pytest
import pyvo
import requests

from conftest import Server

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
CONE = ("SELECT source_id, ra, dec FROM gaia "
        "WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 56.75, 24.12, 2))")
# A query that runs for many seconds: a self cross join of the Gaia sample.
SLOW = "SELECT COUNT(*) AS n FROM gaia AS a, gaia AS b WHERE a.phot_g_mean_mag + b.phot_g_mean_mag > 1"


def job_doc(url, **params):
    r = requests.get(url, params=params, timeout=120)
    r.raise_for_status()
    return ET.fromstring(r.content)


def phase(url):
    return requests.get(url + "/phase", timeout=30).text.strip()


def test_pyvo_run_async_matches_sync(tap):
    svc = pyvo.dal.TAPService(tap)
    sync = svc.run_sync(CONE, maxrec=100_000).to_table()
    res = svc.run_async(CONE, maxrec=100_000).to_table()
    assert len(res) == len(sync) > 100
    assert sorted(res["source_id"]) == sorted(sync["source_id"])


def test_pyvo_job_lifecycle(tap):
    svc = pyvo.dal.TAPService(tap)
    job = svc.submit_job(CONE, maxrec=10, runid="lifecycle")
    assert job.phase == "PENDING"
    job.execution_duration = 120
    assert job.execution_duration.to_value("s") == 120
    job.run()
    job.wait(phases=["COMPLETED", "ERROR", "ABORTED"], timeout=60)
    assert job.phase == "COMPLETED"
    job.raise_if_error()
    # The MAXREC overflow is reported in the result of an async query too (pyvo warns
    # only when the cut is not at the MAXREC the client asked for).
    res = job.fetch_result()
    assert res.query_status == "OVERFLOW"
    assert len(res.to_table()) == 10
    url = job.url
    job.delete()
    assert requests.get(url, timeout=30).status_code == 404


def test_async_errors_land_in_the_error_summary(tap):
    svc = pyvo.dal.TAPService(tap)
    job = svc.submit_job("SELECT nosuchcolumn FROM gaia")
    job.run()
    job.wait(phases=["COMPLETED", "ERROR", "ABORTED"], timeout=60)
    assert job.phase == "ERROR"
    with pytest.raises(pyvo.dal.DALQueryError, match="nosuchcolumn"):
        job.raise_if_error()
    doc = job_doc(job.url)
    summary = doc.find(f"{UWS}errorSummary")
    assert summary.get("type") == "fatal"
    assert "nosuchcolumn" in summary.find(f"{UWS}message").text
    err = requests.get(job.url + "/error", timeout=30)
    assert err.status_code == 200 and "QUERY_STATUS" in err.text and "nosuchcolumn" in err.text
    job.delete()


def test_uws_rest_binding(tap):
    jobs = tap + "/async"
    r = requests.post(jobs, data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": CONE, "RUNID": "rest"},
                      allow_redirects=False, timeout=30)
    assert r.status_code == 303
    url = r.headers["Location"]
    assert url.startswith(jobs + "/")
    doc = job_doc(url)
    assert doc.find(f"{UWS}phase").text == "PENDING"
    assert doc.find(f"{UWS}runId").text == "rest"
    params = {p.get("id"): p.text for p in doc.iter(f"{UWS}parameter")}
    assert params["query"] == CONE and params["lang"] == "ADQL"
    # Parameters change while PENDING.
    r = requests.post(url + "/parameters", data={"MAXREC": "5"}, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["Location"] == url
    # Destruction and execution duration, each read back as plain text.
    r = requests.post(url + "/destruction", data={"DESTRUCTION": "2099-01-01T00:00:00Z"},
                      allow_redirects=False, timeout=30)
    assert r.status_code == 303
    # Bounded by the service's maximum lifetime.
    assert requests.get(url + "/destruction", timeout=30).text < "2099"
    requests.post(url + "/executionduration", data={"EXECUTIONDURATION": "60"}, timeout=30)
    assert requests.get(url + "/executionduration", timeout=30).text == "60"
    # Blocking WAIT on a PENDING job returns after the timeout, not at once nor never.
    t = time.time()
    assert job_doc(url, WAIT=1).find(f"{UWS}phase").text == "PENDING"
    assert 0.9 < time.time() - t < 5
    r = requests.post(url + "/phase", data={"PHASE": "RUN"}, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["Location"] == url
    doc = job_doc(url, WAIT=30)
    assert doc.find(f"{UWS}phase").text == "COMPLETED"
    result = doc.find(f"{UWS}results/{UWS}result")
    href = result.get("{http://www.w3.org/1999/xlink}href")
    body = requests.get(href, timeout=30)
    assert body.status_code == 200 and body.headers["Content-Type"].startswith("application/x-votable+xml")
    assert int(result.get("size")) == len(body.content)
    # A finished job cannot run again or change its parameters.
    assert requests.post(url + "/phase", data={"PHASE": "RUN"}, timeout=30).status_code == 400
    assert requests.post(url + "/parameters", data={"MAXREC": "1"}, timeout=30).status_code == 400
    assert requests.post(url + "/phase", data={"PHASE": "SUSPEND"}, timeout=30).status_code == 400
    # ACTION=DELETE redirects to the job list; the job is gone.
    r = requests.post(url, data={"ACTION": "DELETE"}, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["Location"] == jobs
    assert requests.get(url, timeout=30).status_code == 404
    assert requests.get(url + "/phase", timeout=30).status_code == 404


def test_abort_stops_an_executing_job(tap):
    jobs = tap + "/async"
    r = requests.post(jobs, data={"QUERY": SLOW, "PHASE": "RUN"}, allow_redirects=False, timeout=30)
    url = r.headers["Location"]
    doc = job_doc(url, WAIT=10, PHASE="QUEUED")
    assert doc.find(f"{UWS}phase").text == "EXECUTING"
    t = time.time()
    requests.post(url + "/phase", data={"PHASE": "ABORT"}, timeout=30)
    assert phase(url) == "ABORTED"
    assert time.time() - t < 3
    assert requests.get(url + "/results/result", timeout=30).status_code == 404
    r = requests.delete(url, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["Location"] == jobs


def test_execution_duration_stops_a_job(tap):
    svc = pyvo.dal.TAPService(tap)
    job = svc.submit_job(SLOW)
    job.execution_duration = 1
    job.run()
    job.wait(phases=["COMPLETED", "ERROR", "ABORTED"], timeout=60)
    assert job.phase == "ERROR"
    assert "execution duration of 1 s" in job_doc(job.url).find(f"{UWS}errorSummary/{UWS}message").text
    job.delete()


def test_job_list_filters(tap):
    jobs = tap + "/async"
    made = []
    for i in range(3):
        r = requests.post(jobs, data={"QUERY": "SELECT TOP 1 source_id FROM gaia", "RUNID": f"list{i}"},
                          allow_redirects=False, timeout=30)
        made.append(r.headers["Location"].rsplit("/", 1)[1])
        time.sleep(0.01)
    requests.post(f"{jobs}/{made[0]}/phase", data={"PHASE": "ABORT"}, timeout=30)

    def ids(**params):
        doc = job_doc(jobs, **params)
        return [j.get("id") for j in doc.findall(f"{UWS}jobref")]

    everything = ids()
    assert all(m in everything for m in made)
    pending = ids(PHASE="PENDING")
    assert made[1] in pending and made[2] in pending and made[0] not in pending
    assert made[0] in ids(PHASE=["PENDING", "ABORTED"])
    assert ids(LAST=2) == [made[2], made[1]]
    created = job_doc(f"{jobs}/{made[0]}").find(f"{UWS}creationTime").text
    after = ids(AFTER=created)
    assert made[0] not in after and made[1] in after
    assert requests.get(jobs, params={"PHASE": "SLEEPING"}, timeout=30).status_code == 400
    assert requests.get(jobs, params={"LAST": "-1"}, timeout=30).status_code == 400
    for m in made:
        requests.delete(f"{jobs}/{m}", timeout=30)


def test_jobs_survive_kill_9(store, tmp_path):
    """Queued, executing and completed jobs are all listed after a kill -9 and a restart:
    the completed result downloads intact, the interrupted job says ERROR with the reason,
    and the queued job runs."""
    env = {"MERIDIAN_JOBS__MAX_RUNNING": "1"}
    with Server(store, env=env, jobs_dir=tmp_path) as s:
        jobs = s.url + "/async"

        def submit(q):
            r = requests.post(jobs, data={"QUERY": q, "PHASE": "RUN", "RESPONSEFORMAT": "csv"},
                              allow_redirects=False, timeout=30)
            return r.headers["Location"].rsplit("/", 1)[1]

        done = submit(CONE)
        assert job_doc(f"{jobs}/{done}", WAIT=60).find(f"{UWS}phase").text == "COMPLETED"
        before = requests.get(f"{jobs}/{done}/results/result", timeout=30).content
        executing = submit(SLOW)
        job_doc(f"{jobs}/{executing}", WAIT=10, PHASE="QUEUED")
        queued = submit(CONE)
        assert phase(f"{jobs}/{executing}") == "EXECUTING"
        assert phase(f"{jobs}/{queued}") == "QUEUED"
        os.kill(s.proc.pid, signal.SIGKILL)
        s.proc.wait(timeout=30)
    with Server(store, env=env, jobs_dir=tmp_path) as s:
        jobs = s.url + "/async"
        listed = [j.get("id") for j in job_doc(jobs).findall(f"{UWS}jobref")]
        assert {done, executing, queued} <= set(listed)
        assert requests.get(f"{jobs}/{done}/results/result", timeout=30).content == before
        doc = job_doc(f"{jobs}/{executing}")
        assert doc.find(f"{UWS}phase").text == "ERROR"
        assert "service stopped" in doc.find(f"{UWS}errorSummary/{UWS}message").text
        assert job_doc(f"{jobs}/{queued}", WAIT=60).find(f"{UWS}phase").text == "COMPLETED"
        assert requests.get(f"{jobs}/{queued}/results/result", timeout=30).content == before
