"""hips2fits (`/hips2fits`): images drawn from a served HiPS, checked against astropy's
`reproject` resampling the source image itself onto the same WCS, and the output WCS read
back by astropy.wcs.

Tolerance: the HiPS is the image resampled once onto HEALPix cells finer than the image's
pixels, and hips2fits resamples that again, so its values are the source's smoothed over
a fraction of a pixel: away from the image's edges the median difference from reproject's
bilinear interpolation stays under 1% of the image's data range, and 95% of pixels under
5% (stars' cores are where the two differ most)."""

import io
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import requests

from conftest import SHARED, Server, meridian_bin

warnings.simplefilter("ignore")
M13 = SHARED / "images/astropy_m13.fits"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hips2fits")
    (tmp / "in").mkdir()
    shutil.copy(M13, tmp / "in")
    data = tmp / "data"
    for args in (["images", "add", "m13", str(tmp / "in"), "--quiet"], ["hips", "build", "m13", "--quiet"]):
        p = subprocess.run([meridian_bin(), "--data-dir", str(data), *args], capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr
    with Server(data) as s:
        yield s.url.removesuffix("/tap")


def source():
    from astropy.io import fits
    from astropy.wcs import WCS
    with fits.open(M13) as h:
        return h[0].data.astype(float), WCS(h[0].header)


def draw(base, **params):
    r = requests.get(f"{base}/hips2fits", params={"hips": "m13", **params}, timeout=120)
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize("params", [
    dict(projection="TAN", coordsys="icrs", rotation_angle="0"),
    dict(projection="SIN", coordsys="icrs", rotation_angle="25"),
    dict(projection="CAR", coordsys="galactic", rotation_angle="0"),
    dict(projection="AIT", coordsys="icrs", rotation_angle="-40"),
])
def test_pixels_equal_reproject_of_the_source(served, params):
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS
    import astropy.units as u
    from reproject import reproject_interp
    data, w = source()
    ny, nx = data.shape
    centre = w.pixel_to_world((nx - 1) / 2, (ny - 1) / 2).icrs
    pos = centre.galactic if params["coordsys"] == "galactic" else centre
    lon, lat = (pos.l.deg, pos.b.deg) if params["coordsys"] == "galactic" else (pos.ra.deg, pos.dec.deg)
    scale = abs(w.proj_plane_pixel_scales()[0].to_value(u.deg))
    width, height = 160, 120
    fov = 0.6 * min(nx, ny) * scale * 1.1
    r = draw(served, width=width, height=height, ra=lon, dec=lat, fov=fov, format="fits", **params)
    with fits.open(io.BytesIO(r.content)) as h:
        got = h[0].data.astype(float)
        header = h[0].header
    assert got.shape == (height, width)
    out = WCS(header)
    # The WCS: the centre pixel at the asked position, pixels fov / max(width, height) wide.
    c = out.pixel_to_world((width - 1) / 2, (height - 1) / 2)
    c = c.galactic if params["coordsys"] == "galactic" else c.icrs
    assert c.separation(pos).arcsec < 1e-3
    assert np.allclose(np.abs(out.proj_plane_pixel_scales()[0].to_value(u.deg)), fov / width, rtol=1e-9)
    want, footprint = reproject_interp((data, w), header, shape_out=(height, width), order="bilinear")
    # Away from the source's edges (two pixels), where both have values.
    yy, xx = np.mgrid[0:height, 0:width]
    world = out.pixel_to_world(xx, yy)
    sx, sy = w.world_to_pixel(world)
    inside = (sx > 2) & (sy > 2) & (sx < nx - 3) & (sy < ny - 3)
    ok = inside & np.isfinite(got) & np.isfinite(want) & (footprint > 0)
    assert ok.sum() > 0.5 * width * height, ok.sum()
    span = np.nanpercentile(data, 99.9) - np.nanpercentile(data, 0.1)
    d = np.abs(got - want)[ok]
    assert np.median(d) < 0.01 * span, (np.median(d), span)
    assert np.percentile(d, 95) < 0.05 * span, (np.percentile(d, 95), span)
    # Outside the source's footprint there is nothing to draw.
    assert not np.isfinite(got[~inside & (footprint == 0)]).any() or (footprint == 0).sum() == 0


def test_png_and_errors(served):
    from PIL import Image
    r = draw(served, width=64, height=48, ra=250.42, dec=36.46, fov=0.1, format="png", stretch="asinh")
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (64, 48)
    a = np.array(img)
    assert a[..., 1].max() == 255 and a[..., 0].std() > 0
    base = served
    ok = dict(hips="m13", width=10, height=10, ra=250.4, dec=36.4, fov=0.1)
    for change, word in [(dict(hips="none"), "hips"), (dict(width=0), "width"), (dict(fov=-1), "fov"),
                         (dict(dec=95), "dec"), (dict(projection="XYZ"), "projection"),
                         (dict(coordsys="fk4"), "coordsys"), (dict(format="jpeg2000"), "format"),
                         (dict(width=10000, height=10000), "limit"), (dict(ra="abc"), "ra")]:
        r = requests.get(f"{base}/hips2fits", params={**ok, **change})
        assert r.status_code == 400, (change, r.status_code)
        assert word in r.text, (change, r.text)
    # A longitude far out of range is taken modulo 360, not written into a broken card.
    r = requests.get(f"{base}/hips2fits", params={**ok, "ra": "1e300"})
    assert r.status_code in (200, 400), r.status_code
    # The HiPS named by its creator_did works as by its name.
    r = requests.get(f"{base}/hips2fits", params={**ok, "hips": "ivo://meridian/hips/m13"})
    assert r.status_code == 200
