#!/usr/bin/env python3
"""The cost of distribution: the same queries run embedded, on a 1-executor and on a
2-executor Ballista cluster (scheduler and executors started from the binary on loopback),
on the synthetic survey; results are compared and times reported as ratios to embedded.

Workloads, each timed --repeat times after a warm-up (median):
- a full-scan aggregation (count and mean g, r, i per 1-degree declination band);
- a selective scan (rows with g_mag < 17.7, about 0.1%);
- cone searches at 1 arcmin (--cones random centres, one `meridian query` each);
- the cross-match at 1 arcsec of an n-row catalog with a second epoch of it (300 mas
  scatter), every pair, written as Parquet.

    python3 bench/cluster.py                               # 10^8 rows, cross-match 10^7 x 10^7
    python3 bench/cluster.py --rows 10000000 --xmatch 1000000   # a shorter run

Inputs are generated and ingested once under --work and reused. The JSON written under
bench/results/ also holds the per-partition costs that bench/README's projection uses.
"""

import argparse
import json
import math
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query import ROOT, Meridian, meridian_binary  # noqa: E402


class Cluster:
    """A scheduler and `executors` executors of `binary` on loopback."""

    def __init__(self, binary, data, executors, slots):
        self.procs = []
        p = subprocess.Popen([binary, "--data-dir", data, "cluster", "scheduler", "--bind", "127.0.0.1:0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        self.url = None
        deadline = time.time() + 60
        while self.url is None and time.time() < deadline:
            m = re.search(r"Cluster scheduler: (df://\S+)", p.stderr.readline())
            if m:
                self.url = m.group(1)
        if not self.url:
            self.close()
            sys.exit("the scheduler did not start")
        threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
        for i in range(executors):
            self.procs.append(subprocess.Popen(
                [binary, "--data-dir", data, "cluster", "executor", "--scheduler", self.url,
                 "--concurrent-tasks", str(slots), "--id", f"bench-{i}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 60
        while True:
            p = subprocess.run([binary, "cluster", "status", "--scheduler", self.url, "--json"],
                               capture_output=True, text=True)
            if p.returncode == 0 and len(json.loads(p.stdout)) == executors:
                break
            if time.time() > deadline:
                self.close()
                sys.exit("the executors did not register")
            time.sleep(0.3)

    def close(self):
        for p in self.procs:
            p.send_signal(signal.SIGKILL)
            p.wait()


def timed(m, env, *args):
    """Runs `meridian *args` with `env`; returns (seconds, stderr)."""
    t = time.time()
    p = subprocess.run([m.binary, "--quiet", "--data-dir", m.data, *map(str, args)], capture_output=True,
                       text=True, env={**os.environ, **env})
    if p.returncode != 0:
        sys.exit(f"failed: meridian {' '.join(map(str, args))}\n{p.stderr[-3000:]}")
    return time.time() - t, p.stderr


def query(m, env, sql, out):
    """A query written as Parquet: (wall seconds, the rows)."""
    s, _ = timed(m, env, "query", "--lang", "sql", sql, "--format", "parquet", "--out", out)
    import pyarrow.parquet as pq
    t = pq.read_table(out)
    rows = sorted(tuple(r.values()) for r in t.to_pylist())
    return s, rows


def workloads(name, cones, seed=5):
    rnd = random.Random(seed)
    scan = (f"SELECT CAST(FLOOR(dec) AS INT) AS band, COUNT(*) AS n, AVG(g_mag) AS g, AVG(r_mag) AS r, "
            f"AVG(i_mag) AS i FROM {name} GROUP BY CAST(FLOOR(dec) AS INT)")
    sel = f'SELECT "objectId", ra, dec, g_mag FROM {name} WHERE g_mag < 17.7'
    out = []
    out.append(("full-scan aggregation", [scan]))
    out.append(("selective scan (g < 17.7)", [sel]))
    # Centres uniform on the sphere.
    centres = [(rnd.uniform(0, 360), 90 - math.degrees(math.acos(rnd.uniform(-1, 1)))) for _ in range(cones)]
    out.append((f"cone 1 arcmin ({cones} centres)",
                [f"SELECT \"objectId\", ra, dec FROM {name} WHERE q3c_radial_query(ra, dec, {ra:.6f}, {dec:.6f}, "
                 f"{1 / 60})" for ra, dec in centres]))
    return out


def round_rows(rows):
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000_000, help="rows of the scanned catalog")
    ap.add_argument("--xmatch", type=int, default=10_000_000, help="rows of each cross-matched catalog")
    ap.add_argument("--cones", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/meridian-bench-cluster"))
    ap.add_argument("--meridian", default=None, help="meridian binary (default: build release)")
    args = ap.parse_args()
    binary = meridian_binary(args.meridian)
    args.work.mkdir(parents=True, exist_ok=True)
    m = Meridian(binary, args.work / "data")
    name = f"object_{args.rows}"
    print("inputs", flush=True)
    m.catalog(name, args.rows, 7, args.work)
    xa, xb = f"xa_{args.xmatch}", f"xb_{args.xmatch}"
    m.catalog(xa, args.xmatch, 11, args.work)
    m.catalog(xb, args.xmatch, 11, args.work, jitter_mas=300.0)
    partitions = len(list((m.data / "catalogs" / name / name / "dataset").rglob("*.parquet")))
    cores = os.cpu_count()
    setups = [("embedded", None), ("1 executor", 1), ("2 executors", 2)]
    results = {}
    answers = {}
    for label, executors in setups:
        cluster = None
        env = {}
        if executors:
            cluster = Cluster(binary, m.data, executors, max(1, cores // executors))
            env = {"MERIDIAN_CLUSTER__SCHEDULER": cluster.url, "MERIDIAN_CLUSTER__REQUIRED": "true"}
        print(label, flush=True)
        try:
            for wl, sqls in workloads(name, args.cones):
                times = []
                rows = []
                for rep in range(args.repeat + 1):
                    t = 0.0
                    rows = []
                    for sql in sqls:
                        s, r = query(m, env, sql, args.work / "out.parquet")
                        t += s
                        rows.append(round_rows(r))
                    if rep > 0:
                        times.append(t / len(sqls))
                med = statistics.median(times)
                results.setdefault(wl, {})[label] = {"median_s": round(med, 4), "runs": [round(x, 4) for x in times]}
                answers.setdefault(wl, {})[label] = rows
                print(f"  {wl}: {med:.3f} s", flush=True)
            wl = f"cross-match {args.xmatch:,} x {args.xmatch:,} at 1 arcsec, all pairs"
            times = []
            import pyarrow.parquet as pq
            for rep in range(args.repeat):
                s, _ = timed(m, env, "xmatch", xa, xb, "--radius", "1arcsec", "--all", "--format", "parquet",
                             "--out", args.work / "pairs.parquet")
                times.append(s)
            pairs = pq.read_table(args.work / "pairs.parquet", columns=["id1", "id2"])
            key = sorted(zip(pairs["id1"].to_pylist(), pairs["id2"].to_pylist()))
            med = statistics.median(times)
            results.setdefault(wl, {})[label] = {"median_s": round(med, 4), "runs": [round(x, 4) for x in times],
                                                 "pairs": len(key)}
            answers.setdefault(wl, {})[label] = hash(tuple(key))
            print(f"  {wl}: {med:.3f} s, {len(key):,} pairs", flush=True)
        finally:
            if cluster:
                cluster.close()
    agree = {wl: len({json.dumps(v) if not isinstance(v, int) else v for v in a.values()}) == 1
             for wl, a in answers.items()}
    print("\n| workload | embedded | 1 executor | 2 executors | same answers |\n|---|---|---|---|---|")
    for wl, r in results.items():
        e = r["embedded"]["median_s"]
        cells = [f"{e:.3f} s"] + [f"{r[k]['median_s']:.3f} s ({r[k]['median_s'] / e:.2f}x)" for k in ("1 executor", "2 executors")]
        print(f"| {wl} | {' | '.join(cells)} | {'yes' if agree[wl] else 'NO'} |")
    scan = results["full-scan aggregation"]["2 executors"]["median_s"]
    per_partition = {"partitions": partitions, "rows": args.rows,
                     "scan_s_per_partition_task": round(scan * cores / partitions, 5),
                     "scan_ns_per_row_per_core": round(scan * cores / args.rows * 1e9, 2),
                     "cone_overhead_s": round(results[f"cone 1 arcmin ({args.cones} centres)"]["2 executors"]["median_s"]
                                              - results[f"cone 1 arcmin ({args.cones} centres)"]["embedded"]["median_s"], 4)}
    machine = {"cpus": cores, "platform": platform.platform(), "python": platform.python_version(),
               "binary": binary}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"cluster-{stamp}.json").write_text(json.dumps(
        {"machine": machine, "rows": args.rows, "xmatch": args.xmatch, "results": results, "agree": agree,
         "per_partition": per_partition}, indent=2))
    print(f"written bench/results/cluster-{stamp}.json")
    if not all(agree.values()):
        sys.exit("!!! DISAGREEMENT between embedded and cluster answers")


if __name__ == "__main__":
    main()
