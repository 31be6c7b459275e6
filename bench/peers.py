#!/usr/bin/env python3
"""Meridian against the systems astronomers use today, on the same data in the same run.

Peers so far: PostgreSQL 15 with Q3C (Data Lab's backend: a clustered Q3C index, as Q3C's
README prescribes). Each peer is installed from the package registries when missing,
loaded with the same synthetic survey, and given the same workloads; per-query answers are
compared, and any disagreement is reported loudly.

    python3 bench/peers.py                        # 10^6-row survey
    python3 bench/peers.py --rows 10000000

Workloads: cone searches at 1 arcsec, 1 arcmin and 0.5 deg at random centres (the same
centres for every system), each returning its rows to a client over a local socket:
Meridian's TAP sync endpoint over HTTP on loopback, PostgreSQL through psycopg on a Unix
socket. Load times are reported too. Results go to bench/results/peers-<time>.json.
"""

import argparse
import io
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from query import Meridian  # noqa: E402  (generation and ingest, shared with query.py)
from tap import Server  # noqa: E402  (a `meridian serve` on loopback)

RADII_DEG = {"1arcsec": 1 / 3600, "1arcmin": 1 / 60, "0.5deg": 0.5}


def run(*cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{(p.stderr or p.stdout)[-3000:]}")
    return p


def as_root(*cmd):
    return run(*cmd) if os.geteuid() == 0 else run("sudo", *cmd)


def ensure_apt(*packages):
    missing = [p for p in packages
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if missing:
        print(f"installing {' '.join(missing)} (apt)", flush=True)
        as_root("apt-get", "update", "-qq")
        as_root("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
                *missing)


def ensure_pip(module, requirement):
    try:
        __import__(module)
    except ImportError:
        print(f"installing {requirement} (pip)", flush=True)
        run(sys.executable, "-m", "pip", "install", "-q", requirement)


class PostgresQ3C:
    """A private PostgreSQL 15 cluster under the work directory, reached on a Unix socket."""

    BIN = Path("/usr/lib/postgresql/15/bin")

    def __init__(self, work):
        ensure_apt("postgresql-15", "postgresql-15-q3c")
        ensure_pip("psycopg", "psycopg[binary]")
        self.dir = work / "pg"
        self.sock = work / "pg-socket"
        fresh = not (self.dir / "PG_VERSION").exists()
        if fresh:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
        self.sock.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # the server refuses to run as root
            run("chown", "-R", "postgres:postgres", self.dir, self.sock)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        else:
            self.prefix = []
        if fresh:
            self.pg("initdb", "-D", self.dir, "-A", "trust", "-U", "postgres", "--no-sync")
        self.pg("pg_ctl", "-D", self.dir, "-l", self.dir / "server.log", "-w", "start", "-o",
                f"-k {self.sock} -c listen_addresses='' -c shared_buffers=1GB "
                f"-c work_mem=64MB -c max_parallel_workers_per_gather=2 -c fsync=off")
        import psycopg
        self.conn = psycopg.connect(host=str(self.sock), user="postgres", dbname="postgres",
                                    autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS q3c")

    def pg(self, tool, *args):
        return run(*self.prefix, self.BIN / tool, *args)

    def stop(self):
        self.conn.close()
        self.pg("pg_ctl", "-D", self.dir, "-m", "fast", "-w", "stop")

    def has(self, table):
        return self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]

    def load(self, table, parquet_files):
        """COPY the Parquet files in, then the clustered Q3C index Data Lab uses."""
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
        if self.has(table):
            return None
        schema = pq.read_schema(parquet_files[0])
        types = {"int64": "bigint", "int32": "integer", "int16": "smallint",
                 "double": "double precision", "float": "real", "bool": "boolean",
                 "string": "text", "large_string": "text"}
        cols = ", ".join(f'"{f.name.lower()}" {types[str(f.type)]}' for f in schema)
        t = time.time()
        self.conn.execute(f"CREATE TABLE {table} ({cols})")
        with self.conn.cursor() as cur:
            with cur.copy(f"COPY {table} FROM STDIN (FORMAT csv)") as copy:
                for path in parquet_files:
                    for batch in pq.ParquetFile(path).iter_batches(batch_size=200_000):
                        buf = io.BytesIO()
                        pacsv.write_csv(batch, buf,
                                        pacsv.WriteOptions(include_header=False))
                        copy.write(buf.getvalue())
        copy_s = time.time() - t
        self.conn.execute(f"CREATE INDEX {table}_q3c ON {table} (q3c_ang2ipix(ra, dec))")
        self.conn.execute(f"CLUSTER {table} USING {table}_q3c")
        self.conn.execute(f"ANALYZE {table}")
        return {"copy_s": round(copy_s, 2), "total_s": round(time.time() - t, 2)}

    def cone(self, table, ra, dec, r_deg):
        return self.conn.execute(
            f"SELECT * FROM {table} WHERE q3c_radial_query(ra, dec, %s, %s, %s)",
            (ra, dec, r_deg)).fetchall()


def tap_cone(server, catalog, ra, dec, r_deg):
    """Rows of one TAP sync cone (CSV), counted by the client."""
    q = (f"SELECT * FROM {catalog} WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
         f"CIRCLE('ICRS', {ra!r}, {dec!r}, {r_deg!r}))")
    url = (f"http://{server.host}:{server.port}/tap/sync?"
           + urllib.parse.urlencode({"LANG": "ADQL", "QUERY": q, "FORMAT": "csv",
                                     "MAXREC": 100_000_000}))
    with urllib.request.urlopen(url) as r:
        body = r.read()
    return body.count(b"\n") - 1  # minus the header line


def centres(n, seed):
    rng = random.Random(seed)
    return [(rng.uniform(0, 360), math.degrees(math.asin(rng.uniform(-1, 1))))
            for _ in range(n)]


def summary(times_s):
    ms = sorted(t * 1e3 for t in times_s)
    return {"p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cones", type=int, default=200, help="measured cones per radius")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/meridian-bench-peers"))
    ap.add_argument("--meridian", default=str(ROOT / "target/release/meridian"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    name = f"object_{args.rows}"

    m = Meridian(args.meridian, args.work / "data")
    t = time.time()
    m.catalog(name, args.rows, args.seed, args.work, keep_input=True)
    inputs = sorted((args.work / f"input-{name}").glob("object*.parquet"))
    loads = {"meridian_s": round(time.time() - t, 2)}

    pg = PostgresQ3C(args.work)
    loaded = pg.load(name, inputs)
    if loaded:
        loads["postgres_q3c"] = loaded
    print(f"load: {loads}", flush=True)

    results = []
    disagreements = []
    server = Server(args.meridian, args.work / "data", {"RUST_LOG": "warn"})
    try:
        for label, r in RADII_DEG.items():
            pts = centres(args.warmup + args.cones, args.seed)
            times = {"meridian": [], "postgres_q3c": []}
            for i, (ra, dec) in enumerate(pts):
                t0 = time.perf_counter()
                n_m = tap_cone(server, name, ra, dec, r)
                t1 = time.perf_counter()
                n_p = len(pg.cone(name, ra, dec, r))
                t2 = time.perf_counter()
                if n_m != n_p:
                    disagreements.append({"workload": f"cone {label}", "ra": ra, "dec": dec,
                                          "meridian": n_m, "postgres_q3c": n_p})
                if i >= args.warmup:
                    times["meridian"].append(t1 - t0)
                    times["postgres_q3c"].append(t2 - t1)
            row = {"workload": f"cone {label}",
                   "meridian": summary(times["meridian"]),
                   "postgres_q3c": summary(times["postgres_q3c"])}
            row["ratio_p50"] = round(row["postgres_q3c"]["p50_ms"] / row["meridian"]["p50_ms"], 2)
            print(json.dumps(row), flush=True)
            results.append(row)
    finally:
        server.stop()
        pg.stop()
    if disagreements:
        print(f"DISAGREEMENT in {len(disagreements)} answers, first: {disagreements[0]}",
              flush=True)
    out = ROOT / "bench/results" / time.strftime("peers-%Y%m%dT%H%M%SZ.json", time.gmtime())
    out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": args.rows, "loads": loads, "results": results,
        "disagreements": disagreements}, indent=1))
    print(f"results: {out}")
    sys.exit(1 if disagreements else 0)


if __name__ == "__main__":
    main()
