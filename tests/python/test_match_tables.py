"""Precomputed cross-match tables, made and kept current by Meridian itself.

With Tycho-2 and Hipparcos configured as references, registering or ingesting a catalog
makes its tables with each of them (x1p5__<catalog>__<reference>), which must equal astropy's
match_coordinates_sky nearest neighbours within 1.5" (partners and distances); pyvo's join
through a table over TAP equals the direct cross-match and TAP_SCHEMA declares the joins.
A changed reference recomputes exactly the tables that depend on it.
"""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import pyvo
from astropy import units as u
from astropy.coordinates import SkyCoord, match_coordinates_sky
from astropy.io import fits
from astropy.table import Table

from conftest import Server, run

RADIUS = 1.5
ENV = {"MERIDIAN_XMATCH__REFERENCES": '["tycho2", "hipparcos"]'}


def coords(df):
    return SkyCoord(df["ra"].values * u.deg, df["dec"].values * u.deg)


def astropy_nearest(a, b):
    """Each row of `a` with its nearest row of `b` within RADIUS: ra1, dec1, ra2, dec2, sep."""
    idx, sep, _ = match_coordinates_sky(coords(a), coords(b))
    ok = sep.arcsec <= RADIUS
    return pd.DataFrame({"ra1": a["ra"].values[ok], "dec1": a["dec"].values[ok],
                         "ra2": b["ra"].values[idx[ok]], "dec2": b["dec"].values[idx[ok]],
                         "sep": sep.arcsec[ok]})


def table_of(d, name, tmp_path):
    out = tmp_path / f"{name}.parquet"
    run("query", f"SELECT * FROM {name}", "--format", "parquet", "--out", out, "--maxrec", 10**7,
        data_dir=d, env=ENV)
    return pq.read_table(out).to_pandas()


