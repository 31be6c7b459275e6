"""Image collections: `meridian images add` registers the shared images in place, one
dataset per image HDU, with footprints (centre and corners in ICRS) checked against
astropy (WCS, then SkyCoord to ICRS from FK4, FK5 or Galactic), times against
astropy.time; adding again reads only changed files; a bad file fails the add and leaves
the collection as it was, or is skipped and reported with --skip-bad."""

import json
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from conftest import SHARED, meridian_bin

warnings.simplefilter("ignore")
pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
IMAGES = SHARED / "images"


def images(data, *args, check=True):
    return subprocess.run([meridian_bin(), "--data-dir", str(data), "images", *map(str, args)],
                          capture_output=True, text=True, check=check, timeout=300)


def frame_of(w):
    sys = (w.wcs.radesys or "").upper()
    if w.wcs.ctype[0].startswith("GLON"):
        return "galactic"
    if sys == "FK4" or (not sys and w.wcs.equinox and w.wcs.equinox < 1984):
        return "fk4"
    return "fk5" if sys == "FK5" or (w.wcs.equinox and not np.isnan(w.wcs.equinox)) else "icrs"


def icrs(w, pixels):
    world = w.all_pix2world(pixels, 1)
    f = frame_of(w)
    kw = {"equinox": f"J{w.wcs.equinox}" if f == "fk5" else f"B{w.wcs.equinox}"} if f in ("fk4", "fk5") else {}
    c = SkyCoord(world[:, 0] * u.deg, world[:, 1] * u.deg, frame=f, **kw).icrs
    return c


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    data = tmp_path_factory.mktemp("images-data")
    p = images(data, "add", "shared", IMAGES, "--quiet")
    assert "shared:" in p.stdout, p.stdout + p.stderr
    doc = json.loads((data / "images" / "shared.json").read_text())
    return data, doc


def test_every_image_hdu_is_a_dataset_with_an_astropy_footprint(collection):
    data, doc = collection
    expected = {}
    for f in sorted(IMAGES.iterdir()):
        with fits.open(f) as h:
            for i, hdu in enumerate(h):
                if hdu.is_image and hdu.data is not None and hdu.data.ndim >= 2 \
                        and WCS(hdu.header).has_celestial:
                    expected[(f.name, i)] = hdu.header
    got = {(os.path.basename(d["path"]), d["hdu"]): d for d in doc["datasets"]}
    assert set(got) == set(expected)
    for key, header in expected.items():
        d, w = got[key], WCS(header).celestial
        ny, nx = d["height"], d["width"]
        centre = icrs(w, [[(nx + 1) / 2, (ny + 1) / 2]])
        corners = icrs(w, [[0.5, 0.5], [nx + 0.5, 0.5], [nx + 0.5, ny + 0.5], [0.5, ny + 0.5]])
        # FK4 without proper motions: astropy and the rotation used agree to well under 0.1".
        tol = 0.1 * u.arcsec
        assert SkyCoord(d["ra_deg"] * u.deg, d["dec_deg"] * u.deg).separation(centre)[0] < tol, key
        mine = SkyCoord([c[0] for c in d["corners_deg"]] * u.deg, [c[1] for c in d["corners_deg"]] * u.deg)
        assert (mine.separation(corners) < tol).all(), key
        fov = 2 * max(centre[0].separation(corners).deg)
        assert abs(d["fov_deg"] - fov) < 1e-6, key
        cx, cy = (nx + 1) / 2, (ny + 1) / 2
        c, right, up = icrs(w, [[cx, cy], [cx + 1, cy], [cx, cy + 1]])
        scale = np.sqrt(c.separation(right).arcsec * c.separation(up).arcsec)
        assert abs(d["pixel_arcsec"] - scale) < 1e-4, (key, d["pixel_arcsec"], scale)


def test_times_come_from_the_headers(collection):
    _, doc = collection
    checked = 0
    for d in doc["datasets"]:
        header = fits.getheader(d["path"], d["hdu"])
        if "MJD-OBS" in header:
            want = header["MJD-OBS"]
        elif "DATE-OBS" in header and "-" in header["DATE-OBS"]:
            want = Time(header["DATE-OBS"], format="isot", scale="utc").mjd
        else:
            continue
        checked += 1
        assert abs(d["t_min_mjd"] - want) < 1e-6, d["id"]
        exptime = header.get("EXPTIME", header.get("EXPOSURE", 0.0))
        assert abs(d["t_max_mjd"] - (want + exptime / 86400)) < 1e-6, d["id"]
    assert checked > 0


def test_adding_again_reads_only_changed_files(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(IMAGES, src)
    data = tmp_path / "data"
    first = images(data, "add", "c", src, "--quiet").stdout
    assert "15 images (15 files read, 0 unchanged" in first, first
    again = images(data, "add", "c", src, "--quiet").stdout
    assert "(0 files read, 15 unchanged" in again, again
    os.utime(src / "astropy_m13.fits", (1, 1))
    third = images(data, "add", "c", src, "--quiet").stdout
    assert "(1 files read, 14 unchanged" in third, third
    assert "c\t15 images" in images(data, "list").stdout
    shown = images(data, "show", "c").stdout.splitlines()
    assert shown[0].startswith("id\twidth") and len(shown) == 16
    assert any(line.startswith("astropy_m13_rice.fits[1]\t300\t300") for line in shown), shown


def test_bad_files_fail_the_add_or_are_skipped(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(IMAGES / "astropy_m13.fits", src / "good.fits")
    data = tmp_path / "data"
    images(data, "add", "c", src, "--quiet")
    before = (data / "images" / "c.json").read_text()
    (src / "zz-not.fits").write_bytes(b"not a FITS file at all" * 200)
    (src / "zz-truncated.fits").write_bytes((IMAGES / "astropy_m13.fits").read_bytes()[:10000])
    fits.PrimaryHDU(np.zeros((8, 8), dtype=np.int16)).writeto(src / "zz-nowcs.fits")
    p = images(data, "add", "c", src, "--quiet", check=False)
    assert p.returncode != 0 and "zz-nowcs.fits" in p.stderr or "zz-not.fits" in p.stderr, p.stderr
    assert (data / "images" / "c.json").read_text() == before  # nothing half-registered
    p = images(data, "add", "c", src, "--quiet", "--skip-bad")
    assert "1 images (0 files read, 1 unchanged, 3 skipped)" in p.stdout, p.stdout
    for name, why in [("zz-not.fits", "not a FITS file"), ("zz-truncated.fits", "truncated"),
                      ("zz-nowcs.fits", "no image with a celestial WCS")]:
        line = next(line for line in p.stderr.splitlines() if name in line)
        assert why in line, line
    assert images(data, "remove", "c").returncode == 0
    assert images(data, "show", "c", check=False).returncode != 0
    assert images(data, "add", "bad/name", src, check=False).returncode != 0


def test_quoted_globs_are_expanded(tmp_path):
    data = tmp_path / "data"
    out = images(data, "add", "m13", str(IMAGES / "astropy_m13*.fits"), "--quiet").stdout
    assert "5 images (5 files read" in out, out
    p = subprocess.run([meridian_bin(), "--data-dir", str(data), "images", "add", "none",
                        str(IMAGES / "nothing*.fits")], capture_output=True, text=True)
    assert p.returncode != 0 and "no FITS file matches" in p.stderr
