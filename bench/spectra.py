#!/usr/bin/env python3
"""Spectra: retrieve and stack rates, against reading the same spectra with astropy.

    python3 bench/spectra.py                     # 10^5 synthetic spectra: about 10 minutes on 2 cores
    python3 bench/spectra.py --spectra 20000 --sizes 1000

Data: `meridian generate --spectra N` (seed 1; 3101 pixels from 3600 to 9800 Å), made
once under --work and reused.

Workloads:
- retrieve in process: `meridian bench spectra` looks up --sizes random sparcl_ids and
  encodes the pickle the SPARCL API sends (flux and wavelength: SPARCL's DEFAULT), best
  of 3; spectra/s.
- retrieve through sparclclient 1.3.1 over loopback (`client.retrieve(ids,
  limit=len(ids))`, its own venv: SPARCL_PYTHON), best of 3; spectra/s.
- astropy: the same spectra as one FITS file each (an SDM binary table written by
  Meridian, as a survey's per-spectrum files are), read with
  `fits.getdata` (wavelength and flux columns), on --astropy-files of them (fetched from
  `/spectra/file`); spectra/s.
- stack: an inverse-variance weighted stack of every spectrum of the dataset on a
  3600:9800:2 grid (`meridian bench spectra`: resampling included), seconds.

Results go to bench/results/spectra-<time>.json with the machine description.
"""

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from images import meridian_bin  # noqa: E402

CLIENT = r'''
import json, sys, time
from sparcl.client import SparclClient
base, ids_file, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = json.load(open(ids_file))
client = SparclClient(url=base, announcement=False)
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter()
    r = client.retrieve(ids, limit=len(ids), dataset_list=["BENCH-DR1"])
    best = min(best, time.perf_counter() - t)
    assert len(r.records) == len(ids), len(r.records)
print(json.dumps({"spectra": len(ids), "seconds": best, "spectra_per_s": len(ids) / best}))
'''


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meridian", help="the meridian binary (default: target/release, else target/debug)")
    ap.add_argument("--work", default="/tmp/meridian-bench-spectra")
    ap.add_argument("--spectra", type=int, default=100_000)
    ap.add_argument("--sizes", default="1000,24000")
    ap.add_argument("--astropy-files", type=int, default=1000)
    ap.add_argument("--python", default=os.environ.get(
        "SPARCL_PYTHON", str(Path.home() / ".cache/meridian/sparcl-venv/bin/python")))
    args = ap.parse_args()
    binary = meridian_bin(args)
    work = Path(args.work)
    data = work / f"data-{args.spectra}"
    sizes = [int(s) for s in args.sizes.split(",")]
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "binary": binary},
              "args": vars(args)}
    if not (data / "spectra" / "BENCH-DR1").exists():
        t = time.perf_counter()
        sh(binary, "--quiet", "--data-dir", data, "generate", "--out", data / "survey", "--seed", 1,
           "--objects", 2 * args.spectra, "--spectra", args.spectra, "--spectra-dataset", "BENCH-DR1")
        result["generate_seconds"] = time.perf_counter() - t
    # In process.
    p = sh(binary, "--quiet", "--data-dir", data, "bench", "spectra", "BENCH-DR1",
           *sum((["--ids", n] for n in sizes), []), "--stack-grid", "3600:9800:2")
    inproc = json.loads(p.stdout.strip().splitlines()[-1])
    result["in_process"] = inproc
    # Through sparclclient over loopback.
    proc = subprocess.Popen([binary, "--data-dir", data, "serve", "--addr", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import re
        url = None
        while url is None:
            line = proc.stderr.readline()
            if not line:
                sys.exit("meridian serve did not start")
            m = re.search(r"TAP service: (http://\S+)/tap", line)
            url = m.group(1) if m else None
        # Keep reading the log: a full pipe would stop the server.
        import threading
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        import requests
        rows = requests.get(f"{url}/tap/sync", params={
            "LANG": "ADQL", "FORMAT": "csv", "MAXREC": 10**7,
            "QUERY": "SELECT sparcl_id, specid FROM spectra.bench_dr1"}).text.split()[1:]
        ids = [r.split(",")[0] for r in rows]
        rng = random.Random(2)
        client = []
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "client.py"
            script.write_text(CLIENT)
            for n in sizes:
                f = Path(tmp) / f"ids-{n}.json"
                f.write_text(json.dumps(rng.sample(ids, n)))
                p = sh(args.python, script, f"{url}/sparcl", f, 3, timeout=3600)
                client.append(json.loads(p.stdout.strip().splitlines()[-1]))
            result["sparclclient"] = client
            # astropy on per-spectrum FITS files.
            files = []
            for i in rng.sample(ids, min(args.astropy_files, len(ids))):
                out = Path(tmp) / f"{i}.fits"
                r = requests.get(f"{url}/spectra/file", params={"ID": i, "FORMAT": "fits"})
                r.raise_for_status()
                out.write_bytes(r.content)
                files.append(out)
            from astropy.io import fits
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                for f in files:
                    d = fits.getdata(f, "SPECTRUM")
                    _ = (d["WAVELENGTH"], d["FLUX"])
                best = min(best, time.perf_counter() - t)
            result["astropy"] = {"spectra": len(files), "seconds": best, "spectra_per_s": len(files) / best}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    a = result["astropy"]["spectra_per_s"]
    for r in inproc["retrieve"]:
        r["vs_astropy"] = r["spectra_per_s"] / a
    for r in result["sparclclient"]:
        r["vs_astropy"] = r["spectra_per_s"] / a
    out = ROOT / "bench" / "results" / f"spectra-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