def assert_equals_astropy(got, want):
    key = ["ra1", "dec1", "ra2", "dec2"]
    assert len(got) == len(want) > 0
    merged = got.merge(want, on=key, how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"].head()
    assert np.allclose(merged["distance_arcsec"], merged["sep"], rtol=0, atol=1e-6)


def property_of(d, table, key):
    out = run("info", table, data_dir=d, env=ENV).stdout
    for line in out.splitlines():
        k, _, v = line.strip().partition(" = ")
        if k == key:
            return v
    return None


def built(p):
    """The match tables a command says it computed."""
    return sorted(m.group(1) for m in re.finditer(r"^(x\S+): \d+ rows \(", p.stderr, re.M))


@pytest.fixture(scope="module")
def inputs(shared):
    gaia = pd.read_csv(shared / "catalogs/gaia_dr3_bright.csv.gz")
    with fits.open(shared / "catalogs/tycho2_subset.fits.gz") as h:
        tycho = pd.DataFrame({"ra": h[1].data["ra"].astype(float), "dec": h[1].data["dec"].astype(float)})
    hip = Table.read(shared / "catalogs/hipparcos2.vot").to_pandas()
    return {"gaia": gaia, "tycho2": tycho, "hipparcos": hip}


@pytest.fixture(scope="module")
def tables(tmp_path_factory, store, shared):
    """A data directory serving the session's Gaia and Tycho-2 in place, and Hipparcos."""
    d = tmp_path_factory.mktemp("match-tables")
    # The first reference alone: the other does not exist yet, which is said, not fatal.
    p = run("register", "tycho2", store / "catalogs" / "tycho2", data_dir=d, env=ENV)
    assert "reference catalog 'hipparcos' cannot be used" in p.stderr, p.stderr
    p = run("ingest", "hipparcos", shared / "catalogs/hipparcos2.vot", data_dir=d, env=ENV)
    assert built(p) == ["x1p5__hipparcos__tycho2", "x1p5__tycho2__hipparcos"], p.stderr
    p = run("register", "gaia", store / "catalogs" / "gaia", data_dir=d, env=ENV)
    assert built(p) == ["x1p5__gaia__hipparcos", "x1p5__gaia__tycho2"], p.stderr
    return d


def test_status_lists_every_table_current(tables):
    p = run("xmatch", "status", data_dir=tables, env=ENV)
    lines = dict(line.split("\t", 1) for line in p.stdout.strip().splitlines())
    assert lines == {t: "current" for t in ["x1p5__gaia__hipparcos", "x1p5__gaia__tycho2",
                                            "x1p5__hipparcos__tycho2", "x1p5__tycho2__hipparcos"]}
    p = run("xmatch", "refresh", data_dir=tables, env=ENV)
    assert p.stderr.count(": current") == 4, p.stderr


@pytest.mark.parametrize("a,b", [("gaia", "tycho2"), ("gaia", "hipparcos"), ("tycho2", "hipparcos")])
def test_tables_equal_match_coordinates_sky(tables, inputs, tmp_path, a, b):
    got = table_of(tables, f"x1p5__{a}__{b}", tmp_path)
    # (and _healpix_29, the spatial index every catalog has)
    assert [c for c in got.columns if c != "_healpix_29"] == [
        "id1", "ra1", "dec1", "id2", "ra2", "dec2", "distance_arcsec"]
    want = astropy_nearest(inputs[a], inputs[b])
    print(f"x1p5__{a}__{b}: {len(got)} rows, astropy {len(want)}")
    assert_equals_astropy(got, want)
    if a == "gaia":
        # id1 is Gaia's source_id of that row.
        g = inputs["gaia"].set_index(["ra", "dec"])["source_id"]
        assert (got.set_index(["ra1", "dec1"])["id1"] == g.loc[got.set_index(["ra1", "dec1"]).index]).all()


def test_tap_join_through_the_table_equals_the_direct_crossmatch(tables, tmp_path):
    direct = tmp_path / "direct.parquet"
    run("xmatch", "gaia", "hipparcos", "--radius", "1.5arcsec", "--format", "parquet", "--out", direct,
        data_dir=tables, env=ENV)
    want = pq.read_table(direct).to_pandas()
    with Server(tables, env=ENV) as s:
        tap = pyvo.dal.TAPService(s.url)
        got = tap.run_sync(
            "SELECT g.source_id, h.hip, x.distance_arcsec FROM x1p5__gaia__hipparcos AS x "
            "JOIN gaia AS g ON g.source_id = x.id1 JOIN hipparcos AS h ON h.hip = x.id2",
            maxrec=10**6).to_table().to_pandas()
        keys = tap.run_sync(
            "SELECT k.key_id, k.from_table, k.target_table, c.from_column, c.target_column "
            "FROM TAP_SCHEMA.keys AS k JOIN TAP_SCHEMA.key_columns AS c ON c.key_id = k.key_id "
            "WHERE k.from_table = 'x1p5__gaia__hipparcos'").to_table().to_pandas()
        cols = tap.run_sync(
            "SELECT column_name, unit, ucd FROM TAP_SCHEMA.columns "
            "WHERE table_name = 'x1p5__gaia__hipparcos'").to_table().to_pandas()
    pairs = lambda df, i, j: sorted(zip(df[i].astype(np.int64), df[j].astype(np.int64)))  # noqa: E731
    assert len(got) == len(want) > 1000
    assert pairs(got, "source_id", "hip") == pairs(want, "id1", "id2")
    assert sorted(zip(keys["target_table"], keys["from_column"], keys["target_column"])) == [
        ("gaia", "id1", "source_id"), ("hipparcos", "id2", "hip")]
    units = dict(zip(cols["column_name"], cols["unit"]))
    ucds = dict(zip(cols["column_name"], cols["ucd"]))
    assert units["distance_arcsec"] == "arcsec" and units["ra1"] == "deg"
    assert ucds["id1"] == "meta.id;meta.main" and ucds["distance_arcsec"] == "pos.angDistance"


def test_changed_reference_recomputes_exactly_its_tables(tables, inputs, shared, tmp_path):
    untouched = property_of(tables, "x1p5__gaia__tycho2", "meridian_xmatch_catalog_version")
    old_hip_version = property_of(tables, "x1p5__gaia__hipparcos", "meridian_xmatch_reference_version")
    # Hipparcos again, without every fifth star and with one star moved by 1".
    hip = Table.read(shared / "catalogs/hipparcos2.vot")
    keep = np.arange(len(hip)) % 5 != 0
    hip = hip[keep]
    hip["dec"][0] += 1 / 3600
    path = tmp_path / "hipparcos_v2.parquet"
    hip.write(path, format="parquet")
    p = run("ingest", "hipparcos", path, data_dir=tables, env=ENV)
    assert built(p) == ["x1p5__gaia__hipparcos", "x1p5__hipparcos__tycho2", "x1p5__tycho2__hipparcos"], p.stderr
    assert property_of(tables, "x1p5__gaia__tycho2", "meridian_xmatch_catalog_version") == untouched
    assert property_of(tables, "x1p5__gaia__hipparcos", "meridian_xmatch_reference_version") != old_hip_version
    new_hip = hip.to_pandas()[["ra", "dec"]].astype(float)
    assert_equals_astropy(table_of(tables, "x1p5__gaia__hipparcos", tmp_path),
                          astropy_nearest(inputs["gaia"], new_hip))
    status = run("xmatch", "status", data_dir=tables, env=ENV).stdout
    assert status.count("\tcurrent") == 4, status


def test_bad_settings_are_refused(tables):
    p = run("xmatch", "status", data_dir=tables, env={"MERIDIAN_XMATCH__REFERENCES": '["tycho"]'}, check=False)
    assert p.returncode == 1 and "reference catalog 'tycho' cannot be used" in p.stderr, p.stderr
    assert "did you mean 'tycho2'" in p.stderr
    p = run("xmatch", "status", data_dir=tables, env={**ENV, "MERIDIAN_XMATCH__RADIUS_ARCSEC": "0"}, check=False)
    assert p.returncode == 1 and "radius_arcsec" in p.stderr, p.stderr
    p = run("xmatch", "refresh", data_dir=tables, check=False)
    assert p.returncode == 1 and "no reference catalogs are configured" in p.stderr


def test_portal_offers_the_join(tables, browser):
    """The portal's schema browser offers the join a match table's keys declare, and the
    query it writes runs."""
    with Server(tables, env=ENV) as s:
        base = s.url.removesuffix("/tap") + "/"
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base)
        join = page.locator("button[aria-label='Join x1p5__gaia__hipparcos to gaia and hipparcos']")
        join.wait_for(timeout=60000)
        # Each match table offers its join (as TAP_SCHEMA's own tables do theirs).
        assert page.locator("section[aria-label='Schema browser'] button.join[aria-label^='Join x1p5__']").count() == 4
        join.click()
        text = page.locator(".cm-content").inner_text()
        assert text == ("SELECT TOP 100 t0.*, t1.*, t2.*\nFROM x1p5__gaia__hipparcos AS t0\n"
                        "JOIN gaia AS t1 ON t1.source_id = t0.id1\n"
                        "JOIN hipparcos AS t2 ON t2.hip = t0.id2"), text
        page.click("button:has-text('Run')")
        page.wait_for_selector("[data-testid=row-count]", timeout=60000)
        assert page.inner_text("[data-testid=row-count]") == "100"
        ctx.close()
        assert not errors, errors


