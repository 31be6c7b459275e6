#!/usr/bin/env python3
"""Image services against astropy, on the same files in the same run.

    python3 bench/images.py                      # default: about 5 minutes on 2 cores
    python3 bench/images.py --sia-images 1000000 --big-gib 4

Workloads:
- cutout: 100 x 100 pixel SODA cutouts (HTTP through http.client, one keep-alive
  connection) of a 4k x 4k
  float32 image, plain and RICE_1-compressed, at random positions; against astropy
  (`fits.open` + `Cutout2D` + writing the FITS file to memory) on the same files and
  positions. Reports p50/p99 latency and cutouts/s, and the ratio of rates; and cutouts/s
  over `--connections` concurrent connections (curl), against the same astropy rate.
- sia: SIA 2.0 cone searches (radius 0.05 deg) over a collection of `--sia-images`
  registered images (footprints spread over the sky; their pixels are never read), p50/p99;
  and the same cones as ADQL INTERSECTS on ivoa.obscore over TAP (same rows required).
- memory: the server's resident memory while it serves a large SODA cutout
  (`--big-pixels` pixels a side) of a `--big-gib` GiB image, against its resident memory
  before the request.

Results go to bench/results/images-<time>.json with the machine description.
"""

import argparse
import collections
import http.client
import io
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent


def meridian_bin(args):
    if args.meridian:
        return args.meridian
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    for profile in ("release", "debug"):
        p = Path(target) / profile / "meridian"
        if p.exists():
            return str(p)
    sys.exit("build meridian first (cargo build --release -p meridian) or pass --meridian")


def tan_header(n, ra, dec, scale_deg):
    from astropy.io import fits
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=ra, CRVAL2=dec, CRPIX1=n / 2 + 0.5,
             CRPIX2=n / 2 + 0.5, CD1_1=-scale_deg, CD1_2=0.0, CD2_1=0.0, CD2_2=scale_deg,
             RADESYS="ICRS", DATE_OBS="2025-10-01T00:00:00", EXPTIME=30.0, FILTER="r")
    return h


def make_images(work, n):
    """A plain and a RICE_1 n x n float32 image of noise and stars."""
    from astropy.io import fits
    plain, rice = work / "plain.fits", work / "rice.fits"
    if plain.exists() and rice.exists():
        return plain, rice
    rng = np.random.default_rng(1)
    data = rng.normal(100, 5, (n, n)).astype(np.float32)
    h = tan_header(n, 150.0, 2.0, 0.2 / 3600)
    fits.PrimaryHDU(data, h).writeto(plain, overwrite=True)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, h, compression_type="RICE_1")]).writeto(
        rice, overwrite=True)
    return plain, rice


