"""World coordinates of image pixels against astropy.wcs (which is wcslib): every image of
the shared data (TAN, SIN, ZPN, TAN-SIP, DSS plate solutions; FK4, FK5, ICRS, Galactic;
plain, gzip and tile-compressed files) and headers made here for the other projections,
10,000 pixels each. World coordinates must agree within 1 mas and pixel -> world -> pixel
round trips within 1e-6 pixel."""

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from conftest import SHARED, meridian_bin

warnings.simplefilter("ignore")
pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
IMAGES = sorted((SHARED / "images").iterdir()) if (SHARED / "images").exists() else []


def image_hdus():
    """(file, HDU index, shape) of every 2-D image HDU with a celestial WCS."""
    out = []
    for f in IMAGES:
        with fits.open(f) as h:
            for i, hdu in enumerate(h):
                if hdu.is_image and hdu.data is not None and hdu.data.ndim >= 2 \
                        and WCS(hdu.header).has_celestial:
                    out.append((f, i, hdu.data.shape[-2:]))
    return out


def convert(verb, path, hdu, pairs):
    text = "".join(f"{float(a)!r},{float(b)!r}\n" for a, b in pairs)
    p = subprocess.run([meridian_bin(), "images", verb, str(path), "--hdu", str(hdu)],
                       input=text, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return np.array([[float(v) for v in line.split(",")] for line in p.stdout.split()])


def grid(nx, ny, n=100):
    """n x n pixel positions spanning the image, edges and corners included."""
    xs, ys = np.meshgrid(np.linspace(0.5, nx + 0.5, n), np.linspace(0.5, ny + 0.5, n))
    return np.column_stack([xs.ravel(), ys.ravel()])


def check_against_astropy(path, hdu, header, shape):
    w = WCS(header).celestial
    ny, nx = shape
    pix = grid(nx, ny)
    assert len(pix) >= 10_000
    want = w.all_pix2world(pix, 1)
    got = convert("xy2sky", path, hdu, pix)
    assert not np.isnan(got).any(), f"{path.name}: pixels without sky"
    dlon = (got[:, 0] - want[:, 0] + 180) % 360 - 180
    err_mas = np.hypot(dlon * np.cos(np.radians(want[:, 1])), got[:, 1] - want[:, 1]) * 3.6e6
    assert err_mas.max() < 1.0, f"{path.name}[{hdu}]: {err_mas.max():.3g} mas"
    # And back, from astropy's world coordinates.
    back = convert("sky2xy", path, hdu, want)
    assert np.abs(back - pix).max() < 1e-6, f"{path.name}[{hdu}]: {np.abs(back - pix).max():.3g} px"
    return err_mas.max()


@pytest.mark.parametrize("path,hdu,shape", image_hdus(), ids=lambda v: getattr(v, "name", str(v)))
def test_shared_images_agree_with_astropy(path, hdu, shape):
    with fits.open(path) as h:
        header = h[hdu].header
    check_against_astropy(path, hdu, header, shape)


@pytest.mark.parametrize("code,crval,cdelt,extra", [
    ("ARC", (150.0, 2.2), 0.01, {}),
    ("STG", (10.0, -45.0), 0.02, {}),
    ("ZEA", (300.0, 80.0), 0.05, {}),
    ("ZPN", (83.0, 22.0), 0.001, {"PV2_1": 1.0, "PV2_3": 20.0}),
    ("SIN", (0.5, -89.0), 0.01, {}),
    ("TAN", (359.9, 0.0), 0.01, {"LONPOLE": 180.0}),
    ("CAR", (0.0, 0.0), 0.5, {}),
    ("CAR", (120.0, 30.0), 0.1, {}),
    ("MER", (45.0, 0.0), 0.2, {}),
    ("CEA", (200.0, 0.0), 0.2, {"PV2_1": 0.75}),
    ("SFL", (30.0, 0.0), 0.2, {}),
    ("AIT", (0.0, 0.0), 0.5, {}),
    ("AIT", (266.4, -28.9), 0.1, {}),
])
def test_projections_agree_with_astropy(tmp_path, code, crval, cdelt, extra):
    n = 180
    header = fits.Header()
    header.update({"NAXIS": 2, "NAXIS1": n, "NAXIS2": n,
                   "CTYPE1": f"RA---{code}", "CTYPE2": f"DEC--{code}",
                   "CRVAL1": crval[0], "CRVAL2": crval[1], "CRPIX1": n / 2 + 0.3, "CRPIX2": n / 2 - 0.7,
                   "CDELT1": -cdelt, "CDELT2": cdelt, "PC1_1": 0.96, "PC1_2": -0.28, "PC2_1": 0.28,
                   "PC2_2": 0.96, "RADESYS": "ICRS", **extra})
    path = tmp_path / f"{code}.fits"
    fits.PrimaryHDU(np.zeros((n, n), dtype=np.float32), header=header).writeto(path)
    check_against_astropy(path, 0, fits.getheader(path), (n, n))


def test_galactic_and_fk4_frames_are_reported(tmp_path):
    out = subprocess.run([meridian_bin(), "images", "info", str(SHARED / "images/magpis_image.fits"),
                          str(SHARED / "images/astropy_comp.fits")],
                         capture_output=True, text=True, check=True).stdout
    assert "Galactic" in out and "Fk4 { equinox: 1950.0 }" in out, out


def test_headers_without_a_celestial_wcs_are_refused_clearly(tmp_path):
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.zeros((4, 4), dtype=np.int16)).writeto(path)
    p = subprocess.run([meridian_bin(), "images", "xy2sky", str(path)], input="1,1\n",
                       capture_output=True, text=True)
    assert p.returncode != 0 and "no celestial axes" in p.stderr and "plain.fits" in p.stderr, p.stderr
    Path(tmp_path / "not.fits").write_bytes(b"hello")
    p = subprocess.run([meridian_bin(), "images", "info", str(tmp_path / "not.fits")],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "not.fits" in p.stderr, p.stderr


# SCAMP-style TPV solutions (as DECam and many survey pipelines write them): the
# polynomial up to the 3rd order with the radial terms, one with every order up to 7,
# and one without PV1_1/PV2_1 (which then are 0, as wcslib reads TPV: here xi follows y).
TPV = {
    "decam": {"PV1_0": 0.00112, "PV1_1": 1.0017, "PV1_2": -0.00025, "PV1_4": -0.0021, "PV1_5": 0.0015,
              "PV1_6": -0.00093, "PV1_7": -0.0107, "PV1_8": 0.00061, "PV1_9": -0.0081, "PV1_10": 0.00042,
              "PV2_0": -0.00093, "PV2_1": 0.9983, "PV2_2": 0.00031, "PV2_4": 0.0017, "PV2_5": -0.0012,
              "PV2_6": 0.00071, "PV2_7": -0.0102, "PV2_8": 0.00048, "PV2_9": -0.0079, "PV2_10": 0.00057},
    "radial": {"PV1_1": 1.0, "PV1_3": 0.004, "PV1_11": -0.021, "PV2_1": 1.0, "PV2_3": -0.003,
               "PV2_11": 0.018},
    "seventh": {**{f"PV1_{k}": 0.003 / (1 + k) * (-1) ** k for k in range(1, 40)},
                **{f"PV2_{k}": 0.002 / (1 + k) * (-1) ** (k // 2) for k in range(1, 40)},
                "PV1_1": 1.001, "PV2_1": 0.999},
    "defaults": {"PV1_2": 1.0, "PV1_4": 0.003, "PV2_2": 1.0, "PV2_7": -0.01},
}


@pytest.mark.parametrize("name", sorted(TPV))
def test_tpv_agrees_with_astropy(tmp_path, name):
    n = 300
    header = fits.Header()
    header.update({"NAXIS": 2, "NAXIS1": n, "NAXIS2": n, "CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV",
                   "CRVAL1": 359.8, "CRVAL2": -12.5, "CRPIX1": 140.2, "CRPIX2": 161.7,
                   "CD1_1": -1.2e-3, "CD1_2": 1.1e-4, "CD2_1": 9e-5, "CD2_2": 1.2e-3, "RADESYS": "ICRS",
                   **TPV[name]})
    path = tmp_path / f"tpv-{name}.fits"
    fits.PrimaryHDU(np.zeros((n, n), dtype=np.float32), header=header).writeto(path)
    # The distortion is real: astropy's sky differs from plain TAN's by arcseconds.
    tan = fits.getheader(path)
    tan["CTYPE1"], tan["CTYPE2"] = "RA---TAN", "DEC--TAN"
    for k in list(tan):
        if k.startswith("PV"):
            del tan[k]
    pix = grid(n, n, 20)
    shift = np.abs(WCS(fits.getheader(path)).all_pix2world(pix, 1) - WCS(tan).all_pix2world(pix, 1)).max()
    assert shift * 3600 > 1.0, f"{name}: distortion of only {shift * 3600:.3g} arcsec"
    check_against_astropy(path, 0, fits.getheader(path), (n, n))


def test_tpv_without_pv_cards_is_refused(tmp_path):
    header = fits.Header()
    header.update({"CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV", "CRVAL1": 10.0, "CRVAL2": 0.0,
                   "CRPIX1": 5.0, "CRPIX2": 5.0, "CD1_1": -1e-3, "CD2_2": 1e-3, "PV1_1": 1.0})
    path = tmp_path / "tpv.fits"
    fits.PrimaryHDU(np.zeros((10, 10), dtype=np.float32), header=header).writeto(path)
    p = subprocess.run([meridian_bin(), "images", "xy2sky", str(path)], input="1,1\n",
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "PV2_m" in p.stderr, p.stderr
