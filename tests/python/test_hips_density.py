"""Density maps of catalogs as HiPS (`meridian hips density`), served at /hips/<name>/.

Oracle: healpy's nested cell of every row of the input file (read with astropy), counted
with numpy, laid out in tiles by the HiPS convention as the `hips` package (hipspy)
documents it: a tile's pixel (r, c) of its array holds sub-cell A[r][c], A built by
recursive 2 x 2 blocks [[0, 1], [2, 3]]; FITS tiles are that array turned a quarter,
PNG tiles its transpose."""

import io
import os
import subprocess
import warnings

import numpy as np
import pytest
import requests

from conftest import SHARED, Server, meridian_bin

warnings.simplefilter("ignore")
WIDTH = 64
SHIFT = 6


def hipspy_array(shift):
    """hipspy's `hips_tile_healpix_ipix_array`: the sub-cell of each tile array pixel."""
    if shift == 1:
        return np.array([[0, 1], [2, 3]])
    parent = hipspy_array(shift - 1)
    n = 2 ** (shift - 1)
    return np.tile(parent, (2, 2)) + np.repeat(np.repeat(n * n * np.array([[0, 1], [2, 3]]), n, 0), n, 1)


@pytest.fixture(scope="module")
def density(store, tmp_path_factory):
    data = tmp_path_factory.mktemp("hips-data")
    os.symlink(store / "catalogs", data / "catalogs")
    p = subprocess.run([meridian_bin(), "--data-dir", str(data), "hips", "density", "gaia", "--order", "4",
                        "--tile-width", str(WIDTH), "--quiet"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    with Server(data) as s:
        yield s.url.removesuffix("/tap"), data / "hips" / "gaia-density"


@pytest.fixture(scope="module")
def rows():
    from astropy.table import Table
    t = Table.read(SHARED / "catalogs/gaia_dr3_bright.csv.gz", format="ascii.csv")
    return np.asarray(t["ra"], dtype=float), np.asarray(t["dec"], dtype=float)


def counts_at(rows, order):
    import healpy as hp
    pix = hp.ang2pix(2 ** order, rows[0], rows[1], nest=True, lonlat=True)
    return np.bincount(pix, minlength=12 * 4 ** order)


@pytest.mark.parametrize("order", [3, 4])
def test_fits_tiles_hold_the_counts_of_their_cells(density, rows, order):
    from astropy.io import fits
    _, root = density
    counts = counts_at(rows, order + SHIFT)
    a = hipspy_array(SHIFT)
    per_tile = counts.reshape(-1, WIDTH * WIDTH)
    written = sorted(int(p.stem[4:]) for p in (root / f"Norder{order}").glob("Dir*/Npix*.fits"))
    assert written == [n for n in range(len(per_tile)) if per_tile[n].sum() > 0]
    for n in written:
        want = per_tile[n][a]
        got = np.rot90(fits.getdata(root / f"Norder{order}/Dir0/Npix{n}.fits"), k=-1)
        np.testing.assert_array_equal(got, want, err_msg=f"order {order} tile {n}")
    assert sum(per_tile[n].sum() for n in written) == len(rows[0])


def test_png_tiles_and_allsky_show_the_same_cells(density, rows):
    from astropy.io import fits
    from PIL import Image
    base, root = density
    counts = counts_at(rows, 3 + SHIFT).reshape(-1, WIDTH * WIDTH)
    a = hipspy_array(SHIFT)
    n = int(np.argmax(counts.sum(axis=1)))
    png = np.array(Image.open(root / f"Norder3/Dir0/Npix{n}.png"))
    # Grey and alpha: opaque exactly where the cell has rows.
    np.testing.assert_array_equal(png[..., 1].T > 0, counts[n][a] > 0)
    # Allsky: 27 tiles a row, 29 rows, 64 pixels each; the FITS one is the PNG turned upside down.
    sky = np.array(Image.open(root / "Norder3/Allsky.png"))
    assert sky.shape[:2] == (29 * 64, 27 * 64)
    r, c = divmod(n, 27)
    np.testing.assert_array_equal(sky[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64, 1].T > 0, counts[n][a] > 0)
    fsky = fits.getdata(root / "Norder3/Allsky.fits")
    np.testing.assert_array_equal(fsky[::-1][r * 64:(r + 1) * 64, c * 64:(c + 1) * 64].T, counts[n][a])


def test_moc_and_properties(density, rows):
    import astropy.units as u
    from mocpy import MOC
    base, root = density
    props = dict(line.split("=", 1) for line in (root / "properties").read_text().splitlines() if "=" in line)
    props = {k.strip(): v.strip() for k, v in props.items()}
    assert props["hips_order"] == "4" and props["hips_tile_width"] == str(WIDTH)
    assert props["hips_frame"] == "equatorial" and props["dataproduct_type"] == "image"
    assert set(props["hips_tile_format"].split()) == {"png", "fits"}
    moc = MOC.from_fits(root / "Moc.fits")
    assert moc == MOC.from_lonlat(rows[0] * u.deg, rows[1] * u.deg, max_norder=7)
    # The HiPS's MOC at /moc/<name> too, coarsened when asked.
    served = MOC.from_fits(io.BytesIO(requests.get(f"{base}/moc/gaia-density?order=7").content))
    assert served == moc
    coarse = MOC.from_fits(io.BytesIO(requests.get(f"{base}/moc/gaia-density?order=5").content))
    assert coarse == MOC.from_lonlat(rows[0] * u.deg, rows[1] * u.deg, max_norder=5)
    assert f"moc_access_url" in requests.get(f"{base}/hips/list").text


def test_tiles_are_served_with_cache_headers(density):
    base, root = density
    r = requests.get(f"{base}/hips/gaia-density/properties")
    assert r.status_code == 200 and "hips_order" in r.text
    assert r.headers["access-control-allow-origin"] == "*"
    tile = next((root / "Norder3/Dir0").glob("*.png")).name
    r = requests.get(f"{base}/hips/gaia-density/Norder3/Dir0/{tile}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "immutable" in r.headers["cache-control"] and r.headers["etag"]
    again = requests.get(f"{base}/hips/gaia-density/Norder3/Dir0/{tile}",
                         headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    lst = requests.get(f"{base}/hips/list").text
    assert f"hips_service_url" in lst and f"{base}/hips/gaia-density" in lst
    for bad in ["Norder3/Dir0/Npix99999.png", "..%2F..%2Fcatalogs", "%2E%2E/properties"]:
        assert requests.get(f"{base}/hips/gaia-density/{bad}").status_code == 404, bad
    assert requests.get(f"{base}/hips/nothing/properties").status_code == 404
    # A build's working directories are never served.
    for part in ["gaia-density.building", "gaia-density.old"]:
        assert requests.get(f"{base}/hips/{part}/properties").status_code == 404


def test_mean_of_a_column_per_cell(density, tmp_path):
    """`--aggregate mean --column phot_g_mean_mag`: each pixel the mean magnitude of its
    cell's rows (numpy over healpy's cells), NaN where a cell has none."""
    import healpy as hp
    from astropy.io import fits
    from astropy.table import Table
    base, root = density
    data = root.parent.parent
    p = subprocess.run([meridian_bin(), "--data-dir", str(data), "hips", "density", "gaia", "--order", "3",
                        "--tile-width", str(WIDTH), "--aggregate", "mean", "--column", "phot_g_mean_mag",
                        "--out", "gaia-gmag", "--quiet"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    t = Table.read(SHARED / "catalogs/gaia_dr3_bright.csv.gz", format="ascii.csv")
    g = np.asarray(t["phot_g_mean_mag"].filled(np.nan) if hasattr(t["phot_g_mean_mag"], "filled")
                   else t["phot_g_mean_mag"], dtype=float)
    pix = hp.ang2pix(2 ** (3 + SHIFT), np.asarray(t["ra"], float), np.asarray(t["dec"], float), nest=True,
                     lonlat=True)
    ok = np.isfinite(g)
    n = np.bincount(pix[ok], minlength=12 * 4 ** (3 + SHIFT))
    sums = np.bincount(pix[ok], weights=g[ok], minlength=len(n))
    with np.errstate(invalid="ignore"):
        mean = (sums / n).reshape(-1, WIDTH * WIDTH)
    a = hipspy_array(SHIFT)
    out = root.parent / "gaia-gmag"
    checked = 0
    for path in (out / "Norder3").glob("Dir*/Npix*.fits"):
        k = int(path.stem[4:])
        got = np.rot90(fits.getdata(path), k=-1).astype(float)
        want = mean[k][a]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-6)
        checked += int((~np.isnan(got)).sum())
    assert checked > 10_000
    bad = subprocess.run([meridian_bin(), "--data-dir", str(data), "hips", "density", "gaia", "--aggregate", "mean",
                          "--column", "nope", "--quiet"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "nope" in bad.stderr
