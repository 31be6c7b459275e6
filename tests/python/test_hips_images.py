"""Image HiPS (`meridian hips build`) against two oracles, tile by tile.

1. CDS Hipsgen (Debian's aladin) on the same file (and on a synthetic survey of
   overlapping TAN-SIP images): the same tiles at the deepest order,
   and where both have a value, 99% of pixels within the documented tolerance: 2 (Hipsgen
   writes integer images as integers, so its values are rounded to a unit, and its
   positions differ from astropy's by up to milliarcseconds, which moves values on stars)
   or 0.2% of the image's data range, whichever is larger, and the median within 1. Two files are compared with astropy only: their WCS is
   a DSS plate solution, which Hipsgen (Aladin's own plate model) places differently from
   astropy.wcs, the reference Meridian's WCS is checked against (to 1 mas).
2. astropy.wcs and scipy on every image: each tile pixel's HEALPix centre (healpy) is
   taken to the image's pixels by astropy and interpolated bilinearly by scipy's
   `map_coordinates`; Meridian's value must be the same to float precision. Meridian (as
   Hipsgen) takes FK5 J2000 for ICRS (the 20 mas frame bias is left out), so the centres
   are given to astropy as FK5 J2000 positions, unless the image's own frame is ICRS.

Tile-compressed variants of M13 give the tiles of the plain file, value for value."""

import glob
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, meridian_bin

warnings.simplefilter("ignore")
IMAGES = SHARED / "images"
ALADIN = Path("/usr/share/java/aladin.jar")
DSS = {"astropy_dss.14.29.56-62.41.05.fits.gz", "ipac_ned_query_images.fits"}
PLAIN = sorted(p.name for p in IMAGES.iterdir() if "m13_" not in p.name)
SHIFT = 9  # 512-pixel tiles


