#!/usr/bin/env python3
"""Query benchmarks on Meridian's synthetic survey, release build, one run:

- cone search latency (p50, p99) at 1 arcsec, 1 arcmin and 0.5 deg, random centres, measured
  in one process with warm caches (`meridian bench cone`), through the whole ADQL path;
- cross-match at 1 arcsec of n x n rows (a catalog and a second epoch of it with 300 mas
  scatter), all pairs, written as Parquet: input rows per second, and at the smallest size
  the pair count against astropy's search_around_sky;
- a full-scan aggregation (count and mean magnitudes per HEALPix order-5 cell) against
  DuckDB reading the same Parquet files, with the answers compared.

    python3 bench/query.py                       # 10^7-row catalog, cross-match 10^6 and 10^7
    python3 bench/query.py --rows 100000000      # the 10^8-row catalog

Inputs are generated and ingested once under --work and reused by later runs.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELL5 = 4 ** 24  # order-29 cells per order-5 cell


def sh(*cmd, capture=True):
    p = subprocess.run([str(c) for c in cmd], capture_output=capture, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{(p.stderr or '')[-3000:]}")
    return p


def meridian_binary(given):
    """`given`, or the release binary, built now."""
    if given is not None:
        return given
    sh("cargo", "build", "--release", "-q", "-p", "meridian", capture=False)
    return str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "meridian")


class Meridian:
    def __init__(self, binary, data):
        self.binary, self.data = binary, data

    def __call__(self, *args):
        return sh(self.binary, "--quiet", "--data-dir", self.data, *args)

    def has(self, name):
        return name in self("catalogs").stdout.split()

    def catalog(self, name, rows, seed, work, jitter_mas=0.0, keep_input=False):
        """Generates (narrow profile, Parquet) and ingests a synthetic Object table once;
        `keep_input` leaves the generated Parquet files under `work` for other systems.
        Returns the ingest time in seconds, or None when the catalog was there already."""
        if self.has(name) and (not keep_input or (work / f"input-{name}").is_dir()):
            return None
        src = work / f"input-{name}"
        shutil.rmtree(src, ignore_errors=True)
        t = time.time()
        self("generate", "--out", src, "--objects", rows, "--seed", seed, "--profile", "narrow",
             "--position-jitter-mas", jitter_mas)
        gen_s = time.time() - t
        t = time.time()
        self("ingest", name, *sorted(src.glob("object*.parquet")))
        ingest_s = time.time() - t
        print(f"  {name}: {rows:,} rows generated in {gen_s:.1f} s, ingested in {ingest_s:.1f} s", flush=True)
        if not keep_input:
            shutil.rmtree(src)
        return ingest_s

    def query_ms(self, sql, out):
        p = self("query", "--lang", "sql", sql, "--format", "parquet", "--out", out)
        return float(re.search(r"rows in ([\d.]+) ms", p.stderr).group(1))


def cone(m, name, reps):
    res = []
    for radius in ["1arcsec", "1arcmin", "0.5deg"]:
        r = json.loads(m("bench", "cone", name, "--radius", radius, "--queries", reps).stdout)
        print(f"  cone {radius:>8}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['mean_rows']:.1f} rows", flush=True)
        res.append({"workload": f"cone search r={radius} ({reps} random centres, warm)", "meridian_p50_ms": round(r["p50_ms"], 3),
                    "meridian_p99_ms": round(r["p99_ms"], 3), "mean_rows": r["mean_rows"]})
    return res


def xmatch(m, n, work, check):
    a, b = f"xa_{n}", f"xb_{n}"
    m.catalog(a, n, 11, work)
    m.catalog(b, n, 11, work, jitter_mas=300.0)
    out = work / "pairs.parquet"
    times = []
    for _ in range(3):
        t = time.time()
        m("xmatch", a, b, "--radius", "1arcsec", "--all", "--format", "parquet", "--out", out)
        times.append(time.time() - t)
    import pyarrow.parquet as pq
    pairs = pq.read_metadata(out).num_rows
    med = statistics.median(times)
    row = {"workload": f"cross-match {n:,} x {n:,} at 1 arcsec, all pairs", "meridian_s": round(med, 3),
           "spread_s": [round(min(times), 3), round(max(times), 3)], "input_rows_per_s": round(2 * n / med),
           "pairs": pairs}
    if check:
        from astropy import units as u
        from astropy.coordinates import SkyCoord, search_around_sky
        cols = {}
        for name in (a, b):
            p = work / f"{name}.parquet"
            m("query", "--lang", "sql", f"SELECT ra, dec FROM {name}", "--format", "parquet", "--out", p)
            t = pq.read_table(p)
            cols[name] = SkyCoord(t["ra"].to_numpy() * u.deg, t["dec"].to_numpy() * u.deg)
        t = time.time()
        i, _, _, _ = search_around_sky(cols[a], cols[b], 1 * u.arcsec)
        row["astropy_s"] = round(time.time() - t, 3)
        row["astropy_pairs"] = len(i)
        row["agree"] = len(i) == pairs
    print(f"  {row['workload']}: {med:.2f} s, {row['input_rows_per_s'] / 1e6:.2f} M input rows/s, {pairs:,} pairs"
          + (f"; astropy {row['astropy_pairs']:,} pairs in {row['astropy_s']} s" if check else ""), flush=True)
    return row


def aggregation(m, name, work, reps):
    import duckdb
    files = str(m.data / "catalogs" / name / name / "dataset" / "**" / "*.parquet")
    sql = (f"SELECT _healpix_29 / {CELL5} AS cell5, COUNT(*) AS n, AVG(g_mag) AS g, AVG(r_mag) AS r, "
           f"AVG(i_mag) AS i FROM {{t}} GROUP BY _healpix_29 / {CELL5}")
    out = work / "agg.parquet"
    m_ms = [m.query_ms(sql.format(t=name), out) for _ in range(reps + 1)][1:]
    import pyarrow.parquet as pq
    ours = pq.read_table(out).to_pandas().sort_values("cell5").reset_index(drop=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count()}")
    d_ms = []
    for _ in range(reps + 1):
        t = time.time()
        theirs = con.execute(sql.format(t=f"read_parquet('{files}')").replace(f"/ {CELL5}", f"// {CELL5}")).df()
        d_ms.append((time.time() - t) * 1e3)
    d_ms = d_ms[1:]
    theirs = theirs.sort_values("cell5").reset_index(drop=True)
    agree = (len(ours) == len(theirs) and (ours["n"].values == theirs["n"].values).all()
             and abs(ours["g"] - theirs["g"]).max() < 1e-9)
    # The same grouping through healpix_parent(), which DataFusion knows keeps the catalog's
    # _healpix_29 order (sorted, streaming aggregation instead of hashing).
    sorted_sql = sql.replace(f"_healpix_29 / {CELL5}", "healpix_parent(_healpix_29, 5)")
    s_ms = [m.query_ms(sorted_sql.format(t=name), out) for _ in range(reps + 1)][1:]
    row = {"workload": f"full-scan aggregation per order-5 cell over {name}", "meridian_ms": round(statistics.median(m_ms), 1),
           "meridian_healpix_parent_ms": round(statistics.median(s_ms), 1),
           "duckdb_ms": round(statistics.median(d_ms), 1), "meridian_over_duckdb": round(statistics.median(m_ms) / statistics.median(d_ms), 2),
           "groups": len(ours), "agree": bool(agree)}
    print(f"  aggregation: meridian {row['meridian_ms']} ms (healpix_parent: {row['meridian_healpix_parent_ms']} ms), "
          f"duckdb {row['duckdb_ms']} ms "
          f"(ratio {row['meridian_over_duckdb']}), {len(ours)} cells, answers {'agree' if agree else 'DISAGREE'}", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the cone/aggregation catalog")
    ap.add_argument("--xmatch", type=int, nargs="*", default=[1_000_000, 10_000_000], help="cross-match sizes")
    ap.add_argument("--cones", type=int, default=200, help="measured cone searches per radius")
    ap.add_argument("--work", type=Path, default=Path("/tmp/meridian-bench-query"))
    ap.add_argument("--meridian", default=None, help="meridian binary (default: build release)")
    args = ap.parse_args()
    binary = meridian_binary(args.meridian)
    try:
        import duckdb  # noqa: F401
    except ImportError:
        sh(sys.executable, "-m", "pip", "install", "-q", "duckdb")
    args.work.mkdir(parents=True, exist_ok=True)
    m = Meridian(binary, args.work / "data")
    name = f"object_{args.rows}"
    print("inputs", flush=True)
    m.catalog(name, args.rows, 7, args.work)
    results = []
    print("cone search", flush=True)
    results += cone(m, name, args.cones)
    print("aggregation", flush=True)
    results.append(aggregation(m, name, args.work, 3))
    print("cross-match", flush=True)
    for i, n in enumerate(sorted(args.xmatch)):
        results.append(xmatch(m, n, args.work, check=(i == 0)))
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"query-{stamp}.json").write_text(json.dumps({"machine": machine, "rows": args.rows, "results": results}, indent=2))
    print(f"written bench/results/query-{stamp}.json")


if __name__ == "__main__":
    main()
