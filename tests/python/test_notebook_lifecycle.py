"""The notebook hub's life under trouble, end to end in Debian's Chromium: a user's
JupyterLab killed with SIGKILL, then the hub itself killed with SIGKILL, while Meridian
keeps serving and the hub comes back (restarted by `meridian serve`; it takes the user's
running server over) with the user able to open their notebooks again, and nothing of the
hubs left once Meridian stops; a user's server held to its memory limit (the cell that asks
for more gets Python's MemoryError, the server lives on); an idle server stopped by the
culler."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from conftest import Server, add_users, personal_env, token_of
from test_notebooks import (HOME, HUB_HOST, browser, free_port, login_portal,  # noqa: F401
                            notebook, open_notebooks, put, run_all)


def processes(**environment):
    """Process ids whose command line and environment hold the given pieces: `cmdline` a
    substring of the command line, every other keyword an environment variable's value."""
    want_cmd = environment.pop("cmdline", "")
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = dict(kv.split("=", 1) for kv in
                       (d / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in kv)
        except OSError:
            continue
        if want_cmd in cmd and all(env.get(k) == v for k, v in environment.items()):
            found.append(int(d.name))
    return found


def user_server(hub_url, user):
    """The process id of `user`'s JupyterLab under the hub at `hub_url` (None if none)."""
    port = int(hub_url.rsplit(":", 1)[1])
    pids = processes(cmdline="jupyterhub-singleuser", JUPYTERHUB_USER=user,
                     JUPYTERHUB_API_URL=f"http://127.0.0.1:{port + 1}/hub/api")
    return pids[0] if pids else None


def cullers(hub_url):
    """Process ids of the idle cullers working for the hub at `hub_url`."""
    port = int(hub_url.rsplit(":", 1)[1])
    return processes(cmdline="meridian_hub.culler",
                     JUPYTERHUB_API_URL=f"http://127.0.0.1:{port + 1}/hub/api")


def hub_process(hub_url):
    pids = processes(cmdline="jupyterhub_config.py", MERIDIAN_HUB_PUBLIC_URL=hub_url)
    return pids[0] if pids else None


def wait(what, check, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {seconds} s")


def serves(server):
    """Meridian answers a TAP query."""
    r = requests.get(f"{server.url}/sync", params={
        "REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "csv",
        "QUERY": "SELECT COUNT(*) AS n FROM gaia"}, timeout=30)
    return r.status_code == 200 and int(r.text.split()[1]) > 0


def hub_up(base, hub_url):
    try:
        return requests.get(f"{base}/api/notebooks").json()["state"] == "running" and \
            requests.get(f"{hub_url}/hub/health", timeout=2).ok
    except requests.ConnectionError:
        return False


def start_hub(store, d, port, **settings):
    env = personal_env(d, MERIDIAN_NOTEBOOKS__ENABLED="true",
                       MERIDIAN_NOTEBOOKS__URL=f"http://{HUB_HOST}:{port}", **settings)
    add_users(store, env, "carol", "dave")
    s = Server(store, env=env)
    base = s.url.removesuffix("/tap")
    hub_url = f"http://{HUB_HOST}:{port}"
    try:
        wait("the hub starts", lambda: hub_up(base, hub_url), 90)
    except AssertionError:
        s.__exit__(None, None, None)
        raise
    return s, base, hub_url


def reopen(ctx, portal, hub_url, user, seconds=120):
    """Opens "My notebooks" until JupyterLab shows again with a live server: while the hub
    has not yet noticed that the user's server died (it polls servers every 10 s), the
    proxy answers 503 "Your server appears to be down"."""
    deadline = time.time() + seconds
    while True:
        with ctx.expect_page() as tab:
            portal.get_by_test_id("notebooks").click()
        lab = tab.value
        lab.locator("#jp-main-dock-panel").or_(
            lab.get_by_text("Your server appears to be down")).first.wait_for(timeout=180_000)
        if lab.locator("#jp-main-dock-panel").count() and user_server(hub_url, user):
            return lab
        lab.close()
        if time.time() > deadline:
            raise AssertionError(f"{user}'s JupyterLab did not come back within {seconds} s")
        time.sleep(2)


def test_kill_9_of_a_users_server_then_of_the_hub(browser, store, tmp_path):  # noqa: F811
    s, base, hub_url = start_hub(store, tmp_path, free_port(HUB_HOST))
    with s:
        ctx = browser.new_context()
        portal = login_portal(ctx, base, "carol")
        lab = open_notebooks(ctx, portal)
        first = wait("carol's server runs", lambda: user_server(hub_url, "carol"), 30)

        # Her JupyterLab dies: Meridian serves on; she opens her notebooks again.
        os.kill(first, signal.SIGKILL)
        wait("her server is gone", lambda: user_server(hub_url, "carol") is None, 30)
        assert serves(s)
        lab.close()
        lab = reopen(ctx, portal, hub_url, "carol")
        second = user_server(hub_url, "carol")
        assert second and second != first

        # The hub dies: Meridian serves on and says so; `meridian serve` starts it again.
        hub = hub_process(hub_url)
        assert hub, "the hub's process is not found"
        os.kill(hub, signal.SIGKILL)
        wait("Meridian sees the hub stop",
             lambda: requests.get(f"{base}/api/notebooks").json()["state"] != "running"
             or hub_process(hub_url) not in (None, hub), 30)
        assert serves(s)
        wait("the hub is restarted", lambda: hub_process(hub_url) not in (None, hub)
             and hub_up(base, hub_url), 120)
        st = requests.get(f"{base}/api/notebooks").json()
        assert st["state"] == "running", st
        # Her server lived on, and the new hub took it over (the old proxy replaced, the
        # old culler gone with its hub, the new one running).
        assert user_server(hub_url, "carol") == second
        wait("one culler runs", lambda: len(cullers(hub_url)) == 1, 30)
        lab.close()
        lab = reopen(ctx, portal, hub_url, "carol")
        assert lab.url.startswith(f"{hub_url}/user/carol/"), lab.url
        assert user_server(hub_url, "carol") == second
        assert serves(s)
        ctx.close()
    # Nothing of the hubs outlives Meridian: no hub, proxy, culler or user's server.
    wait("the hub's processes end with Meridian",
         lambda: not processes(MERIDIAN_HUB_PUBLIC_URL=hub_url) and user_server(hub_url, "carol") is None
         and not cullers(hub_url), 30)


def test_memory_limit_and_idle_culling(browser, store, tmp_path):  # noqa: F811
    s, base, hub_url = start_hub(store, tmp_path, free_port(HUB_HOST),
                                 MERIDIAN_NOTEBOOKS__MEM_LIMIT_MIB="1024",
                                 MERIDIAN_NOTEBOOKS__IDLE_TIMEOUT_S="30")
    with s:
        token = token_of(base, "dave")
        put(base, token, "big.ipynb", json.dumps(notebook([
            "try:\n    x = bytearray(3 * 2**30)\nexcept MemoryError:\n    print('REFUSED', 'MemoryError')",
            "print('STILL', 'HERE', len(bytearray(64 * 2**20)))",
        ])))
        ctx = browser.new_context()
        portal = login_portal(ctx, base, "dave")
        lab = open_notebooks(ctx, portal)
        pid = wait("dave's server runs", lambda: user_server(hub_url, "dave"), 30)
        limit = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                     if line.startswith("Max data size"))
        assert limit.split()[3] == str(1024 * 2**20), limit

        lab.goto(f"{hub_url}/user/dave/lab/tree/big.ipynb")
        run_all(lab)
        out = lab.locator(".jp-OutputArea-output").filter(has_text="STILL")
        out.first.wait_for(timeout=120_000)
        text = lab.locator(".jp-Notebook").inner_text()
        assert "REFUSED MemoryError" in text, text[-1000:]
        assert f"STILL HERE {64 * 2**20}" in text
        assert user_server(hub_url, "dave") == pid

        # Left alone, the server is stopped by the culler (30 s idle, checked every 15 s);
        # the hub and Meridian serve on.
        ctx.close()
        wait("the idle server is culled", lambda: user_server(hub_url, "dave") is None, 150)
        assert hub_up(base, hub_url)
        assert serves(s)


def test_my_notebooks_right_after_a_stop_opens_jupyterlab(browser, store, tmp_path):  # noqa: F811
    """A user stops their server from the hub's home page and opens "My notebooks" at once:
    while the stop is pending JupyterHub shows "Your server is stopping", then (once
    stopped) a "not running" page that waits for a click; Meridian's pages start the server
    by themselves and JupyterLab opens. The "not running" page on the way to a spawn does
    too."""
    s, base, hub_url = start_hub(store, tmp_path, free_port(HUB_HOST))
    with s:
        ctx = browser.new_context()
        portal = login_portal(ctx, base, "dave")
        lab = open_notebooks(ctx, portal)
        first = wait("dave's server runs", lambda: user_server(hub_url, "dave"), 30)
        lab.close()
        home = ctx.new_page()
        home.goto(f"{hub_url}/hub/home")
        home.locator("#stop").click()
        with ctx.expect_page() as tab:
            portal.get_by_test_id("notebooks").click()
        tab.value.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
        second = wait("dave's new server runs", lambda: user_server(hub_url, "dave"), 30)
        assert second != first
        tab.value.close()

        # Stopped (and known to be stopped): the spawn-pending page starts it.
        home.goto(f"{hub_url}/hub/home")
        home.locator("#stop").click()
        home.locator("#start").wait_for(timeout=60_000)
        wait("dave's server stops", lambda: user_server(hub_url, "dave") is None, 60)
        page = ctx.new_page()
        page.goto(f"{hub_url}/hub/spawn-pending/dave")
        page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
        assert user_server(hub_url, "dave") not in (None, first, second)
        ctx.close()
