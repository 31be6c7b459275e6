#!/usr/bin/env python3
"""TAP service benchmarks, end to end over loopback HTTP against `meridian serve` (release
build), one run:

- small cone-search latency (p50, p99): 1-arcmin cones at random centres, one client,
  keep-alive, sync GET, VOTable BINARY2 (the default);
- requests per second under a bounded load: `wrk` with a fixed number of connections, each
  request a 1-arcmin cone at a random centre (a Lua script draws them);
- streaming throughput of a 10^7-row result in every output format, with the server's
  peak RSS during each transfer (reset before each one through /proc/PID/clear_refs).

    python3 bench/tap.py --data /tmp/mbq/data --catalog object_100000000

The catalog is one that `bench/query.py` generates and ingests (any HATS catalog with ra
and dec columns works). Client and server share the machine: on 2 cores they compete.
"""

import argparse
import http.client
import json
import math
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

ROOT = Path(__file__).resolve().parents[1]

FORMATS = ["votable", "votable/td", "votable/b", "csv", "tsv", "fits", "parquet", "json"]


class Server:
    def __init__(self, binary, data, env):
        self.jobs = tempfile.TemporaryDirectory(prefix="meridian-bench-jobs-")
        self.log = open(Path(self.jobs.name) / "server.log", "w+")
        self.proc = subprocess.Popen(
            [binary, "--data-dir", data, "serve", "--addr", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, **env, "MERIDIAN_JOBS__DIR": self.jobs.name})
        deadline = time.time() + 120
        self.host = None
        while time.time() < deadline and self.host is None:
            time.sleep(0.2)
            m = re.search(r"TAP service: http://([\d.]+):(\d+)/tap", Path(self.log.name).read_text())
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
        if self.host is None:
            sys.exit("meridian serve did not start:\n" + Path(self.log.name).read_text()[-2000:])

    def rss_reset(self):
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def rss_peak_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def rss_now_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def cone_query(catalog, ra, dec, radius_deg):
    return (f"SELECT * FROM {catalog} WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
            f"CIRCLE('ICRS', {ra:.6f}, {dec:.6f}, {radius_deg}))")


def random_centre(rng):
    """Uniform on the sphere."""
    return rng.uniform(0, 360), math.degrees(math.asin(rng.uniform(-1, 1)))


def cone_latency(server, catalog, n, warmup, seed):
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(server.host, server.port)
    times = []
    for i in range(warmup + n):
        ra, dec = random_centre(rng)
        q = urllib.parse.urlencode({"LANG": "ADQL", "QUERY": cone_query(catalog, ra, dec, 1 / 60)})
        t = time.perf_counter()
        conn.request("GET", f"/tap/sync?{q}")
        r = conn.getresponse()
        body = r.read()
        dt = time.perf_counter() - t
        if r.status != 200:
            sys.exit(f"cone query failed ({r.status}): {body[:500]!r}")
        if i >= warmup:
            times.append(dt * 1e3)
    times.sort()
    return {
        "cones": n,
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3),
        "mean_ms": round(statistics.fmean(times), 3),
    }


WRK_SCRIPT = """
math.randomseed(%(seed)d)
local function enc(s)
  return (s:gsub("[^%%w%%-%%._~]", function(c) return string.format("%%%%%%02X", string.byte(c)) end))
end
request = function()
  local ra = math.random() * 360
  local dec = math.deg(math.asin(2 * math.random() - 1))
  local q = string.format("SELECT * FROM %(catalog)s WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', %%.6f, %%.6f, 0.0166667))", ra, dec)
  return wrk.format("GET", "/tap/sync?LANG=ADQL&QUERY=" .. enc(q))
end
done = function(summary, latency, requests)
  io.write(string.format("ERRORS %%d %%d\\n", summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def wrk_load(server, catalog, connections, threads, seconds, seed):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % {"seed": seed, "catalog": catalog})
        script = f.name
    p = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                        "-s", script, f"http://{server.host}:{server.port}"],
                       capture_output=True, text=True)
    os.unlink(script)
    out = p.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    errors = re.search(r"ERRORS (\d+) (\d+)", out)
    return {
        "connections": connections,
        "threads": threads,
        "seconds": seconds,
        "requests_per_s": rps,
        "latency_p50": lat.get("50"),
        "latency_p99": lat.get("99"),
        "non_2xx": int(errors.group(1)) if errors else None,
        "socket_errors": int(errors.group(2)) if errors else None,
        "raw": out,
    }


def stream(server, catalog, rows, fmt):
    q = urllib.parse.urlencode({"LANG": "ADQL", "QUERY": f"SELECT TOP {rows} * FROM {catalog}",
                                "MAXREC": rows, "RESPONSEFORMAT": fmt})
    server.rss_reset()
    base = server.rss_now_mib()
    conn = http.client.HTTPConnection(server.host, server.port)
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(server.rss_now_mib())
            time.sleep(0.25)

    threading.Thread(target=sample, daemon=True).start()
    t = time.perf_counter()
    conn.request("GET", f"/tap/sync?{q}")
    r = conn.getresponse()
    if r.status != 200:
        sys.exit(f"{fmt}: HTTP {r.status}: {r.read(500)!r}")
    total = 0
    while True:
        chunk = r.read(1 << 20)
        if not chunk:
            break
        total += len(chunk)
    dt = time.perf_counter() - t
    stop.set()
    return {
        "format": fmt,
        "rows": rows,
        "bytes": total,
        "seconds": round(dt, 3),
        "mb_per_s": round(total / dt / 1e6, 1),
        "rows_per_s": round(rows / dt),
        "rss_before_mib": round(base, 1),
        "rss_peak_mib": round(server.rss_peak_mib(), 1),
        "rss_samples_mib": [round(s, 1) for s in samples[:: max(1, len(samples) // 20)]],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data directory holding the catalog")
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--meridian", default=str(ROOT / "target/release/meridian"))
    ap.add_argument("--cones", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--log-level", default="info", help="server log level (request lines are info)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    server = Server(args.meridian, args.data, {"MERIDIAN_LOG__LEVEL": args.log_level})
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "catalog": args.catalog,
        "server_log_level": args.log_level,
    }
    try:
        print("cone latency ...", flush=True)
        result["cone_1arcmin"] = cone_latency(server, args.catalog, args.cones, 100, args.seed)
        print(json.dumps(result["cone_1arcmin"]), flush=True)
        print("wrk load ...", flush=True)
        w = wrk_load(server, args.catalog, args.connections, args.wrk_threads, args.seconds, args.seed)
        print({k: v for k, v in w.items() if k != "raw"}, flush=True)
        result["load_1arcmin"] = w
        result["streaming"] = []
        for fmt in args.formats.split(","):
            s = stream(server, args.catalog, args.rows, fmt)
            print(json.dumps({k: v for k, v in s.items() if k != "rss_samples_mib"}), flush=True)
            result["streaming"].append(s)
    finally:
        server.stop()
    out = ROOT / "bench/results" / f"tap-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
