"""Cross-matches of the real Gaia, Tycho-2 and Hipparcos samples against astropy.

For every pair of catalogs and radii of 1, 5 and 60 arcsec:
- an ADQL join on DISTANCE runs as Meridian's cross-match operator and returns exactly the
  pairs of astropy's search_around_sky;
- `meridian xmatch` (best match) returns exactly each source's nearest partner within the
  radius, as astropy's match_coordinates_sky finds it, with the same separation.
Pairs are compared by the positions of both rows, since Tycho-2 has no identifier.
"""

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord, match_coordinates_sky, search_around_sky
from astropy.io import fits
from astropy.table import Table

from conftest import run

RADII = [1.0, 5.0, 60.0]
PAIRS = [("gaia", "tycho2"), ("gaia", "hipparcos"), ("tycho2", "hipparcos")]


@pytest.fixture(scope="module")
def inputs(store, shared):
    run("ingest", "hipparcos", shared / "catalogs/hipparcos2.vot", data_dir=store)
    gaia = pd.read_csv(shared / "catalogs/gaia_dr3_bright.csv.gz")
    with fits.open(shared / "catalogs/tycho2_subset.fits.gz") as h:
        tycho = pd.DataFrame({"ra": h[1].data["ra"].astype(float), "dec": h[1].data["dec"].astype(float)})
    hip = Table.read(shared / "catalogs/hipparcos2.vot").to_pandas()
    return {name: df[["ra", "dec"]].astype(float).reset_index(drop=True) for name, df in
            [("gaia", gaia), ("tycho2", tycho), ("hipparcos", hip)]}


def coords(df):
    return SkyCoord(df["ra"].values * u.deg, df["dec"].values * u.deg)


def keys(ra1, dec1, ra2, dec2):
    return Counter(zip(np.asarray(ra1).tolist(), np.asarray(dec1).tolist(), np.asarray(ra2).tolist(), np.asarray(dec2).tolist()))


@pytest.fixture(scope="module")
def astropy_pairs(inputs):
    """search_around_sky at the largest radius, per catalog pair: (idx1, idx2, sep arcsec)."""
    out = {}
    for a, b in PAIRS:
        i, j, sep, _ = search_around_sky(coords(inputs[a]), coords(inputs[b]), max(RADII) * u.arcsec)
        out[(a, b)] = (i, j, sep.arcsec)
    return out


@pytest.mark.parametrize("a,b", PAIRS)
@pytest.mark.parametrize("radius", RADII)
def test_adql_distance_join_equals_search_around_sky(store, tmp_path, inputs, astropy_pairs, a, b, radius):
    out = tmp_path / "pairs.parquet"
    q = (f"SELECT x.ra AS ra1, x.dec AS dec1, y.ra AS ra2, y.dec AS dec2 FROM {a} AS x JOIN {b} AS y "
         f"ON DISTANCE(POINT('ICRS', x.ra, x.dec), POINT('ICRS', y.ra, y.dec)) < {radius / 3600!r}")
    p = run("query", q, "--format", "parquet", "--out", out, "--explain", data_dir=store)
    assert "XMatchExec" in p.stderr, p.stderr
    got = pq.read_table(out).to_pandas()
    i, j, sep = astropy_pairs[(a, b)]
    keep = sep < radius
    A, B = inputs[a], inputs[b]
    want = keys(A["ra"].values[i[keep]], A["dec"].values[i[keep]], B["ra"].values[j[keep]], B["dec"].values[j[keep]])
    have = keys(got["ra1"], got["dec1"], got["ra2"], got["dec2"])
    print(f"{a} x {b} at {radius}\": meridian {sum(have.values())} pairs, astropy {sum(want.values())}")
    assert sum(want.values()) > 0
    assert have == want


@pytest.mark.parametrize("a,b", PAIRS)
@pytest.mark.parametrize("radius", RADII)
def test_best_match_equals_match_coordinates_sky(store, tmp_path, inputs, a, b, radius):
    out = tmp_path / "best.parquet"
    run("xmatch", a, b, "--radius", f"{radius}arcsec", "--format", "parquet", "--out", out, data_dir=store)
    got = pq.read_table(out).to_pandas()
    assert list(got.columns) == ["id1", "ra1", "dec1", "id2", "ra2", "dec2", "distance_arcsec"]
    A, B = inputs[a], inputs[b]
    idx, sep, _ = match_coordinates_sky(coords(A), coords(B))
    ok = sep.arcsec <= radius
    want = keys(A["ra"].values[ok], A["dec"].values[ok], B["ra"].values[idx[ok]], B["dec"].values[idx[ok]])
    have = keys(got["ra1"], got["dec1"], got["ra2"], got["dec2"])
    print(f"{a} best match in {b} at {radius}\": meridian {len(got)}, astropy {int(ok.sum())}")
    assert have == want
    # The same separations.
    merged = got.merge(pd.DataFrame({"ra1": A["ra"].values[ok], "dec1": A["dec"].values[ok],
                                     "want": sep.arcsec[ok]}), on=["ra1", "dec1"])
    assert np.allclose(merged["distance_arcsec"], merged["want"], rtol=0, atol=1e-6)


def test_xmatch_refuses_bad_arguments(store):
    p = run("xmatch", "gaia", "tycho", "--radius", "1arcsec", data_dir=store, check=False)
    assert p.returncode == 1 and "no catalog named 'tycho'; did you mean tycho2?" in p.stderr
    p = run("xmatch", "gaia", "tycho2", "--radius", "1.5", data_dir=store, check=False)
    assert p.returncode == 1 and "no unit" in p.stderr
    p = run("xmatch", "gaia", "tycho2", "--radius", "1arcsec", "--id1", "sourceid", data_dir=store, check=False)
    assert p.returncode == 1 and "did you mean source_id?" in p.stderr
