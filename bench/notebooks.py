#!/usr/bin/env python3
"""Notebooks: the time from "My notebooks" to a usable JupyterLab, and the memory of each
user's idle server.

    python3 bench/notebooks.py                 # 4 users: about 3 minutes on 2 cores
    python3 bench/notebooks.py --users 8

`meridian serve` (the release binary, else the debug one; `--meridian` names one) with
`[notebooks] enabled`, running the hub that scripts/notebooks-setup.sh installs, driven by
Debian's Chromium through Playwright. For each user in turn, in a new browser context:
log in to the portal, click "My notebooks", and time until JupyterLab's main area shows
(the server spawned, the hub's OAuth round trip through Meridian done); then open a
notebook and time its first cell, a TAP query through the `meridian` helper, from "Run"
to its answer (a kernel started and the query answered). The first user meets a cold
disk cache; the others show the warm machine. Then, with every user's server left idle
for 20 s, the memory of each (the JupyterLab process and its kernel): resident (RSS) and
proportional (PSS, shared pages divided among the processes sharing them, which is what
adding a user costs). Last, each user's server is stopped from the hub and opened again
(a warm respawn).

Results: bench/results/notebooks-<time>.json (and a line per figure on stdout).
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from images import Server, meridian_bin  # noqa: E402

CHROMIUM = "/usr/lib/chromium/chromium"
HUB_HOST = "127.0.0.2"
HOME = Path(os.environ.get("MERIDIAN_NOTEBOOKS_HOME", Path.home() / ".cache/meridian/notebooks"))


def free_port():
    """A port free on the hub's host whose next two are free on 127.0.0.1 (the hub's API
    and the proxy's)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((HUB_HOST, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as c:
                a.bind(("127.0.0.1", port + 1))
                c.bind(("127.0.0.1", port + 2))
            return port
        except OSError:
            continue
    sys.exit("no free port pair")


