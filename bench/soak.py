#!/usr/bin/env python3
"""Soak test: `meridian serve` under a steady mixed load for a fixed time, then checked.

Many clients (threads, each a user with a token) run a mix of what users do, at a fixed
share of the service's measured capacity: cone searches, catalog scans, asynchronous jobs
with an inline table upload (submitted, polled, read, destroyed), MyDB saves (and drops),
storage puts, gets and removals, logins, and VOSpace calls (containers made, listed and
removed). A sampler reads the server's RSS, open file descriptors and disk use every few
seconds. It stops by itself and reports:

- errors (any answer that is not the expected one): must be 0;
- latency p50/p99 per operation, and p99 per time window (stable: the last third against
  the first);
- RSS and open descriptors over time (flat: the last third against the first);
- disk use of the data and job directories against the baseline once the jobs are gone.

    python3 bench/soak.py --binary target/release/meridian --minutes 30

The capacity is measured first (all clients as fast as they can, 20 s); the soak then runs
at `--load` (0.8) of it. Results: bench/results/soak-<time>.json and .svg.
"""

import argparse
import io
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# Operation mix: name -> weight.
MIX = {"cone": 30, "scan": 4, "async_upload": 8, "mydb": 8, "storage": 15, "login": 10,
       "vospace": 25}


