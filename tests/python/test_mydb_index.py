"""MyDB tables with positions get a spatial index in the HATS layout (read back by the
`hats` package), used by queries; cone results are checked against astropy on the whole
table, and the index follows the table (dropped with it, none without positions)."""

import io

import numpy as np
import pandas as pd
import pytest
import requests

from conftest import Server, add_users, personal_env, token_of


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("mydb-index")
    env = personal_env(d)
    add_users(store, env, "nora")
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        yield base, {"X-DL-AuthToken": token_of(base, "nora")}, d / "mydb" / "nora"


def sql(base, headers, q, **extra):
    r = requests.get(f"{base}/query/query", params={"sql": q, "ofmt": "csv", **extra}, headers=headers)
    assert r.status_code == 200, r.text
    return r.text


def main(cat):
    """The main catalog of what `hats.read_hats` returns (a collection, with its margin)."""
    return getattr(cat, "main_catalog", cat)


def test_a_table_with_positions_is_indexed_and_queried_through_it(service):
    hats = pytest.importorskip("hats")
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    base, h, home = service
    sql(base, h, "SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia WHERE phot_g_mean_mag < 9",
        out="mydb://bright")
    table = pd.read_csv(io.StringIO(sql(base, h, "SELECT * FROM mydb.bright")))
    cat = main(hats.read_hats(home / ".hats" / "bright"))
    assert cat.catalog_info.total_rows == len(table) > 1000
    # Cones on the table agree with astropy over all its rows.
    rng = np.random.default_rng(7)
    coords = SkyCoord(table["ra"].values * u.deg, table["dec"].values * u.deg)
    for ra, dec in zip(rng.uniform(0, 360, 5), rng.uniform(-60, 60, 5)):
        got = pd.read_csv(io.StringIO(sql(base, h, (
            f"SELECT source_id FROM mydb.bright WHERE "
            f"q3c_radial_query(ra, dec, {ra}, {dec}, 5)"))))
        near = coords.separation(SkyCoord(ra * u.deg, dec * u.deg)) < 5 * u.deg
        assert sorted(got["source_id"]) == sorted(table["source_id"][near]), (ra, dec)
    # Replaced, the index follows; dropped, it goes.
    sql(base, h, "SELECT source_id, ra, dec FROM gaia WHERE phot_g_mean_mag < 6",
        out="mydb://bright", drop="True")
    n = len(pd.read_csv(io.StringIO(sql(base, h, "SELECT * FROM mydb.bright"))))
    assert main(hats.read_hats(home / ".hats" / "bright")).catalog_info.total_rows == n < len(table)
    requests.get(f"{base}/query/delete", params={"table": "bright"}, headers=h)
    assert not (home / ".hats" / "bright").exists()


def test_a_table_without_positions_has_no_index(service):
    base, h, home = service
    sql(base, h, "SELECT source_id, phot_g_mean_mag FROM gaia WHERE phot_g_mean_mag < 5",
        out="mydb://mags")
    assert not (home / ".hats" / "mags").exists()
    got = pd.read_csv(io.StringIO(sql(base, h, "SELECT COUNT(*) AS n FROM mydb.mags")))
    assert got["n"][0] > 0