def test_serve_recomputes_stale_tables_in_the_background(tables, inputs, shared, tmp_path):
    """A reference changed behind the server's back (ingested without the references
    configured, so that nothing recomputes at ingest): the server's low-priority thread
    recomputes its tables, and TAP serves the new version."""
    import time
    hip = Table.read(shared / "catalogs/hipparcos2.vot")
    hip = hip[np.arange(len(hip)) % 7 != 0]
    path = tmp_path / "hipparcos_v3.parquet"
    hip.write(path, format="parquet")
    env = {**ENV, "MERIDIAN_XMATCH__CHECK_INTERVAL_S": "1"}
    want = astropy_nearest(inputs["gaia"], hip.to_pandas()[["ra", "dec"]].astype(float))
    with Server(tables, env=env) as s:
        run("ingest", "hipparcos", path, data_dir=tables)
        deadline = time.time() + 300
        while "\tstale" in run("xmatch", "status", data_dir=tables, env=ENV).stdout:
            assert time.time() < deadline, "the server did not recompute the stale tables"
            time.sleep(1)
        # The recompute ran on a thread of lowered priority (nice 10).
        names = {}
        for task in Path(f"/proc/{s.proc.pid}/task").iterdir():
            try:
                names[(task / "comm").read_text().strip()] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
            except (FileNotFoundError, ProcessLookupError):
                pass
        assert names.get("meridian-xmatch") == 10, names
        n = pyvo.dal.TAPService(s.url).run_sync(
            "SELECT COUNT(*) AS n FROM x1p5__gaia__hipparcos").to_table()["n"][0]
        assert n == len(want)
        assert any("recomputed in the background" in line for line in s.log), list(s.log)[-20:]
