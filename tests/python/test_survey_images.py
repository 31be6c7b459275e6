"""A synthetic survey of 10,000 images (`meridian generate --images`), registered and
searched with pyvo's SIA2Service; a source measured on a SODA cutout is checked against
its Object row.

Oracles: astropy.wcs on each image's own header for footprints (for the images whose
pointing is near a query; the others are too far to meet it whatever their WCS), the
survey's own bands (LSST u..y limits) and astropy.time for the time windows, and the
Object table read with pyarrow for the sources."""

import glob
import io
import json
import os
import subprocess
import warnings

import numpy as np
import pytest
import requests

from conftest import Server, meridian_bin

warnings.simplefilter("ignore")
N_IMAGES = 10_000
SIZE = 32
PIXEL_ARCSEC = 0.2
FIELD_DEG = SIZE * PIXEL_ARCSEC / 3600
LSST = {"u": (320e-9, 400e-9), "g": (400e-9, 552e-9), "r": (552e-9, 691e-9),
        "i": (691e-9, 818e-9), "z": (818e-9, 922e-9), "y": (922e-9, 1060e-9)}


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("survey")
    out, data = root / "gen", root / "data"
    subprocess.run([meridian_bin(), "generate", "--out", str(out), "--objects", "100000",
                    "--images", str(N_IMAGES), "--image-size", str(SIZE), "--seed", "11", "--quiet"],
                   check=True, capture_output=True, timeout=900)
    files = sorted(glob.glob(str(out / "images" / "*.fits")))
    assert len(files) == N_IMAGES
    subprocess.run([meridian_bin(), "--data-dir", str(data), "images", "add", "synth",
                    str(out / "images"), "--quiet"], check=True, capture_output=True, timeout=900)
    doc = json.loads((data / "images" / "synth.json").read_text())
    # Two detectors a file for some: more datasets than files.
    assert len(doc["datasets"]) > N_IMAGES
    with Server(data) as s:
        yield s.url.removesuffix("/tap"), out, doc


def headers(files):
    from astropy.io import fits
    out = {}
    for f in files:
        with fits.open(f) as hl:
            for i, h in enumerate(hl):
                if h.header.get("NAXIS", 0) == 2 or h.header.get("ZNAXIS", 0) == 2:
                    out[(f, i)] = h.header
    return out


def test_files_are_what_they_say(survey):
    from astropy.io import fits
    _, out, doc = survey
    files = sorted(glob.glob(str(out / "images" / "*.fits")))
    kinds = {"plain": 0, "rice": 0, "mef": 0}
    for f in files[:40]:
        with fits.open(f) as hl:
            if any(isinstance(h, fits.CompImageHDU) and h.compression_type == "RICE_1" for h in hl):
                kinds["rice"] += 1
            elif len(hl) == 3:
                kinds["mef"] += 1
            else:
                kinds["plain"] += 1
            h = next(h for h in hl if h.data is not None)
            assert h.header["CTYPE1"] == "RA---TAN-SIP" and h.header["FILTER"] in LSST
    assert all(kinds.values()), kinds


def test_sia_matches_astropy_footprints(survey):
    import astropy.units as u
    import pyvo
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS
    base, out, doc = survey
    sia = pyvo.dal.SIA2Service(f"{base}/sia")
    tap = pyvo.dal.TAPService(f"{base}/tap")
    rng = np.random.default_rng(5)
    ds = doc["datasets"]
    centres = SkyCoord([d["ra_deg"] for d in ds] * u.deg, [d["dec_deg"] for d in ds] * u.deg)
    checked = 0
    for k in rng.choice(len(ds), 25, replace=False):
        ra = ds[k]["ra_deg"] + rng.uniform(-1, 1) * FIELD_DEG
        dec = ds[k]["dec_deg"] + rng.uniform(-1, 1) * FIELD_DEG
        r = rng.uniform(0.2, 1.5) * FIELD_DEG
        c = SkyCoord(ra * u.deg, dec * u.deg)
        near = np.nonzero(centres.separation(c).deg < r + 2 * FIELD_DEG)[0]
        yes, no = set(), set()
        for j in near:
            d = ds[j]
            with fits.open(d["path"]) as hl:
                w = WCS(hl[d["hdu"]].header, hl)
            n = d["width"]
            e = np.linspace(0.5, n + 0.5, 4 * n + 1)
            px = np.concatenate([e, e, np.full_like(e, 0.5), np.full_like(e, n + 0.5)])
            py = np.concatenate([np.full_like(e, 0.5), np.full_like(e, n + 0.5), e, e])
            gx, gy = np.meshgrid(np.linspace(1, n, 9), np.linspace(1, n, 9))
            pts = w.pixel_to_world(np.concatenate([px, gx.ravel()]) - 1,
                                   np.concatenate([py, gy.ravel()]) - 1)
            nearest = pts.separation(c).deg.min()
            key = f"ivo://meridian/images/synth?{d['id']}"
            if nearest <= r - 0.01 / 3600:
                yes.add(key)
            elif nearest >= r + 0.01 / 3600:
                no.add(key)
        got = {row["obs_publisher_did"] for row in sia.search(pos=(ra, dec, r), maxrec=10_000)}
        # ivoa.obscore over TAP (read through its position index) agrees with SIA.
        adql = (f"SELECT obs_publisher_did FROM ivoa.obscore "
                f"WHERE 1 = INTERSECTS(s_region, CIRCLE('ICRS', {ra}, {dec}, {r}))")
        assert {row["obs_publisher_did"] for row in tap.search(adql)} == got, adql
        far = {f"ivo://meridian/images/synth?{ds[j]['id']}" for j in near}
        assert yes <= got, (ra, dec, r, yes - got)
        assert not (no & got)
        assert got <= far | yes, "an image far from the circle was returned"
        checked += len(yes)
    assert checked > 100


