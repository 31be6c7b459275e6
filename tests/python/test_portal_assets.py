"""The portal's files as `meridian serve` sends them: the page with a content security
policy that keeps its requests on the service, hashed assets cached for good and gzip
when asked, Aladin Lite as the unmodified npm file with its licence notices, and 404 for
paths nothing serves."""

import gzip
import re
from pathlib import Path

import requests

from conftest import Server

BROWSER = Path(__file__).resolve().parents[1] / "browser"


def test_the_portal_is_served_with_its_policy_and_caching(store):
    with Server(store) as s:
        base = s.url.removesuffix("/tap")
        r = requests.get(base + "/")
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        csp = r.headers["Content-Security-Policy"]
        assert "connect-src 'self' data: blob:" in csp and "default-src 'self'" in csp
        assert r.headers["Cache-Control"] == "no-cache"
        assets = re.findall(r'(?:src|href)="\./(assets/[^"]+)"', r.text)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
        for a in assets:
            plain = requests.get(f"{base}/{a}", headers={"Accept-Encoding": "identity"})
            assert plain.status_code == 200 and "immutable" in plain.headers["Cache-Control"]
            zipped = requests.get(f"{base}/{a}", headers={"Accept-Encoding": "gzip"}, stream=True)
            assert zipped.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(zipped.raw.read()) == plain.content
        # Aladin Lite: the npm package's file, unmodified, with its notices beside it.
        npm = (BROWSER / "node_modules/aladin-lite/dist/aladin.js").read_bytes()
        served = requests.get(f"{base}/vendor/aladin-lite/aladin.js")
        assert served.content == npm
        for notice in ["LICENSE", "COPYING", "COPYING.LESSER"]:
            n = requests.get(f"{base}/vendor/aladin-lite/{notice}")
            assert n.status_code == 200 and "GNU" in n.text
        assert requests.get(f"{base}/no/such/page").status_code == 404
        assert requests.post(f"{base}/").status_code in (404, 405)
        # The services keep their own answers.
        assert requests.get(f"{base}/tap/availability").status_code == 200
