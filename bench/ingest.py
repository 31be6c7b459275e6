#!/usr/bin/env python3
"""Ingest benchmark: `meridian ingest` against `hats-import` on the same synthetic input, on
the same machine, in one run. Reports wall time, rows/s and peak RSS of each, and the ratios.

    python3 bench/ingest.py [--rows 10000000] [--work /tmp/meridian-bench]

The input is Meridian's own synthetic Object table in its 10-column "narrow" profile
(objectId, ra, dec, g/r/i magnitudes and errors, extendedness), written as CSV and as
Parquet. hats-import runs with a 2-worker dask cluster (one per core) and its defaults
(1,000,000 rows per partition, orders up to 10), as does Meridian.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd, env=None):
    """Runs cmd under GNU time; returns (seconds, peak RSS MiB, stdout+stderr)."""
    start = time.time()
    p = subprocess.run(["/usr/bin/time", "-v", *map(str, cmd)], capture_output=True, text=True, env=env)
    elapsed = time.time() - start
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{p.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return elapsed, rss_kb / 1024, p.stdout + p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/meridian-bench"))
    ap.add_argument("--meridian", default=None, help="meridian binary (default: build release)")
    args = ap.parse_args()
    if shutil.which("/usr/bin/time") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "time"], check=True)
    binary = args.meridian
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "meridian"], cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
        binary = str(Path(target) / "release" / "meridian")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for fmt, ext, reader in [("csv", "csv", "csv"), ("parquet", "parquet", "parquet")]:
        src = work / f"input-{args.rows}-{fmt}"
        if not src.exists():
            subprocess.run([binary, "--quiet", "generate", "--out", src.with_suffix(".tmp"), "--objects", str(args.rows),
                            "--profile", "narrow", "--format", fmt], check=True)
            src.with_suffix(".tmp").rename(src)
        files = sorted(src.glob(f"*.{ext}"))
        size_mb = sum(f.stat().st_size for f in files) / 2**20
        data = work / "meridian-data"
        shutil.rmtree(data, ignore_errors=True)
        m_s, m_rss, _ = timed([binary, "--quiet", "--data-dir", data, "ingest", "bench", *files])
        out = work / "hats-import-out"
        shutil.rmtree(out, ignore_errors=True)
        h_s, h_rss, h_out = timed([sys.executable, ROOT / "bench" / "hats_import_ingest.py", out, reader, *files])
        rows = int(re.search(r"hats-import \w+: (\d+) rows", h_out).group(1))
        assert rows == args.rows, f"hats-import wrote {rows} rows"
        results.append({
            "workload": f"ingest {args.rows:,} rows x 10 columns, {fmt} ({size_mb:.0f} MiB)",
            "meridian_s": round(m_s, 2), "hats_import_s": round(h_s, 2),
            "meridian_rows_per_s": round(args.rows / m_s), "hats_import_rows_per_s": round(args.rows / h_s),
            "speedup": round(h_s / m_s, 2),
            "meridian_peak_rss_mib": round(m_rss), "hats_import_peak_rss_mib": round(h_rss),
        })
    print(f"\n{'workload':<50} {'meridian':>10} {'hats-import':>12} {'ratio':>7} {'RSS MiB (m / h)':>17}")
    for r in results:
        print(f"{r['workload']:<50} {r['meridian_s']:>9.1f}s {r['hats_import_s']:>11.1f}s {r['speedup']:>6.1f}x "
              f"{r['meridian_peak_rss_mib']:>8} / {r['hats_import_peak_rss_mib']}")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out_dir / f"ingest-{stamp}.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
