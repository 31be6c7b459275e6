"""SODA cutouts of the registered images, against astropy's Cutout2D.

For each real image (and each tile-compressed variant of M13) and circles at its centre,
near an edge and over a corner, the cutout must hold exactly the pixels astropy's
Cutout2D cuts for the same circle (its bounding box within a pixel of ours, the values
equal where they overlap), and astropy.wcs reading the cutout's header must place its
pixels where the original's WCS places them, within 1 mas. Compressed variants must give
the uncompressed image's pixels."""

import io
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


_DATA = {}


def soda_data_dir():
    return _DATA["dir"]


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    data = tmp_path_factory.mktemp("soda-data")
    _DATA["dir"] = data
    os.symlink(store / "catalogs", data / "catalogs")
    subprocess.run([meridian_bin(), "--data-dir", str(data), "images", "add", "shared", str(IMAGES),
                    "--quiet"], check=True, capture_output=True)
    doc = json.loads((data / "images" / "shared.json").read_text())
    with Server(data, env={"MERIDIAN_SERVER__CUTOUT_MAX_PIXELS": "2000000"}) as s:
        yield s.url.removesuffix("/tap"), doc


def did(d):
    return f"ivo://meridian/images/shared?{d['id']}"


def original(d, path=None):
    from astropy.io import fits
    from astropy.wcs import WCS
    with fits.open(path or d["path"]) as hl:
        hdu = hl[d["hdu"]] if path is None else next(h for h in hl if h.is_image and h.data is not None)
        return hdu.data.copy(), WCS(hdu.header, hl).celestial


def soda(base, **params):
    from astropy.io import fits
    r = requests.get(f"{base}/soda/sync", params=params)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"] == "application/fits"
    return fits.open(io.BytesIO(r.content))


def positions(d):
    """(ra, dec, radius) at the centre, near the middle of an edge, and over a corner."""
    r = d["fov_deg"] / 8
    (c1, c2) = d["corners_deg"][0], d["corners_deg"][1]
    mid = ((c1[0] + c2[0]) / 2 if abs(c1[0] - c2[0]) < 180 else ((c1[0] + c2[0] + 360) / 2) % 360,
           (c1[1] + c2[1]) / 2)
    return [(d["ra_deg"], d["dec_deg"], r), (mid[0], mid[1], r), (c1[0], c1[1], r)]