def run(binary, data, *args, env=None, input=None):
    p = subprocess.run([binary, "--quiet", "--data-dir", str(data), *map(str, args)],
                       capture_output=True, text=True, input=input,
                       env={**os.environ, **(env or {})})
    if p.returncode != 0:
        sys.exit(f"meridian {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p


class Server:
    def __init__(self, binary, data, env, jobs, log):
        self.log = open(log, "w+")
        quotas = {f"MERIDIAN_QUOTAS__{k}": "0" for k in
                  ("REQUESTS_PER_MINUTE", "CONCURRENT_QUERIES", "RESULT_MIB_PER_DAY",
                   "UPLOADS_PER_HOUR")}
        self.proc = subprocess.Popen(
            [binary, "--data-dir", str(data), "serve", "--addr", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, **env, **quotas, "MERIDIAN_JOBS__DIR": str(jobs),
                 # Destroyed jobs' files go at once; the sweep runs often.
                 "MERIDIAN_JOBS__SWEEP_INTERVAL_S": "5"})
        deadline = time.time() + 120
        self.url = None
        while time.time() < deadline and self.url is None:
            time.sleep(0.2)
            m = re.search(r"TAP service: (http://\S+)/tap", Path(self.log.name).read_text())
            if m:
                self.url = m.group(1)
        if self.url is None:
            sys.exit("meridian serve did not start:\n" + Path(self.log.name).read_text()[-2000:])

    def sample(self):
        pid = self.proc.pid
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def sqlite_bytes(path):
    """Bytes of the pages a SQLite database uses (free pages and its write-ahead log left
    out): what its rows take, however far a checkpoint or a vacuum has got. Meridian gives
    free pages back after each job sweep (tested in the jobs store)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        pages, free, size = (db.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
    finally:
        db.close()
    return (pages - free) * size


def du(*paths):
    """Bytes on disk under `paths`; SQLite databases by the pages they use (a WAL file
    keeps the size of its largest transaction batch until a checkpoint truncates it, a
    bounded cost that is not what users left)."""
    total = 0
    for root in paths:
        for dirpath, _, files in os.walk(root):
            for f in files:
                if f.endswith(("-wal", "-shm")):
                    continue
                path = os.path.join(dirpath, f)
                try:
                    if f.endswith(".sqlite"):
                        total += sqlite_bytes(path)
                    else:
                        total += os.lstat(path).st_blocks * 512
                except (OSError, sqlite3.Error):
                    pass
    return total


def votable(n, rng):
    rows = "".join(f"<TR><TD>{i}</TD><TD>{rng.uniform(0, 360):.5f}</TD>"
                   f"<TD>{rng.uniform(-60, 60):.5f}</TD></TR>" for i in range(n))
    return ('<?xml version="1.0"?><VOTABLE version="1.4" '
            'xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE><TABLE>'
            '<FIELD name="id" datatype="long"/><FIELD name="ra" datatype="double" unit="deg"/>'
            '<FIELD name="dec" datatype="double" unit="deg"/>'
            f"<DATA><TABLEDATA>{rows}</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>")


class Client:
    """One user: a session with their token, and the operations of the mix."""

    def __init__(self, base, name, password, seed):
        self.base, self.name, self.password = base, name, password
        self.rng = random.Random(seed)
        self.s = requests.Session()
        r = self.s.post(f"{base}/api/auth/login", data={"username": name, "password": password})
        r.raise_for_status()
        self.s.headers["X-DL-AuthToken"] = r.json()["token"]
        self.n = 0

    def expect(self, r, *codes):
        if r.status_code not in codes:
            raise RuntimeError(f"{r.request.method} {r.url.split('?')[0]}: {r.status_code} "
                               f"{r.text[:200]!r}")
        return r

    def tap(self, query):
        return self.expect(self.s.post(f"{self.base}/tap/sync", data={
            "REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "csv", "QUERY": query}), 200)

    def cone(self):
        ra, dec = self.rng.uniform(0, 360), self.rng.uniform(-80, 80)
        self.tap(f"SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia WHERE "
                 f"1 = CONTAINS(POINT(ra, dec), CIRCLE({ra:.4f}, {dec:.4f}, 0.5))")

    def scan(self):
        mag = self.rng.uniform(4, 12)
        self.tap(f"SELECT COUNT(*) AS n, AVG(ra) AS mean_ra FROM gaia WHERE phot_g_mean_mag < {mag:.2f}")

    def async_upload(self):
        r = self.expect(self.s.post(f"{self.base}/tap/async", data={
            "REQUEST": "doQuery", "LANG": "ADQL", "PHASE": "RUN", "UPLOAD": "mine,param:t",
            "QUERY": "SELECT m.id, g.source_id FROM TAP_UPLOAD.mine AS m JOIN gaia AS g ON "
                     "1 = CONTAINS(POINT(g.ra, g.dec), CIRCLE(m.ra, m.dec, 0.1))"},
            files={"t": ("t.vot", votable(50, self.rng), "application/x-votable+xml")},
            allow_redirects=False), 303)
        job = r.headers["Location"]
        deadline = time.time() + 120
        while True:
            phase = self.expect(self.s.get(f"{job}/phase"), 200).text.strip()
            if phase == "COMPLETED":
                break
            if phase in ("ERROR", "ABORTED") or time.time() > deadline:
                raise RuntimeError(f"async job {job}: {phase}")
            time.sleep(0.1)
        self.expect(self.s.get(f"{job}/results/result"), 200)
        self.expect(self.s.delete(job, allow_redirects=False), 303, 200)

    def mydb(self):
        self.n += 1
        table = f"t{self.n % 3}"
        ra = self.rng.uniform(0, 360)
        r = self.expect(self.s.get(f"{self.base}/query/query", params={
            "sql": f"SELECT source_id, ra, dec FROM gaia WHERE q3c_radial_query(ra, dec, {ra:.3f}, 0, 2)",
            "out": f"mydb://{table}", "drop": "True", "ofmt": "csv"}), 200)
        if not r.text.startswith("OK"):
            raise RuntimeError(f"MyDB save: {r.text[:200]!r}")
        self.expect(self.s.get(f"{self.base}/query/query", params={
            "sql": f"SELECT COUNT(*) FROM mydb://{table}", "ofmt": "csv"}), 200)
        if self.n % 3 == 2:
            self.expect(self.s.get(f"{self.base}/query/delete", params={"table": table}), 200)

    def storage(self):
        self.n += 1
        name = f"vos://soak{self.n % 4}.bin"
        data = os.urandom(self.rng.randint(1 << 10, 256 << 10))
        ticket = self.expect(self.s.get(f"{self.base}/storage/put", params={"name": name}), 200)
        self.expect(requests.put(ticket.text, data=data), 200, 201)
        ticket = self.expect(self.s.get(f"{self.base}/storage/get", params={"name": name}), 200)
        got = self.expect(requests.get(ticket.text), 200).content
        if got != data:
            raise RuntimeError(f"storage get of {name}: other bytes than were put")
        if self.n % 4 == 3:
            self.expect(self.s.get(f"{self.base}/storage/rm", params={"file": name}), 200, 204)

    def login(self):
        r = self.expect(requests.post(f"{self.base}/api/auth/login", data={
            "username": self.name, "password": self.password}), 200)
        token = r.json()["token"]
        self.expect(requests.get(f"{self.base}/api/auth/whoami",
                                 headers={"Authorization": f"Bearer {token}"}), 200)
        self.expect(requests.post(f"{self.base}/api/auth/logout",
                                 headers={"Authorization": f"Bearer {token}"}), 200, 204)

    def vospace(self):
        self.n += 1
        vos = "http://www.ivoa.net/xml/VOSpace/v2.0"
        xsi = "http://www.w3.org/2001/XMLSchema-instance"
        path = f"{self.name}/soak{self.n % 5}"
        doc = (f'<vos:node xmlns:vos="{vos}" xmlns:xsi="{xsi}" xsi:type="vos:ContainerNode" '
               f'uri="vos://meridian!vospace/{path}"/>')
        h = {"Content-Type": "text/xml"}
        self.expect(self.s.put(f"{self.base}/vospace/nodes/{path}", data=doc, headers=h),
                    200, 201, 409)
        self.expect(self.s.get(f"{self.base}/vospace/nodes/{self.name}",
                               params={"detail": "min"}), 200)
        self.expect(self.s.delete(f"{self.base}/vospace/nodes/{path}"), 200, 204)


class Load:
    """Clients drawing operations from the mix, paced to `rate` operations a second in all
    (none: as fast as they go)."""

    def __init__(self, clients, seconds, rate):
        self.clients, self.seconds, self.rate = clients, seconds, rate
        self.records = []  # (t, op, ms, error)
        self.lock = threading.Lock()

    def worker(self, c, start, stop_at):
        ops, weights = zip(*MIX.items())
        k = 0
        interval = len(self.clients) / self.rate if self.rate else 0
        while True:
            if interval:
                due = start + k * interval + c.rng.uniform(0, interval)
                if due > stop_at:
                    break
                time.sleep(max(0, due - time.time()))
            elif time.time() > stop_at:
                break
            k += 1
            op = c.rng.choices(ops, weights)[0]
            t0 = time.time()
            error = None
            try:
                getattr(c, op)()
            except Exception as e:  # noqa: BLE001 - every failure counts
                error = str(e)[:300]
            with self.lock:
                self.records.append((t0 - start, op, (time.time() - t0) * 1e3, error))

    def run(self):
        start = time.time()
        stop_at = start + self.seconds
        threads = [threading.Thread(target=self.worker, args=(c, start, stop_at))
                   for c in self.clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.time() - start


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def svg(path, title_series):
    """A small SVG of several series, one panel each: (title, unit, [(x, y)])."""
    w, h, pad = 720, 170, 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" '
           f'height="{h * len(title_series)}" font-family="sans-serif" font-size="11">']
    for i, (title, unit, pts) in enumerate(title_series):
        y0 = i * h
        out.append(f'<text x="{pad}" y="{y0 + 14}">{title} ({unit})</text>')
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        xmax, ymax = max(xs) or 1, max(ys) * 1.1 or 1
        sx = lambda x: pad + (w - 2 * pad) * x / xmax
        sy = lambda y: y0 + h - 20 - (h - 45) * y / ymax
        out.append(f'<line x1="{pad}" y1="{sy(0)}" x2="{w - pad}" y2="{sy(0)}" stroke="#888"/>')
        out.append(f'<text x="{pad - 4}" y="{sy(ymax) + 4}" text-anchor="end">{ymax:.3g}</text>')
        out.append(f'<text x="{w - pad}" y="{sy(0) + 14}" text-anchor="end">{xmax:.0f} s</text>')
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="#2a6" stroke-width="1.5" points="{line}"/>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=str(ROOT / "target/release/meridian"))
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--load", type=float, default=0.8, help="share of the measured capacity")
    ap.add_argument("--calibrate-seconds", type=float, default=20)
    ap.add_argument("--window", type=float, default=60, help="seconds per p99 window")
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="meridian-soak-"))
    data, jobs = work / "data", work / "jobs"
    jobs.mkdir()
    env = {"MERIDIAN_AUTH__DB": str(work / "accounts.sqlite"),
           "MERIDIAN_STORAGE__DB": str(work / "storage.sqlite"),
           "MERIDIAN_STORAGE__DIR": str(work / "bytes"),
           "MERIDIAN_MYDB__DIR": str(work / "mydb")}
    print(f"ingesting gaia into {data}", file=sys.stderr)
    run(args.binary, data, "ingest", "gaia", SHARED / "catalogs/gaia_dr3_bright.csv.gz",
        "--partition-rows", 20000, env=env)
    users = [f"soak{i}" for i in range(args.clients)]
    for u in users:
        run(args.binary, data, "user", "add", u, env=env, input=f"{u}-password\n")
    server = Server(args.binary, data, env, jobs, work / "server.log")
    personal = [work / "bytes", work / "mydb", jobs]
    samples = []  # (t, rss, fds, disk)
    stop = threading.Event()
    t_start = time.time()

    def sampler():
        while not stop.is_set():
            rss, fds = server.sample()
            samples.append((time.time() - t_start, rss, fds, du(*personal)))
            stop.wait(5)

    try:
        clients = [Client(server.url, u, f"{u}-password", i) for i, u in enumerate(users)]
        baseline_disk = du(*personal)
        calib = Load(clients, args.calibrate_seconds, None)
        took = calib.run()
        capacity = len(calib.records) / took
        calib_errors = [r for r in calib.records if r[3]]
        rate = capacity * args.load
        print(f"capacity {capacity:.1f} operations/s; soak at {rate:.1f}/s for "
              f"{args.minutes} min", file=sys.stderr)
        threading.Thread(target=sampler, daemon=True).start()
        t_start = time.time()
        load = Load(clients, args.minutes * 60, rate)
        took = load.run()
        stop.set()
        # Jobs are destroyed by their clients; storage and MyDB keep what users keep, so
        # the baseline is compared after removing what the soak made.
        for c in clients:
            for i in range(4):
                c.s.get(f"{server.url}/storage/rm", params={"file": f"vos://soak{i}.bin"})
            for i in range(3):
                c.s.get(f"{server.url}/query/delete", params={"table": f"t{i}"})
        time.sleep(12)  # a sweep
        final_disk = du(*personal)
        rss_end, fds_end = server.sample()
    finally:
        stop.set()
        server.stop()

    recs = load.records
    errors = [r for r in recs if r[3]]
    by_op = {}
    for _, op, ms, err in recs:
        if not err:
            by_op.setdefault(op, []).append(ms)
    windows = []
    w = 0.0
    while w < took:
        xs = [ms for t, _, ms, err in recs if w <= t < w + args.window and not err]
        if xs:
            windows.append({"start_s": w, "operations": len(xs), "p50_ms": pct(xs, 0.5),
                            "p99_ms": pct(xs, 0.99)})
        w += args.window
    third = max(1, len(windows) // 3)
    p99_first = statistics.median(x["p99_ms"] for x in windows[:third])
    p99_last = statistics.median(x["p99_ms"] for x in windows[-third:])
    s_third = max(1, len(samples) // 3)
    rss_first = statistics.median(s[1] for s in samples[:s_third])
    rss_last = statistics.median(s[1] for s in samples[-s_third:])
    fds_first = statistics.median(s[2] for s in samples[:s_third])
    fds_last = statistics.median(s[2] for s in samples[-s_third:])
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "binary": args.binary, "clients": args.clients, "minutes": args.minutes,
        "mix": MIX, "capacity_ops_per_s": capacity, "calibration_errors": len(calib_errors),
        "target_ops_per_s": rate, "achieved_ops_per_s": len(recs) / took,
        "operations": len(recs), "errors": len(errors), "first_errors": errors[:10],
        "latency_ms": {op: {"n": len(xs), "p50": pct(xs, 0.5), "p99": pct(xs, 0.99)}
                       for op, xs in sorted(by_op.items())},
        "p99_windows": windows, "p99_first_third_ms": p99_first, "p99_last_third_ms": p99_last,
        "rss_first_third_mb": rss_first / 2**20, "rss_last_third_mb": rss_last / 2**20,
        "rss_end_mb": rss_end / 2**20,
        "fds_first_third": fds_first, "fds_last_third": fds_last, "fds_end": fds_end,
        "disk_baseline_bytes": baseline_disk, "disk_final_bytes": final_disk,
        "samples": [{"t_s": t, "rss_mb": r / 2**20, "fds": f, "disk_mb": d / 2**20}
                    for t, r, f, d in samples],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"soak-{stamp}.json").write_text(json.dumps(result, indent=1))
    svg(out / f"soak-{stamp}.svg", [
        ("p99 latency per window", "ms", [(x["start_s"], x["p99_ms"]) for x in windows]),
        ("server RSS", "MB", [(s[0], s[1] / 2**20) for s in samples]),
        ("open file descriptors", "count", [(s[0], s[2]) for s in samples]),
        ("disk use of files, tables and jobs", "MB", [(s[0], s[3] / 2**20) for s in samples]),
    ])
    summary = {k: result[k] for k in (
        "operations", "errors", "capacity_ops_per_s", "achieved_ops_per_s",
        "p99_first_third_ms", "p99_last_third_ms", "rss_first_third_mb", "rss_last_third_mb",
        "fds_first_third", "fds_last_third", "disk_baseline_bytes", "disk_final_bytes")}
    print(json.dumps(summary, indent=1))
    print(f"results: {out / f'soak-{stamp}.json'}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
