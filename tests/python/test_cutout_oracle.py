"""Cutouts against astropy: for every image of the shared data (plain, gzip and
tile-compressed) and circles at the centre, edges and corners, `meridian images cutout`
writes a FITS file whose pixels equal astropy's (`Cutout2D` inside the image, the clipped
slice at its edges), whose WCS gives every pixel the world coordinates it had (1 mas), and
whose box holds every pixel centre within the circle. The tile-compressed M13 files give
the uncompressed file's pixels."""

import re
import subprocess
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from conftest import SHARED, meridian_bin

warnings.simplefilter("ignore")
pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
IMAGES = SHARED / "images"


def image_hdus():
    out = []
    for f in sorted(IMAGES.iterdir()) if IMAGES.exists() else []:
        with fits.open(f) as h:
            for i, hdu in enumerate(h):
                if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2 \
                        and WCS(hdu.header).has_celestial:
                    out.append((f, i))
    return out


def cutout(path, hdu, out, circle=None, pixels=None):
    args = [meridian_bin(), "images", "cutout", str(path), "--hdu", str(hdu), "--out", str(out)]
    args += ["--circle", ",".join(repr(float(v)) for v in circle)] if circle else ["--pixels", pixels]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def box_of(header):
    """The 0-based, end-exclusive box a cutout's HISTORY records."""
    text = "".join(str(c) for c in header["HISTORY"])
    x1, x2, y1, y2 = map(int, re.search(r"pixels \[(\d+):(\d+),(\d+):(\d+)\]", text).groups())
    return x1 - 1, x2, y1 - 1, y2


def same(a, b):
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("path,hdu", image_hdus(), ids=lambda v: getattr(v, "name", str(v)))
def test_cutouts_equal_astropy(tmp_path, path, hdu):
    with fits.open(path) as h:
        data = h[hdu].data.astype(np.float64)
        w = WCS(h[hdu].header).celestial
    ny, nx = data.shape
    # Circles at the centre, inside, at the edges and corners, and one centred just past a
    # corner (for the smallest images, a few pixels out).
    fractions = [(0.5, 0.5), (0.3, 0.6), (0.0, 0.5), (1.0, 0.5), (0.5, 0.0), (0.5, 1.0),
                 (0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.015, -0.015)]
    pixel_scale = np.sqrt(abs(np.linalg.det(w.pixel_scale_matrix)))
    radius = 7.3 * pixel_scale
    for fx, fy in fractions:
        px, py = 0.5 + fx * nx, 0.5 + fy * ny
        lon, lat = w.all_pix2world([[px, py]], 1)[0]
        out = tmp_path / f"cut-{fx}-{fy}.fits"
        p = cutout(path, hdu, out, circle=(lon, lat, radius))
        assert p.returncode == 0, p.stderr
        with fits.open(out) as c:
            got, header = c[0].data.astype(np.float64), c[0].header
        x0, x1, y0, y1 = box_of(header)
        assert same(got, data[y0:y1, x0:x1]), (fx, fy)
        # Every pixel centre within the circle is in the box.
        ys, xs = np.mgrid[0:ny, 0:nx]
        world = w.all_pix2world(np.column_stack([xs.ravel() + 1, ys.ravel() + 1]), 1)
        d = np.degrees(np.arccos(np.clip(
            np.sin(np.radians(lat)) * np.sin(np.radians(world[:, 1]))
            + np.cos(np.radians(lat)) * np.cos(np.radians(world[:, 1]))
            * np.cos(np.radians(world[:, 0] - lon)), -1, 1)))
        inside = d < radius
        xi, yi = xs.ravel()[inside], ys.ravel()[inside]
        assert ((xi >= x0) & (xi < x1) & (yi >= y0) & (yi < y1)).all(), (fx, fy)
        # The cutout's WCS gives its pixels the world coordinates they had.
        cw = WCS(header).celestial
        cy, cx = np.mgrid[0:y1 - y0, 0:x1 - x0]
        pix = np.column_stack([cx.ravel() + 1.0, cy.ravel() + 1.0])
        a = cw.all_pix2world(pix, 1)
        b = w.all_pix2world(pix + [x0, y0], 1)
        dlon = (a[:, 0] - b[:, 0] + 180) % 360 - 180
        err = np.hypot(dlon * np.cos(np.radians(b[:, 1])), a[:, 1] - b[:, 1]) * 3.6e6
        assert err.max() < 1.0, (fx, fy, err.max())
        # Inside the image, astropy's Cutout2D of the same box is the same.
        if x0 > 0 and y0 > 0 and x1 < nx and y1 < ny:
            ref = Cutout2D(data, ((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2), (y1 - y0, x1 - x0), wcs=w)
            assert ref.bbox_original == ((y0, y1 - 1), (x0, x1 - 1))
            assert same(got, ref.data)


def test_compressed_images_give_the_uncompressed_pixels(tmp_path):
    with fits.open(IMAGES / "astropy_m13.fits") as h:
        plain = h[0].data.astype(np.float64)
    for name in ["astropy_m13_gzip.fits", "astropy_m13_rice.fits", "astropy_m13_plio.fits",
                 "astropy_m13_hcomp.fits"]:
        with fits.open(IMAGES / name) as h:
            decoded = h[1].data.astype(np.float64)  # astropy's own decoding
        for box in ["1:300,1:300", "17:90,200:300", "299:300,1:2"]:
            out = tmp_path / f"{name}-{box.replace(':', '_').replace(',', '-')}.fits"
            p = cutout(IMAGES / name, 1, out, pixels=box)
            assert p.returncode == 0, p.stderr
            x0, x1, y0, y1 = box_of(fits.getheader(out))
            got = fits.getdata(out).astype(np.float64)
            assert same(got, decoded[y0:y1, x0:x1]), (name, box)
            if np.array_equal(decoded, plain):  # lossless codecs
                assert same(got, plain[y0:y1, x0:x1]), (name, box)


def test_bad_cutout_requests_are_refused_clearly(tmp_path):
    m13 = IMAGES / "astropy_m13.fits"
    with fits.open(m13) as h:
        lon, lat = WCS(h[0].header).all_pix2world([[150, 150]], 1)[0]
    out = tmp_path / "x.fits"
    for circle, message in [((lon + 90, lat, 0.01), "does not meet"),
                            ((lon, 95.0, 0.01), "latitude")]:
        p = cutout(m13, 0, out, circle=circle)
        assert p.returncode != 0 and message in p.stderr, p.stderr
        assert not out.exists()
    for pixels in ["0:10,1:10", "1:301,1:10", "10:5,1:2", "a:b"]:
        p = cutout(m13, 0, out, pixels=pixels)
        assert p.returncode != 0 and "--pixels" in p.stderr, p.stderr
        assert not out.exists()
    # A cutout over the pixel limit is refused before any pixel is read.
    p = subprocess.run([meridian_bin(), "images", "cutout", str(m13), "--pixels", "1:300,1:300",
                        "--max-pixels", "10000", "--out", str(out)], capture_output=True, text=True)
    assert p.returncode != 0 and "300 x 300 = 90000 pixels, over the limit of 10000" in p.stderr, p.stderr
    assert not out.exists()