class Server:
    def __init__(self, binary, data, env=None):
        self.proc = subprocess.Popen([binary, "--data-dir", str(data), "serve", "--addr", "127.0.0.1:0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "MERIDIAN_LOG__LEVEL": "warn", **(env or {})})
        self.url = None
        deadline = time.time() + 600
        while self.url is None and time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            m = re.search(r"TAP service: (http://\S+)", line)
            if m:
                self.url = m.group(1).removesuffix("/tap")
        if not self.url:
            sys.exit("meridian serve did not start")
        # The log's last lines are kept (a bench may keep them with its results).
        self.log = collections.deque(maxlen=50_000)
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def percentiles(ts):
    ts = sorted(ts)
    return {"p50_ms": 1e3 * ts[len(ts) // 2], "p99_ms": 1e3 * ts[min(len(ts) - 1, int(len(ts) * 0.99))],
            "per_s": len(ts) / sum(ts)}


def bench_cutouts(binary, work, args):
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS
    import astropy.units as u
    n = args.image_pixels
    plain, rice = make_images(work, n)
    data = work / "cut-data"
    subprocess.run([binary, "--data-dir", str(data), "images", "add", "bench", str(plain), str(rice), "--quiet"],
                   check=True)
    rng = random.Random(3)
    wcs = WCS(fits.getheader(plain))
    half = 50 * 0.2 / 3600  # 100 pixels of 0.2 arcsec, as a radius
    pos = []
    for _ in range(args.cutouts):
        x, y = rng.uniform(60, n - 60), rng.uniform(60, n - 60)
        c = wcs.pixel_to_world(x, y)
        pos.append((c.ra.deg, c.dec.deg))
    out = {}
    srv = Server(binary, data)
    try:
        # http.client on one keep-alive connection: its own cost per request is about a
        # third of `requests`' (0.25 against 0.9 ms here), which would otherwise be most of
        # what is timed.
        host, port = srv.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port))

        def get(params):
            conn.request("GET", "/soda/sync?" + urllib.parse.urlencode(params))
            r = conn.getresponse()
            return r.status, r.read()

        ids = {Path(d["path"]).name: d["id"] for d in
               json.loads((data / "images" / "bench.json").read_text())["datasets"]}
        for name, path in (("plain", plain), ("rice", rice)):
            did = f"ivo://meridian/images/bench?{ids[path.name]}"
            for ra, dec in pos[:10]:  # warm-up
                get({"ID": did, "CIRCLE": f"{ra} {dec} {half}"})
            ts = []
            for ra, dec in pos:
                t = time.perf_counter()
                status, body = get({"ID": did, "CIRCLE": f"{ra} {dec} {half}"})
                ts.append(time.perf_counter() - t)
                assert status == 200 and len(body) > 40_000, body[:200]
            m = percentiles(ts)
            m["concurrent_per_s"] = throughput(srv.url, did, pos, half, args.connections)
            # astropy on the same file and positions: open, cut, write.
            ts = []
            for ra, dec in pos[: args.astropy_cutouts]:
                t = time.perf_counter()
                with fits.open(path) as hl:
                    hdu = hl[0] if name == "plain" else hl[1]
                    w = WCS(hdu.header)
                    c = Cutout2D(hdu.data, SkyCoord(ra * u.deg, dec * u.deg), 2 * half * u.deg, wcs=w)
                    buf = io.BytesIO()
                    fits.PrimaryHDU(c.data, c.wcs.to_header()).writeto(buf)
                ts.append(time.perf_counter() - t)
            a = percentiles(ts)
            out[name] = {"meridian": m, "astropy": a, "rate_ratio": m["per_s"] / a["per_s"]}
            out[name]["concurrent_ratio"] = m["concurrent_per_s"] / a["per_s"]
            print(f"cutout {name}: meridian p50 {m['p50_ms']:.2f} ms p99 {m['p99_ms']:.2f} ms "
                  f"{m['per_s']:.0f}/s; astropy p50 {a['p50_ms']:.2f} ms {a['per_s']:.0f}/s; "
                  f"ratio {out[name]['rate_ratio']:.1f}x; {args.connections} connections "
                  f"{m['concurrent_per_s']:.0f}/s, ratio {out[name]['concurrent_ratio']:.1f}x", flush=True)
    finally:
        srv.close()
    return out


def throughput(url, did, pos, half, connections):
    """Cutouts a second over `connections` keep-alive connections at once, made by curl
    (a client in C, so that the client is not what is measured); each position 4 times."""
    with tempfile.NamedTemporaryFile("w", suffix=".curl") as cfg:
        for _ in range(4):
            for ra, dec in pos:
                q = urllib.parse.urlencode({"ID": did, "CIRCLE": f"{ra} {dec} {half}"})
                cfg.write(f'url = "{url}/soda/sync?{q}"\noutput = "/dev/null"\n')
        cfg.flush()
        t = time.perf_counter()
        subprocess.run(["curl", "-sf", "--parallel", "--parallel-max", str(connections), "-K", cfg.name],
                       check=True, stderr=subprocess.DEVNULL)
        return 4 * len(pos) / (time.perf_counter() - t)


def bench_sia(binary, work, args):
    """A collection document of `n` datasets written directly (the search reads only the
    registry), all pointing at one small real file."""
    n = args.sia_images
    data = work / f"sia-data-{n}"
    docs = data / "images"
    docs.mkdir(parents=True, exist_ok=True)
    doc = docs / "sky.json"
    fov = 0.1
    if not doc.exists():
        rng = np.random.default_rng(7)
        ra = rng.uniform(0, 360, n)
        dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
        path = str(make_images(work, args.image_pixels)[0])
        size = os.path.getsize(path)
        with open(doc.with_suffix(".partial"), "w") as f:
            f.write('{"name":"sky","datasets":[')
            for i in range(n):
                d = fov / 2 / max(np.cos(np.radians(dec[i])), 0.05)
                corners = [[(ra[i] + sx * d) % 360, max(-90, min(90, dec[i] + sy * fov / 2))]
                           for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
                f.write(("," if i else "") + json.dumps({
                    "id": f"img{i}", "path": path, "hdu": 0, "width": 1800, "height": 1800, "bitpix": -32,
                    "compressed": False, "file_bytes": size, "file_modified_s": 0, "ra_deg": ra[i],
                    "dec_deg": dec[i], "corners_deg": corners, "fov_deg": fov * 1.414, "pixel_arcsec": 0.2,
                    "t_min_mjd": 60949 + i * 1e-3, "t_max_mjd": 60949 + i * 1e-3 + 3e-4, "exptime_s": 30.0,
                    "em_min_m": 552e-9, "em_max_m": 691e-9, "filter": "r", "facility": "Bench",
                    "instrument": None, "target": None}))
            f.write("]}")
        os.replace(doc.with_suffix(".partial"), doc)
    t0 = time.time()
    srv = Server(binary, data)
    start_s = time.time() - t0
    try:
        s = requests.Session()
        rng = random.Random(5)
        cones = [(rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))) for _ in range(args.sia_queries)]
        for ra, dec in cones[:10]:
            s.get(f"{srv.url}/sia/query", params={"POS": f"CIRCLE {ra} {dec} 0.05"}).content
        ts, rows = [], 0
        for ra, dec in cones:
            t = time.perf_counter()
            r = s.get(f"{srv.url}/sia/query", params={"POS": f"CIRCLE {ra} {dec} 0.05", "RESPONSEFORMAT": "votable/td"})
            body = r.text
            ts.append(time.perf_counter() - t)
            assert r.status_code == 200
            rows += body.count("<TR>")
        m = percentiles(ts)
        # The same cones over TAP on ivoa.obscore (read through its position index).
        ts, tap_rows = [], 0
        for ra, dec in cones:
            adql = f"SELECT * FROM ivoa.obscore WHERE 1 = INTERSECTS(s_region, CIRCLE('ICRS', {ra}, {dec}, 0.05))"
            t = time.perf_counter()
            r = s.get(f"{srv.url}/tap/sync", params={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": adql,
                                                      "FORMAT": "votable/td"})
            body = r.text
            ts.append(time.perf_counter() - t)
            assert r.status_code == 200, body[:300]
            tap_rows += body.count("<TR>")
        assert tap_rows == rows, (tap_rows, rows)
        m["tap"] = percentiles(ts)
        m.update(images=n, mean_rows=rows / len(cones), start_s=start_s, rss_mib=srv.rss_mib())
        print(f"sia over {n} images: p50 {m['p50_ms']:.2f} ms p99 {m['p99_ms']:.2f} ms, "
              f"{m['mean_rows']:.2f} rows a query; server start {start_s:.1f} s, RSS {m['rss_mib']:.0f} MiB; "
              f"TAP on ivoa.obscore p50 {m['tap']['p50_ms']:.2f} ms p99 {m['tap']['p99_ms']:.2f} ms", flush=True)
        return m
    finally:
        srv.close()


