"""Aladin Lite 3.8.2 (npm, tests/browser) in headless Chromium (Debian's, driven by
Playwright, no browser download) shows each kind of HiPS Meridian serves: an image HiPS,
a density map and a catalog HiPS drawn over it. Every request the page makes is checked:
none may leave the machine (any that tries is recorded and refused). A screenshot shows
that pixels were drawn, and where: the image's bright core at its centre, catalog markers
in the catalog's colour."""

import functools
import http.server
import io
import os
import shutil
import subprocess
import threading
import urllib.parse
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, Server, meridian_bin

warnings.simplefilter("ignore")
BROWSER = Path(__file__).resolve().parents[1] / "browser"


@pytest.fixture(scope="module")
def meridian(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aladin")
    data = tmp / "data"
    data.mkdir()
    os.symlink(store / "catalogs", data / "catalogs")
    (tmp / "in").mkdir()
    shutil.copy(SHARED / "images/astropy_m13.fits", tmp / "in")
    for args in (["images", "add", "m13", str(tmp / "in")], ["hips", "build", "m13"],
                 ["hips", "density", "gaia", "--order", "3", "--tile-width", "32"],
                 ["hips", "catalog", "gaia"]):
        p = subprocess.run([meridian_bin(), "--data-dir", str(data), *args, "--quiet"], capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, p.stderr
    with Server(data) as s:
        yield s.url.removesuffix("/tap")


@pytest.fixture(scope="module")
def page_server():
    """The test page and Aladin Lite's files, on loopback."""
    assert (BROWSER / "node_modules/aladin-lite/dist/aladin.js").exists(), \
        "run scripts/test.sh (npm ci in tests/browser) first"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(BROWSER))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def show(browser, page_server, meridian, **query):
    """A screenshot (RGB array) of the page showing `query`, and the requests that tried
    to leave the machine."""
    from PIL import Image
    page = browser.new_page(viewport={"width": 512, "height": 512})
    outside, tiles = [], []

    def route(r):
        url = r.request.url
        host = urllib.parse.urlparse(url).hostname
        if url.startswith("data:") or url.startswith("blob:") or host in ("127.0.0.1", "localhost"):
            if "/hips/" in url:
                tiles.append(url)
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    page.route("**/*", route)
    qs = urllib.parse.urlencode({"base": meridian, **query})
    page.goto(f"{page_server}/aladin.html?{qs}")
    page.wait_for_function("window.ready === true || window.errors.length > 0", timeout=60_000)
    assert page.evaluate("window.errors") == []
    # Let the tiles arrive and be drawn.
    page.wait_for_timeout(6000)
    png = page.screenshot()
    if os.environ.get("ALADIN_SHOTS"):
        Path(os.environ["ALADIN_SHOTS"], f"{query['image']}.png").write_bytes(png)
    shot = np.array(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    errors = page.evaluate("window.errors")
    page.close()
    assert errors == [], errors
    return shot, outside, tiles


def test_image_hips_is_drawn(browser, page_server, meridian):
    shot, outside, tiles = show(browser, page_server, meridian, image="m13", target="250.4226 36.4613",
                                fov="0.07")
    assert outside == [], outside
    assert any("/hips/m13/" in t and ("Npix" in t or "Allsky" in t) for t in tiles), tiles
    grey = shot.mean(axis=2)
    # The image fills the view (on a black background), M13's core, at the centre, is
    # its brightest part.
    centre = grey[206:306, 206:306].mean()
    edge = np.concatenate([grey[60:100, 60:452].ravel(), grey[412:452, 60:452].ravel()]).mean()
    assert (grey[60:452, 60:452] > 0).mean() > 0.9
    assert grey.std() > 10 and centre > edge + 20, (grey.std(), centre, edge)


def test_density_map_and_catalog_hips_are_drawn(browser, page_server, meridian):
    shot, outside, tiles = show(browser, page_server, meridian, image="gaia-density", catalog="gaia-catalog",
                                target="266.4 -29.0", fov="40")
    assert outside == [], outside
    assert any("/hips/gaia-density/" in t for t in tiles), tiles
    assert any("/hips/gaia-catalog/" in t and t.endswith(".tsv") for t in tiles), tiles
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    # The density map: grey levels over most of the view (on a black background).
    grey = (np.abs(r - g) < 8) & (np.abs(g - b) < 8) & (r > 20)
    assert grey.mean() > 0.3, grey.mean()
    # The catalog: red square markers.
    red = (r > 200) & (g < 80) & (b < 80)
    assert red.sum() > 500, red.sum()