def test_band_and_time(survey):
    import pyvo
    from astropy.time import Time
    base, _, doc = survey
    sia = pyvo.dal.SIA2Service(f"{base}/sia")
    ds = doc["datasets"]
    from astropy.io import fits
    d = ds[123]
    with fits.open(d["path"]) as hl:
        h = hl[d["hdu"]].header
    pos = (d["ra_deg"], d["dec_deg"], FIELD_DEG / 4)
    # Each band interval finds exactly the images of that filter at the position.
    everything = list(sia.search(pos=pos, maxrec=10_000))
    filt = {}
    for row in everything:
        rd = next(x for x in ds if f"ivo://meridian/images/synth?{x['id']}" == row["obs_publisher_did"])
        with fits.open(rd["path"]) as hl:
            filt[row["obs_publisher_did"]] = (hl[rd["hdu"]].header["FILTER"],
                                              Time(hl[rd["hdu"]].header["DATE-OBS"], scale="utc").mjd,
                                              hl[rd["hdu"]].header["EXPTIME"])
    assert len(everything) >= 12
    for band, (lo, hi) in LSST.items():
        mid = (lo + hi) / 2
        got = {r["obs_publisher_did"] for r in sia.search(pos=pos, band=(mid - 1e-9, mid + 1e-9), maxrec=10_000)}
        assert got == {k for k, v in filt.items() if v[0] == band}, band
    t0 = Time(h["DATE-OBS"], scale="utc")
    got = {r["obs_publisher_did"] for r in sia.search(pos=pos, time=(t0 + 1 * u_s(), t0 + 2 * u_s()))}
    want = {k for k, v in filt.items() if v[1] <= t0.mjd + 2 / 86400 and v[1] + v[2] / 86400 >= t0.mjd + 1 / 86400}
    assert got == want and f"ivo://meridian/images/synth?{d['id']}" in got


def u_s():
    import astropy.units as u
    return u.s


def test_source_on_a_cutout_matches_its_object_row(survey):
    import astropy.units as u
    import pyarrow.parquet as pq
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS
    base, out, doc = survey
    objects = pq.read_table(sorted(glob.glob(str(out / "object-*.parquet")))).to_pandas()
    cat = SkyCoord(objects["ra"].values * u.deg, objects["dec"].values * u.deg)
    checked = 0
    for d in doc["datasets"][:60]:
        if d["hdu"] != 0 or d["filter"] != "r":
            continue
        c = SkyCoord(d["ra_deg"] * u.deg, d["dec_deg"] * u.deg)
        sep = cat.separation(c).deg
        j = int(np.argmin(sep))
        if sep[j] > 0.3 * FIELD_DEG:
            continue
        row = objects.iloc[j]
        r = requests.get(f"{base}/soda/sync", params={
            "ID": f"ivo://meridian/images/synth?{d['id']}", "CIRCLE": f"{row['ra']} {row['dec']} {2.0 / 3600}"})
        assert r.status_code == 200, r.text
        hdu = fits.open(io.BytesIO(r.content))[0]
        img = hdu.data.astype(float) - hdu.header["SKYLEVEL"]
        yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
        w = np.clip(img, 0, None)
        x, y = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
        pos = WCS(hdu.header).pixel_to_world(x, y)
        assert pos.separation(SkyCoord(row["ra"] * u.deg, row["dec"] * u.deg)).arcsec < 0.05
        # Aperture flux against the Object row's r magnitude (zero point in the header).
        flux = img[(xx - x) ** 2 + (yy - y) ** 2 <= (1.5 / PIXEL_ARCSEC) ** 2].sum()
        mag = hdu.header["MAGZERO"] - 2.5 * np.log10(flux)
        assert abs(mag - row["r_mag"]) < 0.05, (mag, row["r_mag"])
        checked += 1
    assert checked >= 3
