"""A cross-match whose indexed side is larger than the memory budget: `meridian xmatch`
under a 16 MiB budget, on one machine and on a cluster (a scheduler and two executors from
the binary, each with that budget), matches two 400,000-row catalogs zone by zone, and
agrees with astropy's search_around_sky and match_to_catalog_sky on a sample of left rows.
With one in-memory index (`xmatch_zones = "never"`) the same match fails with a resources
error."""


import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord, search_around_sky
from astropy.table import Table

from conftest import run
from test_cluster_tap import Cluster

N = 400_000
BUDGET = {"MERIDIAN_QUERY__MEMORY_LIMIT_MIB": "16"}


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    """Two catalogs in a 6 x 6 degree field: b holds three quarters of a's rows moved by up to
    2 arcsec and a quarter of rows placed anywhere in the field."""
    d = tmp_path_factory.mktemp("xlarge")
    rng = np.random.default_rng(20261202)
    ra = rng.uniform(150, 156, N)
    dec = rng.uniform(-3, 3, N)
    a = SkyCoord(ra * u.deg, dec * u.deg)
    moved = a.directional_offset_by(rng.uniform(0, 360, N) * u.deg,
                                    rng.uniform(0, 2, N) * u.arcsec)
    anywhere = np.arange(N) % 4 == 0
    rb = np.where(anywhere, rng.uniform(150, 156, N), moved.ra.deg)
    db = np.where(anywhere, rng.uniform(-3, 3, N), moved.dec.deg)
    for name, ids, r, de in [("la", np.arange(N), ra, dec), ("lb", 10**6 + np.arange(N), rb, db)]:
        path = d / f"{name}.csv"
        with open(path, "w") as f:
            f.write("objectId,ra,dec\n")
            np.savetxt(f, np.column_stack([ids, r, de]), fmt=["%d", "%.12f", "%.12f"],
                       delimiter=",")
        run("ingest", name, path, data_dir=d / "data")
    # The positions as the catalogs hold them.
    a = Table.read(d / "la.csv", format="ascii.csv")
    b = Table.read(d / "lb.csv", format="ascii.csv")
    return d / "data", a, b


def xmatch(data, *args, env):
    p = run("xmatch", "la", "lb", "--radius", "1arcsec", "--format", "csv", *args,
            data_dir=data, env={**BUDGET, **env})
    return Table.read(p.stdout, format="ascii.csv")


def check_against_astropy(a, b, pairs, nearest):
    """Meridian's pairs of a sample of left rows equal astropy's."""
    rng = np.random.default_rng(7)
    sample = np.sort(rng.choice(len(a), 3000, replace=False))
    ca = SkyCoord(a["ra"][sample] * u.deg, a["dec"][sample] * u.deg)
    cb = SkyCoord(b["ra"] * u.deg, b["dec"] * u.deg)
    ids = set(a["objectId"][sample])
    got = {(int(x), int(y)) for x, y in zip(pairs["id1"], pairs["id2"]) if x in ids}
    if nearest:
        j, sep, _ = ca.match_to_catalog_sky(cb)
        keep = sep < 1 * u.arcsec
        want = {(int(a["objectId"][s]), int(b["objectId"][k]))
                for s, k in zip(sample[keep], j[keep])}
    else:
        i, j, _, _ = search_around_sky(ca, cb, 1 * u.arcsec)
        want = {(int(a["objectId"][sample[x]]), int(b["objectId"][y])) for x, y in zip(i, j)}
    assert len(want) > 1000
    assert got == want


@pytest.mark.parametrize("nearest", [False, True])
def test_larger_than_memory_cross_match_on_one_machine(catalogs, nearest):
    data, a, b = catalogs
    pairs = xmatch(data, *([] if nearest else ["--all"]), env={})
    check_against_astropy(a, b, pairs, nearest)


def test_one_index_over_the_budget_fails_clearly(catalogs):
    data, _, _ = catalogs
    p = run("xmatch", "la", "lb", "--radius", "1arcsec", "--all", data_dir=data, check=False,
            env={**BUDGET, "MERIDIAN_QUERY__XMATCH_ZONES": "never"})
    assert p.returncode != 0
    assert "Resources exhausted" in p.stderr or "memory" in p.stderr, p.stderr


def test_larger_than_memory_cross_match_on_a_cluster(catalogs):
    data, a, b = catalogs
    c = Cluster(data, env=BUDGET)
    try:
        env = {"MERIDIAN_CLUSTER__SCHEDULER": c.url, "MERIDIAN_CLUSTER__REQUIRED": "true"}
        for nearest in [False, True]:
            pairs = xmatch(data, *([] if nearest else ["--all"]), env=env)
            check_against_astropy(a, b, pairs, nearest)
    finally:
        c.close()
