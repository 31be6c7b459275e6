"""Notebooks next to the data, end to end: `meridian serve` with `[notebooks] enabled`
runs the real JupyterHub (scripts/notebooks-setup.sh installs it), which signs users in
through Meridian's OAuth endpoints and spawns a JupyterLab per user whose files are the
user's Meridian storage and whose kernels hold the user's token.

In Debian's Chromium (Playwright): a user logs in to the portal, opens "My notebooks"
and lands in their JupyterLab without typing a password again, runs a cell that queries
TAP through pyvo with no credentials typed, and sees the answer, which is checked against
a direct query; another user can reach neither the first one's server nor their files;
logging out of Meridian ends the notebook's access to the data. Meridian is opened at
127.0.0.1 and the hub at 127.0.0.2: two hosts, so the login cookie of the one never
reaches the other."""

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
import requests

from conftest import CHROMIUM, Server, add_users, personal_env, token_of

HOME = Path(os.environ.get("MERIDIAN_NOTEBOOKS_HOME", Path.home() / ".cache/meridian/notebooks"))
HUB_HOST = "127.0.0.2"


def free_port(host):
    """A port free on `host` whose next two ports are free on 127.0.0.1 too (the hub's API
    and the proxy's)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port + 1))
                b.bind(("127.0.0.1", port + 2))
            return port
        except OSError:
            continue
    raise AssertionError("no free port triple")


def notebook(cells, kernel="meridian"):
    """A notebook document of code cells."""
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": kernel, "display_name": kernel, "language": "python"}},
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None,
                   "outputs": [], "source": src} for i, src in enumerate(cells)],
    }


def put(base, token, path, data):
    """Writes `data` at `path` of the token holder's storage (Data Lab's storage API)."""
    s = requests.Session()
    s.headers["X-DL-AuthToken"] = token
    r = s.get(f"{base}/storage/put", params={"name": f"vos://{path}"})
    assert r.status_code == 200, r.text
    r = requests.put(r.text, data=data)
    assert r.status_code in (200, 201, 204), r.text


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, reaching nothing but Meridian's and the hub's loopback hosts."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE {HUB_HOST}"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def hub(store, tmp_path_factory):
    assert (HOME / "hub/bin/jupyterhub").exists(), \
        f"the notebook hub is not installed in {HOME}: run scripts/notebooks-setup.sh"
    d = tmp_path_factory.mktemp("notebooks")
    port = free_port(HUB_HOST)
    env = personal_env(d, MERIDIAN_NOTEBOOKS__ENABLED="true",
                       MERIDIAN_NOTEBOOKS__URL=f"http://{HUB_HOST}:{port}",
                       MERIDIAN_NOTEBOOKS__IDLE_TIMEOUT_S="600")
    add_users(store, env, "alice", "bob")
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        deadline = time.time() + 120
        while time.time() < deadline:
            st = requests.get(f"{base}/api/notebooks").json()
            if st.get("state") == "running":
                try:
                    if requests.get(f"http://{HUB_HOST}:{port}/hub/health", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
            assert st.get("state") != "failed", st
            time.sleep(0.5)
        else:
            raise AssertionError(f"the hub did not start: {st}\n{''.join(s.log)}")
        yield {"base": base, "hub": f"http://{HUB_HOST}:{port}", "server": s}


def login_portal(ctx, base, user):
    page = ctx.new_page()
    page.goto(f"{base}/#/data")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(f"{user}-password")
    page.locator("form.login button[type=submit]").click()
    page.get_by_test_id("whoami").wait_for()
    return page


def open_notebooks(ctx, portal):
    """Clicks "My notebooks" in the portal; returns the hub's tab once JupyterLab shows."""
    with ctx.expect_page() as tab:
        portal.get_by_test_id("notebooks").click()
    lab = tab.value
    try:
        lab.wait_for_selector("#jp-main-dock-panel", timeout=180_000)
    except Exception as e:
        raise AssertionError(f"JupyterLab did not show: at {lab.url}: {lab.inner_text('body')[:500]}") from e
    return lab


def run_all(lab):
    """Runs every cell of the open notebook (JupyterLab's Run menu)."""
    lab.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # JupyterLab may ask which kernel to start even when the notebook names one: the
    # notebook's own (Meridian's) is chosen.
    try:
        lab.get_by_text("Select Kernel", exact=True).wait_for(timeout=5_000)
        lab.locator(".jp-Dialog select").select_option(label="Python 3 (Meridian: pyvo, lsdb)")
        lab.locator(".jp-Dialog").get_by_role("button", name="Select").click()
    except Exception:
        pass
    lab.get_by_role("menuitem", name="Run", exact=True).click()
    lab.get_by_text("Run All Cells", exact=True).click()


