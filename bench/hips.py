#!/usr/bin/env python3
"""Sky maps against their peers, on the same data in the same run.

    python3 bench/hips.py                         # default: about 10 minutes on 2 cores
    python3 bench/hips.py --density-rows 100000000 --only density   # the 10^8-row run

Workloads:
- build: an image HiPS of a synthetic survey (`meridian generate --images`, plain and
  RICE-compressed images of 0.2" pixels) by `meridian hips build` and by CDS Hipsgen
  (Debian's aladin, `java -jar ... HipsGen`), at the same order, each writing FITS and PNG
  tiles. Reports wall time and FITS tiles a second of each (all orders), and the ratio.
- density: a density map of a `--density-rows`-row synthetic catalog (ingested to HATS) by
  `meridian hips density`, against healpy computing the same counts (reading the same
  positions from the survey's Parquet files with pyarrow, `ang2pix` and `bincount`); the
  counts of the two are compared cell by cell.
- serve: HiPS tiles fetched over HTTP: p50/p99 of one keep-alive connection
  (http.client) over random tiles, and tiles a second over `--connections` concurrent
  connections (curl, a client in C).

Results go to bench/results/hips-<time>.json with the machine description.
"""

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from images import Server, meridian_bin, percentiles  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ALADIN = Path("/usr/share/java/aladin.jar")


def run(cmd, **kw):
    t = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, **kw)
    return time.perf_counter() - t


def fits_tiles(root):
    return sum(1 for _ in Path(root).glob("Norder*/Dir*/*.fits"))


