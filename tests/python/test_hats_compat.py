"""Meridian's catalogs opened by the hats and lsdb packages, checked against astropy."""

import re

import hats
import lsdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord, match_coordinates_sky
from astropy.io import fits

from conftest import run

CONES = [  # (ra, dec, radius arcsec): ordinary, north pole, south pole, RA=0/360 seam
    (56.75, 24.12, 3600.0), (0.0, 89.5, 7200.0), (100.0, -89.0, 5400.0), (0.1, -5.0, 5400.0), (359.8, 40.0, 2400.0),
]


@pytest.fixture(scope="module")
def gaia_input(shared):
    return pd.read_csv(shared / "catalogs/gaia_dr3_bright.csv.gz")


@pytest.fixture(scope="module")
def tycho_input(shared):
    with fits.open(shared / "catalogs/tycho2_subset.fits.gz") as h:
        d = h[1].data
        return pd.DataFrame({"ra": d["ra"].astype(float), "dec": d["dec"].astype(float), "vt_mag": d["vt_mag"].astype(float)})


def brute_cone(df, ra, dec, radius_arcsec):
    c = SkyCoord(df["ra"].values * u.deg, df["dec"].values * u.deg)
    sep = c.separation(SkyCoord(ra * u.deg, dec * u.deg)).arcsec
    return df[sep <= radius_arcsec]


def test_hats_reads_meridian_catalogs(store, gaia_input, tycho_input):
    for name, expected in [("gaia", len(gaia_input)), ("tycho2", len(tycho_input))]:
        coll = hats.read_hats(store / "catalogs" / name)
        assert type(coll).__name__ == "CatalogCollection"
        cat = coll.main_catalog
        assert cat.catalog_info.total_rows == expected
        pixels = cat.get_healpix_pixels()
        assert len(pixels) > 1
        orders = {p.order for p in pixels}
        # Row counts from the Parquet footers add up, and each file holds only its pixel.
        total = 0
        for p in pixels:
            path = hats.io.paths.pixel_catalog_file(cat.catalog_base_dir, p)
            t = pq.read_table(path, columns=["_healpix_29"])
            h = t["_healpix_29"].to_numpy()
            assert np.all(np.diff(h) >= 0), "sorted by _healpix_29"
            assert np.all((h >> (2 * (29 - p.order))) == p.pixel)
            total += t.num_rows
        assert total == expected
        assert coll.default_margin is not None
        print(f"{name}: {len(pixels)} partitions at orders {sorted(orders)}")


@pytest.mark.parametrize("ra,dec,radius", CONES)
def test_lsdb_cone_equals_astropy_brute_force_gaia(store, gaia_input, ra, dec, radius):
    cat = lsdb.open_catalog(store / "catalogs" / "gaia")
    got = cat.cone_search(ra, dec, radius).compute()
    want = brute_cone(gaia_input, ra, dec, radius)
    assert len(want) > 0
    assert set(got["source_id"]) == set(want["source_id"])


@pytest.mark.parametrize("ra,dec,radius", CONES)
def test_lsdb_cone_equals_astropy_brute_force_tycho(store, tycho_input, ra, dec, radius):
    cat = lsdb.open_catalog(store / "catalogs" / "tycho2")
    got = cat.cone_search(ra, dec, radius).compute()
    want = brute_cone(tycho_input, ra, dec, radius)
    assert len(want) > 0
    assert set(zip(got["ra"], got["dec"])) == set(zip(want["ra"], want["dec"]))


@pytest.mark.parametrize("ra,dec,radius", CONES)
def test_meridian_cone_equals_astropy_brute_force(store, gaia_input, ra, dec, radius):
    out = run("cone", "gaia", "--ra", ra, "--dec", dec, "--radius-arcsec", radius, "--explain", data_dir=store)
    got = pd.read_csv(pd.io.common.StringIO(out.stdout)) if out.stdout.strip() else pd.DataFrame(columns=["source_id"])
    want = brute_cone(gaia_input, ra, dec, radius)
    assert set(got["source_id"]) == set(want["source_id"])
    assert "partitions read" in out.stderr


def test_margin_cache_makes_lsdb_crossmatch_complete(store, gaia_input, tycho_input):
    """lsdb cross-matches partition by partition, using the right catalog's margin for pairs
    across partition edges; with Meridian's margin it finds exactly astropy's nearest
    neighbours within 5 arcsec."""
    gaia = lsdb.open_catalog(store / "catalogs" / "gaia")
    tycho = lsdb.open_catalog(store / "catalogs" / "tycho2")
    assert tycho.margin is not None
    got = gaia.crossmatch(tycho, radius_arcsec=5, n_neighbors=1, suffixes=("_g", "_t")).compute()
    g = SkyCoord(gaia_input["ra"].values * u.deg, gaia_input["dec"].values * u.deg)
    t = SkyCoord(tycho_input["ra"].values * u.deg, tycho_input["dec"].values * u.deg)
    idx, sep, _ = match_coordinates_sky(g, t)
    ok = sep.arcsec < 5
    want = set(zip(gaia_input["source_id"].values[ok], tycho_input["ra"].values[idx[ok]], tycho_input["dec"].values[idx[ok]]))
    have = set(zip(got["source_id_g"], got["ra_t"], got["dec_t"]))
    assert len(want) > 100_000
    assert have == want, f"missing {len(want - have)}, extra {len(have - want)}"


@pytest.mark.parametrize("ra,dec,radius", CONES)
def test_meridian_adql_query_equals_astropy(store, gaia_input, ra, dec, radius):
    """The same cones as ADQL through the DataFusion engine, CSV out."""
    adql = (f"SELECT source_id, ra, dec FROM gaia WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
            f"CIRCLE('ICRS', {ra}, {dec}, {radius / 3600.0!r}))")
    out = run("query", adql, "--explain", data_dir=store)
    got = pd.read_csv(pd.io.common.StringIO(out.stdout))
    want = brute_cone(gaia_input, ra, dec, radius)
    assert set(got["source_id"]) == set(want["source_id"])
    m = re.search(r"partitions read (\d+)/(\d+)", out.stderr)
    assert m and int(m.group(1)) < int(m.group(2)), out.stderr


def test_meridian_query_errors_name_line_column_and_suggestion(store):
    p = run("query", "SELECT sourceid\nFROM gaia", data_dir=store, check=False)
    assert p.returncode != 0
    assert "line 1, column 8" in p.stderr and "did you mean source_id?" in p.stderr, p.stderr
    p = run("query", "SELECT * FROM gaia WHERE", data_dir=store, check=False)
    assert p.returncode != 0 and "expected an expression" in p.stderr, p.stderr


def test_meridian_query_maxrec_reports_overflow(store, tmp_path):
    out = tmp_path / "r.parquet"
    p = run("query", "SELECT source_id FROM gaia", "--maxrec", 1000, "--format", "parquet", "--out", out, data_dir=store)
    assert "MAXREC 1000 reached" in p.stderr
    assert pq.read_table(out).num_rows == 1000