def test_sign_in_query_and_isolation(browser, hub, store):
    base, hub_url = hub["base"], hub["hub"]
    expected = requests.get(f"{base}/tap/sync", params={
        "REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "csv",
        "QUERY": "SELECT COUNT(*) AS n FROM gaia WHERE phot_g_mean_mag < 6"}).text.split()[1]
    alice_token = token_of(base, "alice")
    put(base, alice_token, "query.ipynb", json.dumps(notebook([
        "import os, meridian, pyvo\n"
        "svc = pyvo.dal.TAPService(os.environ['MERIDIAN_URL'] + '/tap', session=meridian.session())\n"
        "n = svc.search('SELECT COUNT(*) AS n FROM gaia WHERE phot_g_mean_mag < 6')['n'][0]\n"
        "print('BRIGHT', n, 'USER', meridian.whoami()['user'])",
    ])))
    put(base, alice_token, "whoami.ipynb", json.dumps(notebook([
        "import meridian\nprint('WHO', meridian.whoami())",
    ])))

    a = browser.new_context()
    portal = login_portal(a, base, "alice")
    lab = open_notebooks(a, portal)
    assert lab.url.startswith(f"{hub_url}/user/alice/"), lab.url
    # No password typed at the hub: the only login form filled was the portal's.
    lab.goto(f"{hub_url}/user/alice/lab/tree/query.ipynb")
    run_all(lab)
    out = lab.locator(".jp-OutputArea-output").filter(has_text="BRIGHT").first
    try:
        out.wait_for(timeout=120_000)
    except Exception as e:
        lab.screenshot(path="/tmp/nb-fail.png")
        raise AssertionError(f"no answer in the notebook: {lab.inner_text('body')[-1500:]}") from e
    assert out.inner_text().split() == ["BRIGHT", expected, "USER", "alice"]

    # Bob, logged in as himself, reaches neither Alice's server nor her files.
    b = browser.new_context()
    bob_portal = login_portal(b, base, "bob")
    bob_lab = open_notebooks(b, bob_portal)
    assert bob_lab.url.startswith(f"{hub_url}/user/bob/"), bob_lab.url
    r = b.request.get(f"{hub_url}/user/alice/api/contents", max_redirects=0)
    assert r.status in (302, 403, 404), r.status
    if r.status == 302:
        assert "/user/alice/" not in r.headers["location"] or "oauth" in r.headers["location"]
    r = b.request.get(f"{hub_url}/user/bob/api/contents")
    assert r.ok and "query.ipynb" not in r.text()
    r = b.request.get(f"{hub_url}/user/alice/api/contents/query.ipynb", max_redirects=0)
    assert r.status != 200 or "BRIGHT" not in r.text()

    # A notebook saved in JupyterLab is a file in Alice's storage.
    lab.keyboard.press("Control+s")
    s = requests.Session()
    s.headers["X-DL-AuthToken"] = alice_token
    deadline = time.time() + 30
    while time.time() < deadline:
        r = s.get(f"{base}/storage/get", params={"name": "vos://query.ipynb"})
        saved = requests.get(r.text).json() if r.status_code == 200 else {}
        if any("BRIGHT" in json.dumps(c.get("outputs", [])) for c in saved.get("cells", [])):
            break
        time.sleep(1)
    else:
        raise AssertionError("the saved notebook's outputs are not in storage")

    # Logging out of Meridian ends the notebook's access: the token the hub was given for
    # Alice is revoked with her login, so her files can no longer be read (nor her queries
    # run) from the notebook server.
    lab.goto(f"{hub_url}/user/alice/lab/tree/whoami.ipynb")
    lab.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    portal.get_by_role("button", name="Log out").click()
    portal.locator("form.login").wait_for()
    lab.reload()
    lab.get_by_text(re.compile("token has been revoked")).first.wait_for(timeout=120_000)
    a.close()
    b.close()


@pytest.mark.parametrize("trouble", ["missing hub", "port in use", "proxy API port in use"])
def test_a_hub_that_cannot_start_is_reported_and_the_rest_serves(store, tmp_path, trouble):
    port = free_port(HUB_HOST)
    env = personal_env(tmp_path, MERIDIAN_NOTEBOOKS__ENABLED="true",
                       MERIDIAN_NOTEBOOKS__URL=f"http://{HUB_HOST}:{port}")
    held = None
    if trouble == "missing hub":
        env["MERIDIAN_NOTEBOOKS__JUPYTERHUB"] = str(tmp_path / "no-such-jupyterhub")
        expected = "no-such-jupyterhub"
    elif trouble == "port in use":
        held = socket.socket()
        held.bind((HUB_HOST, port))
        held.listen()
        expected = f"cannot listen on {HUB_HOST}:{port}"
    else:
        held = socket.socket()
        held.bind(("127.0.0.1", port + 2))
        held.listen()
        expected = f"the notebook proxy's API port 127.0.0.1:{port + 2} is in use"
    try:
        with Server(store, env=env) as s:
            base = s.url.removesuffix("/tap")
            st = requests.get(f"{base}/api/notebooks").json()
            assert st["enabled"] and st["state"] == "failed", st
            assert expected in st["problem"], st
            assert any("notebook hub not started" in line for line in s.log) or \
                expected in "".join(s.log)
            # Everything else serves.
            r = requests.get(f"{s.url}/sync", params={
                "REQUEST": "doQuery", "LANG": "ADQL", "QUERY": "SELECT TOP 1 source_id FROM gaia"})
            assert r.status_code == 200
    finally:
        if held:
            held.close()