def memory_kib(pid):
    """RSS and PSS of a process, KiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        k, _, v = line.partition(":")
        if k == "Rss":
            rss = int(v.split()[0])
        elif k == "Pss":
            pss = int(v.split()[0])
    return rss, pss


def user_processes(hub_port, user):
    """{'server': pid, 'kernels': [pid...]} of `user`'s JupyterLab under the hub."""
    found = {"server": None, "kernels": []}
    api = f"http://127.0.0.1:{hub_port + 1}/hub/api"
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (d / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if f"JUPYTERHUB_USER={user}" not in env or f"JUPYTERHUB_API_URL={api}" not in env:
            continue
        if "jupyterhub-singleuser" in cmd:
            found["server"] = int(d.name)
        elif "ipykernel" in cmd:
            found["kernels"].append(int(d.name))
    return found


def stats(xs):
    return {"values": xs, "median": statistics.median(xs), "best": min(xs), "worst": max(xs)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meridian", help="the meridian binary (default: target/release, else target/debug)")
    ap.add_argument("--work", default="/tmp/meridian-bench-notebooks")
    ap.add_argument("--users", type=int, default=4)
    args = ap.parse_args()
    if not (HOME / "hub/bin/jupyterhub").exists():
        sys.exit(f"the notebook hub is not installed in {HOME}: run scripts/notebooks-setup.sh")
    binary = meridian_bin(args)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    data.mkdir(parents=True)
    users = [f"user{i}" for i in range(args.users)]
    for u in users:
        subprocess.run([binary, "--quiet", "--data-dir", str(data), "user", "add", u],
                       input=f"{u}-password\n", text=True, check=True, capture_output=True)
    port = free_port()
    hub = f"http://{HUB_HOST}:{port}"
    srv = Server(binary, data, env={
        "MERIDIAN_NOTEBOOKS__ENABLED": "true", "MERIDIAN_NOTEBOOKS__URL": hub,
        "MERIDIAN_JOBS__DIR": str(work / "jobs"), "MERIDIAN_LOG__LEVEL": "info",
        "MERIDIAN_QUOTAS__REQUESTS_PER_MINUTE": "0"})
    import requests
    def hub_ready():
        try:
            return (requests.get(f"{srv.url}/api/notebooks").json()["state"] == "running"
                    and requests.get(f"{hub}/hub/health", timeout=5).ok)
        except requests.ConnectionError:  # the hub's proxy not listening yet
            return False

    deadline = time.time() + 90
    while not hub_ready():
        if time.time() > deadline:
            sys.exit("the hub did not start")
        time.sleep(0.5)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "binary": binary,
                          "chromium": subprocess.run([CHROMIUM, "--version"], capture_output=True,
                                                     text=True).stdout.strip()},
              "args": vars(args)}
    cell = ("import meridian\n"
            "n = meridian.query('SELECT COUNT(*) AS n FROM tap_schema.tables')['n'][0]\n"
            "print('ANSWER', n)")
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "meridian", "display_name": "meridian", "language": "python"}},
          "cells": [{"cell_type": "code", "id": "c0", "metadata": {}, "execution_count": None,
                     "outputs": [], "source": cell}]}
    from playwright.sync_api import sync_playwright
    opened, first_cell, reopened, respawn_errors = [], [], [], []
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=[
                f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE {HUB_HOST}"])
            contexts = {}
            for u in users:
                token = requests.post(f"{srv.url}/api/auth/login",
                                      data={"username": u, "password": f"{u}-password"}).json()["token"]
                s = requests.Session()
                s.headers["X-DL-AuthToken"] = token
                r = s.get(f"{srv.url}/storage/put", params={"name": "vos://bench.ipynb"})
                requests.put(r.text, data=json.dumps(nb)).raise_for_status()
                ctx = b.new_context()
                portal = ctx.new_page()
                portal.goto(f"{srv.url}/#/data")
                portal.get_by_label("User name").fill(u)
                portal.get_by_label("Password").fill(f"{u}-password")
                portal.locator("form.login button[type=submit]").click()
                portal.get_by_test_id("whoami").wait_for()
                t0 = time.perf_counter()
                with ctx.expect_page() as tab:
                    portal.get_by_test_id("notebooks").click()
                lab = tab.value
                lab.wait_for_selector("#jp-main-dock-panel", timeout=180_000)
                opened.append(time.perf_counter() - t0)
                lab.goto(f"{hub}/user/{u}/lab/tree/bench.ipynb")
                lab.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
                # JupyterLab may ask which kernel to start even when the notebook names
                # one: Meridian's is chosen (as the end-to-end test does).
                try:
                    lab.get_by_text("Select Kernel", exact=True).wait_for(timeout=5_000)
                    lab.locator(".jp-Dialog select").select_option(label="Python 3 (Meridian: pyvo, lsdb)")
                    lab.locator(".jp-Dialog").get_by_role("button", name="Select").click()
                except Exception:
                    pass
                t0 = time.perf_counter()
                lab.get_by_role("menuitem", name="Run", exact=True).click()
                lab.get_by_text("Run All Cells", exact=True).click()
                lab.locator(".jp-OutputArea-output").filter(has_text="ANSWER").first.wait_for(timeout=120_000)
                first_cell.append(time.perf_counter() - t0)
                print(f"{u}: JupyterLab in {opened[-1]:.2f} s, first query cell in {first_cell[-1]:.2f} s",
                      flush=True)
                contexts[u] = (ctx, portal, lab)
            time.sleep(20)
            mem = {}
            for u in users:
                procs = user_processes(port, u)
                srv_mem = memory_kib(procs["server"])
                kern = [memory_kib(k) for k in procs["kernels"]]
                mem[u] = {"server_rss_mib": srv_mem[0] / 1024, "server_pss_mib": srv_mem[1] / 1024,
                          "kernel_rss_mib": sum(k[0] for k in kern) / 1024,
                          "kernel_pss_mib": sum(k[1] for k in kern) / 1024}
                print(f"{u}: idle server RSS {mem[u]['server_rss_mib']:.0f} MiB "
                      f"(PSS {mem[u]['server_pss_mib']:.0f}), its kernel RSS {mem[u]['kernel_rss_mib']:.0f} MiB "
                      f"(PSS {mem[u]['kernel_pss_mib']:.0f})", flush=True)
            # A warm respawn: the server stopped from the hub's home page, then opened again.
            for u in users:
                ctx, portal, lab = contexts[u]
                lab.close()
                home = ctx.new_page()
                home.goto(f"{hub}/hub/home")
                home.locator("#stop").click()
                home.locator("#start").wait_for(timeout=60_000)
                deadline = time.time() + 60
                while user_processes(port, u)["server"] and time.time() < deadline:
                    time.sleep(0.2)
                home.close()
                t0 = time.perf_counter()
                with ctx.expect_page() as tab:
                    portal.get_by_test_id("notebooks").click()
                try:
                    tab.value.wait_for_selector("#jp-main-dock-panel", timeout=180_000)
                except Exception as e:  # recorded, and the other figures still written
                    respawn_errors.append(f"{u}: {str(e).splitlines()[0]} (at {tab.value.url})")
                    print(respawn_errors[-1], flush=True)
                    ctx.close()
                    continue
                reopened.append(time.perf_counter() - t0)
                print(f"{u}: respawned JupyterLab in {reopened[-1]:.2f} s", flush=True)
                ctx.close()
            b.close()
    finally:
        # Meridian's log (the hub's lines in it) kept with the work directory.
        (work / "server.log").write_text("".join(srv.log))
        srv.close()
    warm = opened[1:] or opened
    result["open_to_jupyterlab_s"] = {"first_user": opened[0], "warm": stats(warm), "all": opened}
    result["first_query_cell_s"] = stats(first_cell)
    result["respawn_to_jupyterlab_s"] = stats(reopened) if reopened else None
    result["respawn_errors"] = respawn_errors
    result["idle_memory_mib"] = {
        "per_user": mem,
        "server_rss_median": statistics.median(m["server_rss_mib"] for m in mem.values()),
        "server_pss_median": statistics.median(m["server_pss_mib"] for m in mem.values()),
        "kernel_rss_median": statistics.median(m["kernel_rss_mib"] for m in mem.values()),
        "kernel_pss_median": statistics.median(m["kernel_pss_mib"] for m in mem.values()),
    }
    out = ROOT / "bench" / "results" / f"notebooks-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"open to JupyterLab: first user {opened[0]:.2f} s, warm median {statistics.median(warm):.2f} s; "
          f"respawn median {statistics.median(reopened) if reopened else float('nan'):.2f} s "
          f"({len(respawn_errors)} failed); first query cell median "
          f"{statistics.median(first_cell):.2f} s")
    print(f"idle server: RSS median {result['idle_memory_mib']['server_rss_median']:.0f} MiB, PSS median "
          f"{result['idle_memory_mib']['server_pss_median']:.0f} MiB; kernel RSS median "
          f"{result['idle_memory_mib']['kernel_rss_median']:.0f} MiB")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
