"""MOC 2.0 coverage of catalogs and image collections, served at /moc/<name> (FITS, JSON,
ASCII) and written by `meridian moc`. Oracles: mocpy's `MOC.from_lonlat` on the catalog's
rows read from the input file with astropy, and mocpy's polygon MOCs of the footprints
astropy.wcs computes from each image's header."""

import json
import os
import subprocess
import warnings

import numpy as np
import pytest
import requests

from conftest import SHARED, Server, meridian_bin

warnings.simplefilter("ignore")
IMAGES = SHARED / "images"


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    data = tmp_path_factory.mktemp("moc-data")
    os.symlink(store / "catalogs", data / "catalogs")
    subprocess.run([meridian_bin(), "--data-dir", str(data), "images", "add", "shared", str(IMAGES),
                    "--quiet"], check=True, capture_output=True)
    doc = json.loads((data / "images" / "shared.json").read_text())
    with Server(data) as s:
        yield s.url.removesuffix("/tap"), data, doc


@pytest.fixture(scope="module")
def gaia_rows():
    from astropy.table import Table
    t = Table.read(SHARED / "catalogs/gaia_dr3_bright.csv.gz", format="ascii.csv")
    return np.asarray(t["ra"], dtype=float), np.asarray(t["dec"], dtype=float)


def mocpy_of_rows(ra, dec, order):
    import astropy.units as u
    from mocpy import MOC
    return MOC.from_lonlat(ra * u.deg, dec * u.deg, max_norder=order)


@pytest.mark.parametrize("order", [3, 8, 11])
def test_catalog_moc_equals_mocpy(service, gaia_rows, order):
    from mocpy import MOC
    base, _, _ = service
    want = mocpy_of_rows(*gaia_rows, order)
    r = requests.get(f"{base}/moc/gaia", params={"order": order})
    assert r.status_code == 200 and r.headers["content-type"] == "application/fits", r.text[:200]
    got = MOC.from_fits(__import__("io").BytesIO(r.content))
    assert got == want
    assert got.max_order == order
    # The same cells as JSON and ASCII.
    j = requests.get(f"{base}/moc/gaia", params={"order": order, "fmt": "json"})
    assert MOC.from_json({k: v for k, v in j.json().items()}) == want
    a = requests.get(f"{base}/moc/gaia", params={"order": order, "fmt": "ascii"})
    assert a.headers["content-type"].startswith("text/plain")
    assert MOC.from_str(a.text) == want


def test_moc_command_writes_each_format(service, gaia_rows, tmp_path):
    from mocpy import MOC
    _, data, _ = service
    want = mocpy_of_rows(*gaia_rows, 9)
    for name, load in (("m.fits", MOC.from_fits), ("m.json", lambda p: MOC.from_json(json.load(open(p)))),
                       ("m.txt", lambda p: MOC.from_str(open(p).read()))):
        out = tmp_path / name
        p = subprocess.run([meridian_bin(), "--data-dir", str(data), "moc", "gaia", "--order", "9",
                            "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert load(str(out)) == want, name
        assert not (tmp_path / "m.partial").exists()


def astropy_footprint_moc(doc, order):
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS
    from mocpy import MOC
    mocs = []
    for d in doc["datasets"]:
        with fits.open(d["path"]) as hl:
            w = WCS(hl[d["hdu"]].header, hl).celestial
            ny, nx = d["height"], d["width"]
        # The outer corners of the corner pixels, as the images' footprints.
        corners = w.pixel_to_world([-0.5, nx - 0.5, nx - 0.5, -0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5])
        c = corners.icrs
        mocs.append(MOC.from_polygon_skycoord(SkyCoord(c.ra, c.dec), max_depth=order))
    out = mocs[0]
    for m in mocs[1:]:
        out = out.union(m)
    return out


@pytest.mark.parametrize("order", [6, 9])
def test_collection_moc_equals_mocpy_from_astropy_footprints(service, order):
    from mocpy import MOC
    base, _, doc = service
    want = astropy_footprint_moc(doc, order)
    r = requests.get(f"{base}/moc/shared", params={"order": order})
    assert r.status_code == 200, r.text[:300]
    got = MOC.from_fits(__import__("io").BytesIO(r.content))
    assert got == want, (got.sky_fraction, want.sky_fraction)


def test_bad_moc_requests_get_clear_errors(service):
    base, _, _ = service
    r = requests.get(f"{base}/moc/nothing")
    assert r.status_code == 404 and "nothing" in r.text
    r = requests.get(f"{base}/moc/gaia", params={"order": 40})
    assert r.status_code == 400 and "order" in r.text
    r = requests.get(f"{base}/moc/gaia", params={"fmt": "png"})
    assert r.status_code == 400 and "fmt" in r.text
    assert requests.get(f"{base}/health").status_code == 200