def bench_build(binary, work, args):
    survey = work / f"survey-{args.images}"
    if not survey.exists():
        run([binary, "--quiet", "generate", "--out", survey.with_suffix(".tmp"), "--objects", "20000",
             "--images", args.images, "--image-size", args.image_size])
        survey.with_suffix(".tmp").rename(survey)
    images = survey / "images"
    files = sorted(images.rglob("*.fits*"))
    data = work / "build-data"
    shutil.rmtree(data, ignore_errors=True)
    run([binary, "--quiet", "--data-dir", data, "images", "add", "survey", images, "--recursive"])
    ours = run([binary, "--quiet", "--data-dir", data, "hips", "build", "survey", "--order", args.order])
    root = data / "hips" / "survey"
    props = {k.strip(): v.strip() for k, v in
             (line.split("=", 1) for line in (root / "properties").read_text().splitlines() if "=" in line)}
    order = int(props["hips_order"])
    n_ours = fits_tiles(root)
    hg = work / "hipsgen-out"
    shutil.rmtree(hg, ignore_errors=True)
    theirs = run(["java", f"-Xmx{args.java_heap}", "-cp", ALADIN, "cds.allsky.HipsGen", f"in={images}", f"out={hg}",
                  "creator_did=ivo://bench/hipsgen", f"order={order}", "-f"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n_theirs = fits_tiles(hg)
    r = {"workload": f"image HiPS of {len(files)} synthetic images ({args.image_size}^2 pixels) to order {order}",
         "meridian": {"s": ours, "fits_tiles": n_ours, "tiles_per_s": n_ours / ours},
         "hipsgen": {"s": theirs, "fits_tiles": n_theirs, "tiles_per_s": n_theirs / theirs}}
    r["ratio_tiles_per_s"] = r["meridian"]["tiles_per_s"] / r["hipsgen"]["tiles_per_s"]
    r["ratio_time"] = theirs / ours
    print(json.dumps(r, indent=2))
    return r


def bench_density(binary, work, args):
    import healpy as hp
    import pyarrow.parquet as pq
    src = work / f"catalog-{args.density_rows}"
    if not src.exists():
        run([binary, "--quiet", "generate", "--out", src.with_suffix(".tmp"), "--objects", args.density_rows,
             "--profile", "narrow"])
        src.with_suffix(".tmp").rename(src)
    files = sorted(src.glob("*.parquet"))
    data = work / f"density-data-{args.density_rows}"
    if not (data / "catalogs" / "cat").exists():
        shutil.rmtree(data, ignore_errors=True)
        run([binary, "--quiet", "--data-dir", data, "ingest", "cat", *files])
    order, width = args.density_order, args.density_tile_width
    pixel_order = order + int(np.log2(width))
    ours = run([binary, "--quiet", "--data-dir", data, "hips", "density", "cat", "--order", order,
                "--tile-width", width])
    t = time.perf_counter()
    # healpy at its best: every row's cell, then one bincount.
    pix = []
    for f in files:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(columns=["ra", "dec"], batch_size=1 << 20):
            pix.append(hp.ang2pix(2 ** pixel_order, batch.column(0).to_numpy(), batch.column(1).to_numpy(),
                                  nest=True, lonlat=True))
    counts = np.bincount(np.concatenate(pix), minlength=12 * 4 ** pixel_order)
    del pix
    theirs = time.perf_counter() - t
    # The same counts: Meridian's deepest FITS tiles, laid back into cells.
    from astropy.io import fits

    def sub_index(w):
        r, c = np.mgrid[0:w, 0:w]
        s = np.zeros((w, w), dtype=np.int64)
        for b in range(int(np.log2(w))):
            s |= ((r >> b) & 1) << (2 * b)
            s |= ((c >> b) & 1) << (2 * b + 1)
        return s
    sub = sub_index(width)
    mine = np.zeros_like(counts)
    root = data / "hips" / "cat-density"
    for p in root.glob(f"Norder{order}/Dir*/*.fits"):
        n = int(p.stem[4:])
        tile = fits.getdata(p)[::-1]  # rows from the top
        mine[n * width * width + sub.ravel()] = tile.ravel().astype(np.int64)
    same = bool((mine == counts).all())
    r = {"workload": f"density map of {args.density_rows:,} rows at pixel order {pixel_order}",
         "meridian_s": ours, "healpy_s": theirs, "ratio": theirs / ours, "same_counts": same,
         "rows": int(counts.sum())}
    print(json.dumps(r, indent=2))
    if not same:
        print("!!! DISAGREEMENT: the density map's counts differ from healpy's", file=sys.stderr)
    return r


def bench_serve(binary, work, args):
    data = work / "build-data"
    if not (data / "hips" / "survey").exists():
        sys.exit("run the build workload first (it makes the HiPS served)")
    root = data / "hips" / "survey"
    tiles = [str(p.relative_to(root)) for p in root.glob("Norder*/Dir*/*.png")]
    tiles += [str(p.relative_to(root)) for p in root.glob("Norder*/Dir*/*.fits")]
    random.seed(1)
    s = Server(binary, data)
    try:
        host = urllib.parse.urlparse(s.url)
        conn = http.client.HTTPConnection(host.hostname, host.port)
        ts = []
        for _ in range(args.requests):
            path = f"/hips/survey/{random.choice(tiles)}"
            t = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            ts.append(time.perf_counter() - t)
            assert resp.status == 200 and body
        one = percentiles(ts)
        def rate(pool):
            with tempfile.NamedTemporaryFile("w", suffix=".curl") as cfg:
                picks = [random.choice(pool) for _ in range(args.requests * 4)]
                for p in picks:
                    cfg.write(f'url = "{s.url}/hips/survey/{p}"\noutput = "/dev/null"\n')
                cfg.flush()
                t = time.perf_counter()
                subprocess.run(["curl", "-sf", "--parallel", "--parallel-max", str(args.connections), "-K",
                                cfg.name], check=True, stderr=subprocess.DEVNULL)
                return len(picks) / (time.perf_counter() - t)
        png = [t for t in tiles if t.endswith(".png")]
        sizes = {k: int(np.mean([(root / t).stat().st_size for t in pool]))
                 for k, pool in (("png", png), ("fits", [t for t in tiles if t.endswith(".fits")]))}
        many = {"png": rate(png), "png_and_fits": rate(tiles), "mean_bytes": sizes}
    finally:
        s.close()
    r = {"workload": f"{args.requests} random tiles of {len(tiles)} (PNG and FITS)", "one_connection": one,
         f"tiles_per_s_{args.connections}_connections": many}
    print(json.dumps(r, indent=2))
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meridian", help="the meridian binary (default: target/release, else target/debug)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/meridian-bench-hips"))
    ap.add_argument("--images", type=int, default=40, help="synthetic objects rendered (6 bands each)")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--order", type=int, default=10, help="deepest tile order of the image HiPS")
    ap.add_argument("--java-heap", default="4g")
    ap.add_argument("--density-rows", type=int, default=10_000_000)
    ap.add_argument("--density-order", type=int, default=3)
    ap.add_argument("--density-tile-width", type=int, default=256)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--only", default="build,density,serve")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    binary = meridian_bin(args)
    only = set(args.only.split(","))
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "binary": binary},
              "args": {k: str(v) for k, v in vars(args).items()}}
    if "build" in only:
        result["build"] = bench_build(binary, args.work, args)
    if "density" in only:
        result["density"] = bench_density(binary, args.work, args)
    if "serve" in only:
        result["serve"] = bench_serve(binary, args.work, args)
    out = ROOT / "bench" / "results" / f"hips-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