def bench_memory(binary, work, args):
    """A `--big-gib` GiB float32 image, written as a header and a sparse data unit."""
    n = int((args.big_gib * 2**30 / 4) ** 0.5)
    big = work / f"big-{n}.fits"
    if not big.exists():
        from astropy.io import fits
        h = fits.Header()
        h.update(SIMPLE=True, BITPIX=-32, NAXIS=2, NAXIS1=n, NAXIS2=n)
        h.update(tan_header(n, 30.0, -10.0, 0.2 / 3600))
        head = h.tostring().encode()
        with open(big.with_suffix(".partial"), "wb") as f:
            f.write(head)
            nbytes = n * n * 4
            f.truncate(len(head) + (nbytes + 2879) // 2880 * 2880)
        os.replace(big.with_suffix(".partial"), big)
    data = work / "big-data"
    subprocess.run([binary, "--data-dir", str(data), "images", "add", "big", str(big), "--quiet"], check=True)
    srv = Server(binary, data, env={"MERIDIAN_SERVER__CUTOUT_MAX_PIXELS": str(args.big_pixels**2 + 1)})
    try:
        did = "ivo://meridian/images/big?" + json.loads(
            (data / "images" / "big.json").read_text())["datasets"][0]["id"]
        before = srv.rss_mib()
        peak = [before]
        done = threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], srv.rss_mib())
                time.sleep(0.01)
        threading.Thread(target=watch, daemon=True).start()
        px = f"{n // 2 - args.big_pixels // 2 + 1}:{n // 2 + args.big_pixels // 2},{n // 2 - args.big_pixels // 2 + 1}:{n // 2 + args.big_pixels // 2}"
        t = time.perf_counter()
        got = 0
        with requests.get(f"{srv.url}/soda/sync", params={"ID": did, "PIXELS": px}, stream=True) as r:
            assert r.status_code == 200, r.text[:300]
            for chunk in r.iter_content(1 << 20):
                got += len(chunk)
        secs = time.perf_counter() - t
        done.set()
        m = {"image_gib": n * n * 4 / 2**30, "cutout_mib": got / 2**20, "seconds": secs,
             "rss_before_mib": before, "rss_peak_mib": peak[0], "rss_growth_mib": peak[0] - before}
        print(f"memory: {m['cutout_mib']:.0f} MiB cutout of a {m['image_gib']:.1f} GiB image in {secs:.1f} s; "
              f"RSS {before:.0f} -> peak {peak[0]:.0f} MiB (+{m['rss_growth_mib']:.0f})", flush=True)
        return m
    finally:
        srv.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meridian", help="the meridian binary (default: target/release, else target/debug)")
    ap.add_argument("--work", default="/tmp/meridian-bench-images")
    ap.add_argument("--image-pixels", type=int, default=4096)
    ap.add_argument("--cutouts", type=int, default=500)
    ap.add_argument("--astropy-cutouts", type=int, default=100)
    ap.add_argument("--connections", type=int, default=4, help="concurrent connections of the throughput run")
    ap.add_argument("--sia-images", type=int, default=1_000_000)
    ap.add_argument("--sia-queries", type=int, default=300)
    ap.add_argument("--big-gib", type=float, default=4.0)
    ap.add_argument("--big-pixels", type=int, default=8192)
    ap.add_argument("--only", default="cutout,sia,memory")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    binary = meridian_bin(args)
    only = set(args.only.split(","))
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "binary": binary},
              "args": vars(args)}
    if "cutout" in only:
        result["cutout"] = bench_cutouts(binary, work, args)
    if "sia" in only:
        result["sia"] = bench_sia(binary, work, args)
    if "memory" in only:
        result["memory"] = bench_memory(binary, work, args)
    out = ROOT / "bench" / "results" / f"images-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
