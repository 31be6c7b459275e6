#!/usr/bin/env python3
"""Precomputed match tables: one catalog against three references, three ways.

    python3 bench/match_tables.py --meridian <release binary>              # 10^7 rows each
    python3 bench/match_tables.py --meridian <release binary> --rows 1000000

A synthetic survey of --rows objects (seed 1) and three references of as many rows holding
the same objects with their positions moved by 0.3", 0.6" and 0.9" (Gaussian per axis),
so that most sources have a partner within 1.5". Timed, each from a warm page cache:

- `meridian xmatch refresh --catalog survey` with the three configured as references:
  the three match tables computed and published as catalogs (HATS, with margins);
- by hand: `meridian xmatch survey ref --radius 1.5arcsec --format parquet` three times
  (the match written to a file, not published), and the same followed by
  `meridian ingest` of each file (what publishing a table by hand takes);
- PostgreSQL 15 + Q3C (Data Lab's backend): `CREATE TABLE ... AS` the nearest partner
  within 1.5" of each row, by Q3C's nearest-neighbour idiom (a LATERAL subquery ordered by
  q3c_dist with LIMIT 1 over the q3c_join index condition), three times.

Rows per table are compared across the three ways. Results: JSON and Markdown in
bench/results/match-tables-<stamp>.*.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from peers import PostgresQ3C, ensure_pip  # noqa: E402
from query import Meridian, meridian_binary  # noqa: E402

JITTER_MAS = {"ref_a": 300.0, "ref_b": 600.0, "ref_c": 900.0}
RADIUS_ARCSEC = 1.5


def timed(fn, repeat=1):
    """The median wall time of `repeat` runs of fn, and the last run's result."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--meridian", default=None, help="meridian binary (default: build release)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/meridian-bench-match-tables"))
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each way (the median is kept)")
    args = ap.parse_args()
    binary = meridian_binary(args.meridian)
    work = args.work / str(args.rows)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.pop("MERIDIAN_XMATCH__REFERENCES", None)
    m = Meridian(binary, work / "data")
    print("loading", flush=True)
    m.catalog("survey", args.rows, 1, work, keep_input=True)
    for ref, jitter in JITTER_MAS.items():
        m.catalog(ref, args.rows, 1, work, jitter, keep_input=True)
    result = {"rows": args.rows, "radius_arcsec": RADIUS_ARCSEC,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "binary": binary}, "seconds": {}, "rows_per_table": {}}
    s = result["seconds"]

    # Meridian, automatic: all three tables, computed and published.
    os.environ["MERIDIAN_XMATCH__REFERENCES"] = json.dumps(list(JITTER_MAS))
    s["meridian_refresh"], p = timed(lambda: m("xmatch", "refresh", "--catalog", "survey", "--force"),
                                     args.repeat)
    print(p.stderr, flush=True)
    status = m("xmatch", "status").stdout
    assert status.count("\tcurrent") >= 3, status
    auto_rows = {}
    for ref in JITTER_MAS:
        auto_rows[ref] = int(m("query", "--lang", "sql",
                               f"SELECT COUNT(*) AS n FROM x1p5__survey__{ref}").stdout.split()[1])
    os.environ.pop("MERIDIAN_XMATCH__REFERENCES")

    # Meridian, by hand: three cross-matches to files, then their ingest.
    hand_rows, files = {}, {r: work / f"hand-{r}.parquet" for r in JITTER_MAS}

    def to_files():
        for ref in JITTER_MAS:
            p = m("xmatch", "survey", ref, "--radius", f"{RADIUS_ARCSEC}arcsec", "--format",
                  "parquet", "--out", files[ref])
            hand_rows[ref] = int(p.stderr.split(" rows in")[0].split()[-1])

    def ingest_files():
        for ref in JITTER_MAS:
            m("ingest", f"hand_{ref}", files[ref], "--ra", "ra1", "--dec", "dec1")

    s["meridian_xmatch_to_files"], _ = timed(to_files, args.repeat)
    s["meridian_ingest_of_files"], _ = timed(ingest_files, args.repeat)
    s["meridian_by_hand_published"] = s["meridian_xmatch_to_files"] + s["meridian_ingest_of_files"]
    result["rows_per_table"]["meridian_refresh"] = auto_rows
    result["rows_per_table"]["meridian_by_hand"] = hand_rows

    if not args.skip_postgres:
        import pyarrow.parquet as pq
        ensure_pip(("psycopg", "psycopg[binary]"))
        pg = PostgresQ3C(work)
        try:
            def batches(name):
                for f in sorted((work / f"input-{name}").glob("object*.parquet")):
                    yield from pq.ParquetFile(f).iter_batches(batch_size=200_000,
                                                                columns=["objectId", "ra", "dec"])
            for name in ["survey", *JITTER_MAS]:
                pg.load(name, batches(name))
            pg_rows = {}

            def q3c():
                for ref in JITTER_MAS:
                    pg.conn.execute(f"DROP TABLE IF EXISTS x_{ref}")
                    pg.conn.execute(
                        f"CREATE TABLE x_{ref} AS SELECT a.objectid AS id1, a.ra AS ra1, a.dec AS dec1, "
                        f"b.objectid AS id2, b.ra AS ra2, b.dec AS dec2, b.dist * 3600 AS distance_arcsec "
                        f"FROM survey AS a CROSS JOIN LATERAL (SELECT r.objectid, r.ra, r.dec, "
                        f"q3c_dist(a.ra, a.dec, r.ra, r.dec) AS dist FROM {ref} AS r "
                        f"WHERE q3c_join(a.ra, a.dec, r.ra, r.dec, {RADIUS_ARCSEC / 3600!r}) "
                        f"ORDER BY dist LIMIT 1) AS b")
                    pg_rows[ref] = pg.rows(f"SELECT COUNT(*) FROM x_{ref}")[0][0]

            s["postgres_q3c"], _ = timed(q3c, args.repeat)
            result["rows_per_table"]["postgres_q3c"] = pg_rows
            result["postgres"] = pg.version
        finally:
            pg.stop()

    counts = result["rows_per_table"]
    agree = all(c == counts["meridian_refresh"] for c in counts.values())
    result["answers_agree"] = agree
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "bench" / "results" / f"match-tables-{stamp}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# Match tables: 1 x 3 references at {args.rows:,} rows each, {RADIUS_ARCSEC}\" "
             f"(median of {args.repeat} runs)", "",
             "| way | seconds | vs automatic |", "|---|---|---|"]
    for k, v in s.items():
        lines.append(f"| {k} | {v:.1f} | x{v / s['meridian_refresh']:.2f} |")
    lines += ["", f"rows per table: {json.dumps(counts)}; answers agree: {agree}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not agree:
        sys.exit("the ways disagree on the number of matches")


if __name__ == "__main__":
    main()