def build(tmp, files, name="c"):
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, tmp / "in")
    data = tmp / "data"
    subprocess.run([meridian_bin(), "--data-dir", str(data), "images", "add", name, str(tmp / "in"), "--quiet"],
                   check=True, capture_output=True)
    p = subprocess.run([meridian_bin(), "--data-dir", str(data), "hips", "build", name, "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    root = data / "hips" / name
    props = {k.strip(): v.strip() for k, v in
             (line.split("=", 1) for line in (root / "properties").read_text().splitlines() if "=" in line)}
    return root, props


def tiles(root, order):
    return {Path(p).name: p for p in glob.glob(str(root / f"Norder{order}" / "Dir*" / "*.fits"))}


def values(path):
    from astropy.io import fits
    with fits.open(path) as h:
        d = h[0].data.astype(float)
        blank = h[0].header.get("BLANK")
    if blank is not None:
        with fits.open(path, do_not_scale_image_data=True) as h:
            d[h[0].data == blank] = np.nan
    return d


def synthetic_survey(tmp):
    """Ten synthetic survey images (TAN-SIP, several bands and epochs of a few objects,
    overlapping), the single-HDU uncompressed ones of `meridian generate`."""
    from astropy.io import fits
    subprocess.run([meridian_bin(), "--quiet", "generate", "--out", str(tmp / "gen"), "--objects", "3000",
                    "--images", "12", "--image-size", "128"], check=True, capture_output=True)
    out = []
    for f in sorted((tmp / "gen" / "images").glob("*.fits")):
        with fits.open(f) as h:
            if len(h) == 1:
                out.append(f)
    assert len(out) >= 8
    return out


@pytest.mark.skipif(not ALADIN.exists(), reason="scripts/test.sh installs aladin")
@pytest.mark.parametrize("name", [n for n in PLAIN if n not in DSS] + ["synthetic survey"])
def test_tiles_agree_with_hipsgen(tmp_path, name):
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS
    import astropy.units as u
    files = synthetic_survey(tmp_path) if name == "synthetic survey" else [IMAGES / name]
    root, props = build(tmp_path, files)
    order = int(props["hips_order"])
    p = subprocess.run(["java", "-Xmx1g", "-cp", str(ALADIN), "cds.allsky.HipsGen", f"in={tmp_path / 'in'}",
                        f"out={tmp_path / 'hg'}", "creator_did=ivo://test/hipsgen", f"order={order}", "-f"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:]
    ours, theirs = tiles(root, order), tiles(tmp_path / "hg", order)
    assert set(ours) == set(theirs)
    lo, hi = (float(v) for v in props["hips_data_range"].split())
    tolerance = max(2.0, 0.002 * (hi - lo))
    images = []
    for f in files:
        with fits.open(f) as hl:
            hdu = next(h for h in hl if h.is_image and h.data is not None and h.data.ndim >= 2)
            images.append((WCS(hdu.header, hl).celestial, *hdu.data.shape[-2:][::-1]))
    diffs = []
    for t in ours:
        a, b = values(ours[t]), values(theirs[t])
        both = np.isfinite(a) & np.isfinite(b)
        diffs.append(np.abs(a - b)[both])
        # Every pixel Meridian fills, Hipsgen fills too, but for those in the outer half
        # of an image's edge pixels (Meridian draws an image out to the edges of its edge
        # pixels, Hipsgen to their centres). Hipsgen sometimes fills more: it extends the
        # ZPN image of UKIDSS past its edges.
        mine = np.isfinite(a) & ~np.isfinite(b)
        if mine.any():
            ra, dec = healpix_centres(order, int(t[4:-5]))
            near_an_edge = np.zeros(int(mine.sum()), dtype=bool)
            for w, nx, ny in images:
                frame = dict(frame="icrs") if w.wcs.radesys == "ICRS" else dict(frame="fk5", equinox="J2000")
                x, y = w.world_to_pixel(SkyCoord(ra[mine] * u.deg, dec[mine] * u.deg, **frame))
                from_edge = np.minimum.reduce([x + 0.5, y + 0.5, nx - 0.5 - x, ny - 0.5 - y])
                near_an_edge |= (from_edge > -1e-3) & (from_edge < 0.5 + 1e-3)
            assert near_an_edge.all(), (t, int((~near_an_edge).sum()))
    d = np.concatenate(diffs)
    assert len(d) > 1000
    assert np.percentile(d, 99) <= tolerance, (np.percentile(d, 99), tolerance)
    assert np.median(d) <= 1.0


def healpix_centres(order, tile):
    """ICRS centres of the pixels of `tile` as the FITS tile stores them (row 0 at the
    bottom), by healpy, laid out as the HiPS standard does (hipspy's array turned a
    quarter)."""
    import healpy as hp

    def hipspy_array(shift):
        if shift == 1:
            return np.array([[0, 1], [2, 3]])
        parent = hipspy_array(shift - 1)
        n = 2 ** (shift - 1)
        return np.tile(parent, (2, 2)) + np.repeat(np.repeat(n * n * np.array([[0, 1], [2, 3]]), n, 0), n, 1)
    cells = np.rot90(tile * 4 ** SHIFT + hipspy_array(SHIFT))
    ra, dec = hp.pix2ang(2 ** (order + SHIFT), cells, nest=True, lonlat=True)
    return ra, dec


@pytest.mark.parametrize("name", PLAIN)
def test_tiles_equal_astropy_resampling(tmp_path, name):
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS
    from scipy.ndimage import map_coordinates
    import astropy.units as u
    root, props = build(tmp_path, [IMAGES / name])
    order = int(props["hips_order"])
    with fits.open(IMAGES / name) as hl:
        hdu = next(h for h in hl if h.is_image and h.data is not None and h.data.ndim >= 2)
        data = hdu.data.astype(float)
        while data.ndim > 2:
            data = data[0]
        w = WCS(hdu.header, hl).celestial
    ny, nx = data.shape
    checked = 0
    for t, path in tiles(root, order).items():
        ra, dec = healpix_centres(order, int(t[4:-5]))
        if w.wcs.radesys == "ICRS":
            centres = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
        else:
            centres = SkyCoord(ra * u.deg, dec * u.deg, frame="fk5", equinox="J2000")
        x, y = w.world_to_pixel(centres)
        # Well inside the image (bilinear interpolation there needs no edge rule).
        inside = (x > 0.5) & (y > 0.5) & (x < nx - 1.5) & (y < ny - 1.5)
        xi, yi = x[inside], y[inside]
        want = map_coordinates(data, [yi, xi], order=1)
        # Meridian's WCS agrees with astropy's to 1 mas, a hundredth of a pixel at most
        # here: on a star's steep sides that moves the value, so the value may lie
        # anywhere between those a hundredth of a pixel away.
        # Bilinear interpolation bends along whole pixel rows and columns: where one
        # lies within that hundredth, the values on it are in the envelope too.
        def kinks(v):
            k = np.round(v)
            return np.where(np.abs(v - k) <= 0.01, k, v)
        xs = [xi - 0.01, xi, xi + 0.01, kinks(xi)]
        ys = [yi - 0.01, yi, yi + 0.01, kinks(yi)]
        near = np.array([map_coordinates(data, [yy, xx], order=1) for xx in xs for yy in ys])
        got = values(path)[inside]
        ok = np.isfinite(want) & np.isfinite(got)
        scale = max(1.0, np.nanmax(np.abs(data)))
        slack = 1e-5 * scale
        assert (got[ok] >= near.min(axis=0)[ok] - slack).all() and \
            (got[ok] <= near.max(axis=0)[ok] + slack).all(), t
        assert np.median(np.abs(got[ok] - want[ok])) <= slack, t
        checked += int(ok.sum())
    assert checked > 1000


def test_compressed_variants_give_the_plain_tiles(tmp_path):
    plain, props = build(tmp_path / "plain", [IMAGES / "astropy_m13.fits"])
    order = int(props["hips_order"])
    want = {t: values(p) for t, p in tiles(plain, order).items()}
    for variant in ["astropy_m13_gzip.fits", "astropy_m13_rice.fits", "astropy_m13_hcomp.fits",
                    "astropy_m13_plio.fits"]:
        root, _ = build(tmp_path / variant, [IMAGES / variant])
        got = tiles(root, order)
        assert set(got) == set(want), variant
        for t in got:
            np.testing.assert_array_equal(values(got[t]), want[t], err_msg=f"{variant} {t}")


def test_allsky_properties_and_moc(tmp_path):
    from astropy.io import fits
    from mocpy import MOC
    from PIL import Image
    root, props = build(tmp_path, [IMAGES / "astropy_m13.fits", IMAGES / "magpis_image.fits"])
    for key in ["hips_frame", "hips_order", "hips_tile_width", "hips_tile_format", "hips_initial_ra",
                "hips_initial_dec", "hips_initial_fov", "hips_creator", "hips_creation_date",
                "hips_pixel_cut", "hips_release_date", "creator_did", "dataproduct_type"]:
        assert key in props, key
    png = Image.open(root / "Norder3/Allsky.png")
    assert png.size == (27 * 64, 29 * 64)
    assert fits.getdata(root / "Norder3/Allsky.fits").shape == (29 * 64, 27 * 64)
    moc = MOC.from_fits(root / "Moc.fits")
    assert moc.max_order == int(props["hips_order"])
    # Every deepest tile lies in the MOC.
    order = int(props["hips_order"])
    for t in tiles(root, order):
        assert moc.contains_skycoords is not None
        cell = int(t[4:-5])
        assert MOC.from_healpix_cells(np.array([cell]), np.array([order]), order).intersection(moc).sky_fraction > 0


def test_adding_images_updates_only_what_they_change(tmp_path):
    """A HiPS built from half a survey and then rebuilt after the other half is added has
    the tiles of one built from the whole survey at once (FITS values, every order, and
    the Allsky); tiles the new images do not reach are kept as they were (the same file)."""
    from astropy.io import fits
    subprocess.run([meridian_bin(), "--quiet", "generate", "--out", str(tmp_path / "s"), "--objects", "3000",
                    "--images", "36", "--image-size", "64"], check=True, capture_output=True)
    # The survey images several objects: the first half of the sky's images, then the rest.
    ra = {}
    for f in (tmp_path / "s" / "images").glob("*.fits"):
        with fits.open(f) as h:
            ra[f] = next(x.header["CRVAL1"] for x in h if "CRVAL1" in x.header)
    files = sorted(ra, key=ra.get)
    assert max(ra.values()) - min(ra.values()) > 1

    def meridian(data, *args):
        p = subprocess.run([meridian_bin(), "--data-dir", str(data), *args, "--quiet"], capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        return p.stderr

    whole = tmp_path / "whole"
    for f in files:
        (tmp_path / "all").mkdir(exist_ok=True)
        shutil.copy(f, tmp_path / "all")
    meridian(whole, "images", "add", "s", str(tmp_path / "all"))
    meridian(whole, "hips", "build", "s")
    grown = tmp_path / "grown"
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    for f in files[:len(files) // 2]:
        shutil.copy(f, tmp_path / "first")
    for f in files[len(files) // 2:]:
        shutil.copy(f, tmp_path / "second")
    meridian(grown, "images", "add", "s", str(tmp_path / "first"))
    meridian(grown, "hips", "build", "s")
    root = grown / "hips" / "s"
    before = {p.relative_to(root): p.stat().st_ino for p in root.glob("Norder*/Dir*/*.fits")}
    meridian(grown, "images", "add", "s", str(tmp_path / "second"))
    said = meridian(grown, "hips", "build", "s")
    a = {p.relative_to(whole / "hips" / "s"): p for p in (whole / "hips" / "s").glob("Norder*/Dir*/*.fits")}
    b = {p.relative_to(root): p for p in root.glob("Norder*/Dir*/*.fits")}
    assert set(a) == set(b)
    for t in a:
        np.testing.assert_array_equal(values(a[t]), values(b[t]), err_msg=str(t))
    np.testing.assert_array_equal(fits.getdata(whole / "hips/s/Norder3/Allsky.fits"),
                                  fits.getdata(root / "Norder3/Allsky.fits"))
    kept = [t for t in before if b[t].stat().st_ino == before[t]]
    redone = int(said.split(" tiles")[0].split()[-1])
    assert kept and redone < len(b), (len(kept), redone, len(b))
    # Nothing new: nothing done.
    said = meridian(grown, "hips", "build", "s")
    assert " 0 tiles" in said, said