def check_cutout(hl, data, wcs, ra, dec, r):
    from astropy.coordinates import SkyCoord
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS
    import astropy.units as u
    cut = hl[0]
    assert any("Meridian cutout" in str(h) for h in cut.header.get("HISTORY", []))
    cw = WCS(cut.header).celestial
    ours = cut.data
    # Where the cutout's pixel (0, 0) sits in the original, from the pixel values' WCS:
    # the shift that makes both WCSs agree.
    px = wcs.world_to_pixel(cw.pixel_to_world(0, 0))
    x0, y0 = int(round(float(px[0]))), int(round(float(px[1])))
    # World coordinates of the cutout's pixels equal the original's at the shifted pixels.
    ny, nx = ours.shape[-2:]
    gy, gx = np.mgrid[0:ny:max(ny // 7, 1), 0:nx:max(nx // 7, 1)]
    a = cw.pixel_to_world(gx.ravel(), gy.ravel())
    b = wcs.pixel_to_world(gx.ravel() + x0, gy.ravel() + y0)
    assert np.max(SkyCoord(a).separation(SkyCoord(b)).to(u.mas).value) < 1.0
    # Pixels equal the original's.
    want = data[..., y0:y0 + ny, x0:x0 + nx]
    assert np.array_equal(ours, want, equal_nan=ours.dtype.kind == "f")
    # Cutout2D's box for the same circle is ours within a pixel.
    c2 = Cutout2D(data if data.ndim == 2 else data[0], SkyCoord(ra * u.deg, dec * u.deg),
                  2 * r * u.deg, wcs=wcs, mode="trim")
    (ay0, ay1), (ax0, ax1) = c2.bbox_original
    assert abs(ax0 - x0) <= 1 and abs(ay0 - y0) <= 1, (c2.bbox_original, x0, y0)
    assert abs(ax1 - (x0 + nx - 1)) <= 1 and abs(ay1 - (y0 + ny - 1)) <= 1, (c2.bbox_original, x0, y0, nx, ny)
    return x0, y0


def test_cutouts_of_every_real_image_match_cutout2d(service):
    base, doc = service
    checked = 0
    for d in doc["datasets"]:
        data, wcs = original(d)
        for ra, dec, r in positions(d):
            hl = soda(base, ID=did(d), CIRCLE=f"{ra} {dec} {r}")
            check_cutout(hl, data, wcs, ra, dec, r)
            checked += 1
    assert checked == 3 * len(doc["datasets"]) == 45


def test_compressed_variants_give_the_uncompressed_pixels(service):
    base, doc = service
    plain, wcs = original(None, IMAGES / "astropy_m13.fits")
    variants = [d for d in doc["datasets"] if d["id"].startswith("astropy_m13_")]
    assert len(variants) == 4
    for d in variants:
        for ra, dec, r in positions(d):
            hl = soda(base, ID=did(d), CIRCLE=f"{ra} {dec} {r}")
            check_cutout(hl, plain, wcs, ra, dec, r)


def test_pyvo_soda_through_sia_and_datalink(service):
    import astropy.units as u
    import pyvo
    from astropy.io import fits
    base, doc = service
    d = next(d for d in doc["datasets"] if d["id"] == "astropy_sip-wcs.fits")
    res = pyvo.dal.SIA2Service(f"{base}/sia").search(pos=(d["ra_deg"], d["dec_deg"], 0.001))
    rec = next(r for r in res if r["obs_publisher_did"] == did(d))
    r = d["fov_deg"] / 6
    stream = rec.processed(circle=[d["ra_deg"], d["dec_deg"], r] * u.deg)
    hl = fits.open(io.BytesIO(stream.read()))
    data, wcs = original(d)
    check_cutout(hl, data, wcs, d["ra_deg"], d["dec_deg"], r)
    # The same through DataLink's #cutout service descriptor.
    dl = rec.getdatalink()
    proc = dl.get_first_proc()
    stream = proc.processed(circle=[d["ra_deg"], d["dec_deg"], r] * u.deg)
    assert fits.open(io.BytesIO(stream.read()))[0].data.shape == hl[0].data.shape


def test_polygon_pos_pixels_and_several_hdus(service):
    base, doc = service
    ds = {d["id"]: d for d in doc["datasets"]}
    m13, sip = ds["astropy_m13.fits"], ds["astropy_sip-wcs.fits"]
    data, _ = original(m13)
    hl = soda(base, ID=did(m13), PIXELS="11:60,21:50")
    assert np.array_equal(hl[0].data, data[20:50, 10:60])
    # PIXELS past the edge are clipped; the header says what was cut.
    hl = soda(base, ID=did(m13), PIXELS="250:400,1:10")
    assert hl[0].data.shape == (10, 51)
    assert "[250:300,1:10]" in str(hl[0].header["HISTORY"])
    ra, dec = m13["ra_deg"], m13["dec_deg"]
    e = 0.01
    poly = f"{ra - e} {dec - e} {ra + e} {dec - e} {ra + e} {dec + e} {ra - e} {dec + e}"
    a = soda(base, ID=did(m13), POLYGON=poly)[0].data
    b = soda(base, ID=did(m13), POS=f"POLYGON {poly}")[0].data
    c = soda(base, ID=did(m13), POS=f"RANGE {ra - e} {ra + e} {dec - e} {dec + e}")[0].data
    assert a.shape == b.shape and np.array_equal(a, b) and abs(c.shape[0] - a.shape[0]) <= 2
    # Two IDs and two circles: one HDU each that overlaps, the first primary.
    r = requests.get(f"{base}/soda/sync", params=[
        ("ID", did(m13)), ("ID", did(sip)),
        ("CIRCLE", f"{ra} {dec} 0.01"), ("CIRCLE", f"{sip['ra_deg']} {sip['dec_deg']} 0.002")])
    from astropy.io import fits
    hl = fits.open(io.BytesIO(r.content))
    assert len(hl) == 2 and hl[1].header["XTENSION"] == "IMAGE"


def test_bad_requests(service):
    base, doc = service
    m13 = next(d for d in doc["datasets"] if d["id"] == "astropy_m13.fits")
    for params, status, says in [
        ({}, 400, "ID"),
        ({"ID": "ivo://meridian/images/shared?nosuch"}, 404, "ID"),
        ({"ID": did(m13), "CIRCLE": "10 95 1"}, 400, "CIRCLE"),
        ({"ID": did(m13), "CIRCLE": "1 2"}, 400, "CIRCLE"),
        ({"ID": did(m13), "POLYGON": "1 2 3"}, 400, "POLYGON"),
        ({"ID": did(m13), "POS": "SQUARE 1 2 3"}, 400, "POS"),
        ({"ID": did(m13), "PIXELS": "5:1,1:2"}, 400, "PIXELS"),
        ({"ID": did(m13), "PIXELS": "400:500,1:2"}, 400, "PIXELS"),
        ({"ID": did(m13), "CIRCLE": "0 -60 0.1"}, 400, "NoOverlap"),
        ({"ID": did(m13), "BAND": "1 2"}, 400, "BAND"),
        ({"ID": did(m13), "RESPONSEFORMAT": "text/html"}, 400, "RESPONSEFORMAT"),
    ]:
        r = requests.get(f"{base}/soda/sync", params=params)
        assert r.status_code == status, (params, r.status_code, r.text[:300])
        assert says in r.text, (params, r.text[:300])
    # Over the configured pixel limit (2e6): refused before any pixel is read.
    big = [("ID", did(m13))] * 30
    r = requests.get(f"{base}/soda/sync", params=big)
    assert r.status_code == 400 and "limit" in r.text
    assert requests.get(f"{base}/health").status_code == 200


def test_cli_sia_and_cutout_by_id(service, tmp_path):
    base, doc = service
    m13 = next(d for d in doc["datasets"] if d["id"] == "astropy_m13.fits")
    ra, dec = m13["ra_deg"], m13["dec_deg"]
    env = {**os.environ}
    data_dir = str(soda_data_dir())
    p = subprocess.run([meridian_bin(), "--data-dir", data_dir, "sia", "--pos", f"{ra},{dec},0.001",
                        "--collection", "shared"], capture_output=True, text=True, env=env, check=True)
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("obs_publisher_did")
    found = {line.split("\t")[0] for line in lines[1:]}
    assert found == {did(d) for d in doc["datasets"] if d["id"].startswith("astropy_m13")}
    out = tmp_path / "c.fits"
    r = 0.01
    subprocess.run([meridian_bin(), "--data-dir", data_dir, "cutout", did(m13), "--circle",
                    f"{ra},{dec},{r}", "--out", str(out)], capture_output=True, text=True, check=True)
    from astropy.io import fits
    via_http = soda(base, ID=did(m13), CIRCLE=f"{ra} {dec} {r}")
    with fits.open(out) as hl:
        assert np.array_equal(hl[0].data, via_http[0].data)
    p = subprocess.run([meridian_bin(), "--data-dir", data_dir, "cutout", "shared?nosuch", "--circle",
                        f"{ra},{dec},{r}", "--out", str(out)], capture_output=True, text=True)
    assert p.returncode != 0 and "no image dataset" in p.stderr


def test_async_cutout_job(service):
    import time
    import xml.etree.ElementTree as ET
    base, doc = service
    m13 = next(d for d in doc["datasets"] if d["id"] == "astropy_m13.fits")
    circle = f"{m13['ra_deg']} {m13['dec_deg']} 0.01"
    r = requests.post(f"{base}/soda/async", data={"ID": did(m13), "CIRCLE": circle, "PHASE": "RUN"},
                      allow_redirects=False)
    assert r.status_code == 303, r.text
    job = r.headers["location"]
    for _ in range(200):
        phase = requests.get(f"{job}/phase").text.strip()
        if phase in ("COMPLETED", "ERROR"):
            break
        time.sleep(0.05)
    assert phase == "COMPLETED", requests.get(job).text
    ns = {"uws": "http://www.ivoa.net/xml/UWS/v1.0", "xlink": "http://www.w3.org/1999/xlink"}
    results = ET.fromstring(requests.get(f"{job}/results").content)
    href = results.find("uws:result", ns).get("{http://www.w3.org/1999/xlink}href")
    from astropy.io import fits
    got = fits.open(io.BytesIO(requests.get(href).content))
    want = soda(base, ID=did(m13), CIRCLE=circle)
    assert np.array_equal(got[0].data, want[0].data)
    # A bad request is refused at once, before any job exists.
    r = requests.post(f"{base}/soda/async", data={"ID": did(m13), "CIRCLE": "0 -60 0.1"})
    assert r.status_code == 400 and "NoOverlap" in r.text


def test_circles_at_the_pole_and_odd_file_names(tmp_path):
    """A circle centred on a pole is cut whole; a file name outside ASCII leaves every
    header card 80 bytes long."""
    import shutil
    from astropy.io import fits
    from astropy.wcs import WCS
    n = 200
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=0.0, CRVAL2=90.0, CRPIX1=100.5, CRPIX2=100.5,
             CDELT1=-0.001, CDELT2=0.001)
    pole = tmp_path / "pole.fits"
    fits.PrimaryHDU(np.arange(n * n, dtype=np.float32).reshape(n, n), h).writeto(pole)
    for ra in (0, 123):
        out = tmp_path / f"c{ra}.fits"
        subprocess.run([meridian_bin(), "images", "cutout", str(pole), "--circle", f"{ra},90,0.05",
                        "--out", str(out)], check=True, capture_output=True)
        shape = fits.getdata(out).shape
        assert all(abs(s - 101) <= 1 for s in shape), (ra, shape)
    odd = tmp_path / "pöläröö-ñ.fits"
    shutil.copy(IMAGES / "astropy_m13.fits", odd)
    out = tmp_path / "odd.fits"
    subprocess.run([meridian_bin(), "images", "cutout", str(odd), "--pixels", "1:10,1:10", "--out", str(out)],
                   check=True, capture_output=True)
    raw = out.read_bytes()
    assert raw.index(b"END" + b" " * 77) % 80 == 0
    with fits.open(out) as hl:
        assert hl[0].data.shape == (10, 10) and WCS(hl[0].header).celestial.naxis == 2


def test_soda_bounds_regions_and_hdus(service):
    base, doc = service
    m13 = next(d for d in doc["datasets"] if d["id"] == "astropy_m13.fits")
    r = requests.get(f"{base}/soda/sync", params=[("ID", did(m13))] + [("PIXELS", "1:2,1:2")] * 70)
    assert r.status_code == 400 and "regions" in r.text
    r = requests.get(f"{base}/soda/sync", params=[("ID", did(m13))] * 5 + [("PIXELS", "1:2,1:2")] * 60)
    assert r.status_code == 400 and "HDUs" in r.text
