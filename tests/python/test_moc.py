"""MOC 2.0 coverage of catalogs and image collections, served at /moc/<name> (FITS, JSON,
ASCII) and written by `meridian moc`. Oracles: mocpy's `MOC.from_lonlat` on the catalog's
rows read from the input file with astropy, and mocpy's polygon MOCs of the footprints
astropy.wcs computes from each image's header."""

import io
import json
import os
import subprocess
import warnings

import numpy as np
import pytest
import requests

from conftest import SHARED, Server, meridian_bin

warnings.simplefilter("ignore")
IMAGES = SHARED / "images"


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    data = tmp_path_factory.mktemp("moc-data")
    os.symlink(store / "catalogs", data / "catalogs")
    subprocess.run([meridian_bin(), "--data-dir", str(data), "images", "add", "shared", str(IMAGES),
                    "--quiet"], check=True, capture_output=True)
    doc = json.loads((data / "images" / "shared.json").read_text())
    with Server(data) as s:
        yield s.url.removesuffix("/tap"), data, doc


@pytest.fixture(scope="module")
def gaia_rows():
    from astropy.table import Table
    t = Table.read(SHARED / "catalogs/gaia_dr3_bright.csv.gz", format="ascii.csv")
    return np.asarray(t["ra"], dtype=float), np.asarray(t["dec"], dtype=float)


def mocpy_of_rows(ra, dec, order):
    import astropy.units as u
    from mocpy import MOC
    return MOC.from_lonlat(ra * u.deg, dec * u.deg, max_norder=order)


@pytest.mark.parametrize("order", [3, 8, 11])
def test_catalog_moc_equals_mocpy(service, gaia_rows, order):
    from mocpy import MOC
    base, _, _ = service
    want = mocpy_of_rows(*gaia_rows, order)
    r = requests.get(f"{base}/moc/gaia", params={"order": order})
    assert r.status_code == 200 and r.headers["content-type"] == "application/fits", r.text[:200]
    got = MOC.from_fits(__import__("io").BytesIO(r.content))
    assert got == want
    assert got.max_order == order
    # The same cells as JSON and ASCII.
    j = requests.get(f"{base}/moc/gaia", params={"order": order, "fmt": "json"})
    assert MOC.from_json({k: v for k, v in j.json().items()}) == want
    a = requests.get(f"{base}/moc/gaia", params={"order": order, "fmt": "ascii"})
    assert a.headers["content-type"].startswith("text/plain")
    assert MOC.from_str(a.text) == want


def test_moc_command_writes_each_format(service, gaia_rows, tmp_path):
    from mocpy import MOC
    _, data, _ = service
    want = mocpy_of_rows(*gaia_rows, 9)
    for name, load in (("m.fits", MOC.from_fits), ("m.json", lambda p: MOC.from_json(json.load(open(p)))),
                       ("m.txt", lambda p: MOC.from_str(open(p).read()))):
        out = tmp_path / name
        p = subprocess.run([meridian_bin(), "--data-dir", str(data), "moc", "gaia", "--order", "9",
                            "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert load(str(out)) == want, name
        assert not (tmp_path / "m.partial").exists()


def astropy_footprint_moc(doc, order):
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS
    from mocpy import MOC
    mocs = []
    for d in doc["datasets"]:
        with fits.open(d["path"]) as hl:
            w = WCS(hl[d["hdu"]].header, hl).celestial
            ny, nx = d["height"], d["width"]
        # The outer corners of the corner pixels, as the images' footprints.
        corners = w.pixel_to_world([-0.5, nx - 0.5, nx - 0.5, -0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5])
        c = corners.icrs
        mocs.append(MOC.from_polygon_skycoord(SkyCoord(c.ra, c.dec), max_depth=order))
    out = mocs[0]
    for m in mocs[1:]:
        out = out.union(m)
    return out


@pytest.mark.parametrize("order", [6, 9])
def test_collection_moc_equals_mocpy_from_astropy_footprints(service, order):
    from mocpy import MOC
    base, _, doc = service
    want = astropy_footprint_moc(doc, order)
    r = requests.get(f"{base}/moc/shared", params={"order": order})
    assert r.status_code == 200, r.text[:300]
    got = MOC.from_fits(__import__("io").BytesIO(r.content))
    assert got == want, (got.sky_fraction, want.sky_fraction)


def test_bad_moc_requests_get_clear_errors(service):
    base, _, _ = service
    r = requests.get(f"{base}/moc/nothing")
    assert r.status_code == 404 and "nothing" in r.text
    r = requests.get(f"{base}/moc/gaia", params={"order": 40})
    assert r.status_code == 400 and "order" in r.text
    r = requests.get(f"{base}/moc/gaia", params={"fmt": "png"})
    assert r.status_code == 400 and "fmt" in r.text
    assert requests.get(f"{base}/health").status_code == 200


def gaia_ids_in(moc):
    """Source ids of the Gaia sample's rows inside `moc`, by mocpy."""
    import astropy.units as u
    from astropy.table import Table
    t = Table.read(SHARED / "catalogs/gaia_dr3_bright.csv.gz", format="ascii.csv")
    inside = moc.contains_lonlat(np.asarray(t["ra"], float) * u.deg, np.asarray(t["dec"], float) * u.deg)
    return set(np.asarray(t["source_id"], dtype=np.int64)[inside].tolist())


def region_moc():
    """A MOC of mixed orders: a cone and a polygon, as mocpy builds them."""
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude
    from mocpy import MOC
    cone = MOC.from_cone(Longitude(83.8 * u.deg), Latitude(-5.4 * u.deg), radius=3 * u.deg, max_depth=9)
    poly = MOC.from_polygon_skycoord(__import__("astropy.coordinates", fromlist=["SkyCoord"]).SkyCoord(
        [200, 210, 212, 198] * u.deg, [10, 11, 20, 19] * u.deg), max_depth=8)
    return cone.union(poly)


def test_adql_moc_literal_selects_the_rows_mocpy_says(service):
    import pyvo
    base, _, _ = service
    moc = region_moc()
    ascii_text = moc.serialize(format="str")
    want = gaia_ids_in(moc)
    assert 100 < len(want) < 50_000
    tap = pyvo.dal.TAPService(f"{base}/tap")
    got = tap.run_sync(f"SELECT source_id FROM gaia WHERE CONTAINS(POINT('ICRS', ra, dec), "
                       f"MOC('{ascii_text}')) = 1", maxrec=100_000).to_table()
    assert set(np.asarray(got["source_id"], dtype=np.int64).tolist()) == want
    # Its area, against mocpy's sky fraction.
    area = tap.run_sync(f"SELECT AREA(MOC('{ascii_text}')) AS a FROM gaia WHERE source_id = "
                        f"{next(iter(want))}").to_table()["a"][0]
    assert abs(area - moc.sky_fraction * 41252.961249419) < 1e-6 * area


def test_uploaded_moc_restricts_a_query(service, tmp_path):
    import pyvo
    base, _, _ = service
    moc = region_moc()
    want = gaia_ids_in(moc)
    tap = pyvo.dal.TAPService(f"{base}/tap")
    query = ("SELECT g.source_id FROM gaia AS g, TAP_UPLOAD.cov AS m "
             "WHERE CONTAINS(POINT('ICRS', g.ra, g.dec), MOC(m.moc)) = 1")
    for fmt, name in [("fits", "cov.fits"), ("json", "cov.json"), ("ascii", "cov.txt")]:
        path = tmp_path / name
        if fmt == "fits":
            moc.save(path, format="fits", overwrite=True)
        else:
            path.write_text(moc.serialize(format="json" if fmt == "json" else "str") if fmt == "ascii"
                            else json.dumps(moc.serialize(format="json")))
        # pyvo sends a file object as it is (a path it would open as text).
        got = tap.run_sync(query, uploads={"cov": io.BytesIO(path.read_bytes())}, maxrec=100_000).to_table()
        assert set(np.asarray(got["source_id"], dtype=np.int64).tolist()) == want, fmt


def test_bad_mocs_are_usage_errors(service):
    base, _, _ = service
    for q, word in [("SELECT source_id FROM gaia WHERE CONTAINS(POINT('ICRS', ra, dec), MOC('3/x')) = 1", "MOC"),
                    ("SELECT MOC('3/1') FROM gaia", "MOC"),
                    ("SELECT source_id FROM gaia WHERE CONTAINS(CIRCLE('ICRS', 1, 2, 3), MOC('3/1')) = 1",
                     "POINT"),
                    # Orders past 29 and cells past the sphere's are refused, not a crash.
                    ("SELECT source_id FROM gaia WHERE CONTAINS(POINT('ICRS', ra, dec), MOC('30/0')) = 1", "MOC"),
                    ("SELECT source_id FROM gaia WHERE CONTAINS(POINT('ICRS', ra, dec), MOC('0/12')) = 1",
                     "sphere")]:
        r = requests.post(f"{base}/tap/sync", data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": q})
        assert r.status_code == 400 and word in r.text, (q, r.status_code, r.text[:300])


@pytest.mark.parametrize("time_order", [45, 35])
def test_collection_stmoc_equals_mocpy(service, time_order):
    """The space-time MOC of the shared images: each image's astropy footprint over its
    exposure (t_min to t_max, as registered), by mocpy's `STMOC.from_spatial_coverages`.
    Times are given to mocpy as TCB: Meridian takes the images' times as they are (the
    minute or so between UTC and TCB is left out). Time orders 45 (65 ms) and 35 (67 s):
    at order 61 (1 us) the two round a double MJD to microseconds differently (a double
    holds an MJD to about half a microsecond)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.time import Time
    from astropy.wcs import WCS
    from mocpy import MOC, STMOC
    base, _, doc = service
    order = 8
    starts, ends, skies = [], [], []
    for d in doc["datasets"]:
        if d.get("t_min_mjd") is None:
            continue
        with fits.open(d["path"]) as hl:
            w = WCS(hl[d["hdu"]].header, hl).celestial
        nx, ny = d["width"], d["height"]
        c = w.pixel_to_world([-0.5, nx - 0.5, nx - 0.5, -0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5]).icrs
        skies.append(MOC.from_polygon_skycoord(SkyCoord(c.ra, c.dec), max_depth=order))
        starts.append(d["t_min_mjd"])
        ends.append(d.get("t_max_mjd") or d["t_min_mjd"])
    assert len(skies) >= 3
    want = STMOC.from_spatial_coverages(Time(starts, format="mjd", scale="tcb"),
                                        Time(ends, format="mjd", scale="tcb"), skies, time_depth=time_order)
    r = requests.get(f"{base}/moc/shared", params={"type": "stmoc", "order": order, "time_order": time_order})
    assert r.status_code == 200, r.text[:300]
    got = STMOC.from_fits(io.BytesIO(r.content))
    assert got == want
    # Errors: no times in a catalog, JSON asked, an order out of range.
    for params, status in [({"type": "stmoc", "time_order": 62}, 400), ({"type": "stmoc", "fmt": "json"}, 400)]:
        assert requests.get(f"{base}/moc/shared", params=params).status_code == status
    assert requests.get(f"{base}/moc/gaia", params={"type": "stmoc"}).status_code == 400
    # Bounded: the space order, and a time column only for catalogs.
    for params in [{"type": "stmoc", "order": 16}, {"type": "stmoc", "time_column": "x"}]:
        r = requests.get(f"{base}/moc/shared", params=params)
        assert r.status_code == 400, (params, r.status_code)


def test_catalog_stmoc_equals_mocpy(tmp_path):
    """The space-time MOC of a catalog with times (the synthetic survey's Source table:
    `midpointMjdTai`, UCD time.epoch): mocpy's `STMOC.from_times_positions` on the rows
    read from the input Parquet file with pyarrow."""
    import astropy.units as u
    import pyarrow.parquet as pq
    from astropy.time import Time
    from mocpy import STMOC
    src = tmp_path / "gen"
    subprocess.run([meridian_bin(), "--quiet", "generate", "--out", str(src), "--objects", "3000",
                    "--source-epochs", "4", "--profile", "narrow"], check=True, capture_output=True)
    data = tmp_path / "data"
    files = sorted(src.glob("source-*.parquet"))
    subprocess.run([meridian_bin(), "--quiet", "--data-dir", str(data), "ingest", "src", *map(str, files)],
                   check=True, capture_output=True)
    t = pq.read_table(files[0], columns=["ra", "dec", "midpointMjdTai"]).to_pandas()
    with Server(data) as s:
        base = s.url.removesuffix("/tap")
        for order, time_order in [(7, 40), (10, 30)]:
            want = STMOC.from_times_positions(Time(t["midpointMjdTai"].to_numpy(), format="mjd", scale="tcb"),
                                              time_order, t["ra"].to_numpy() * u.deg, t["dec"].to_numpy() * u.deg,
                                              order)
            r = requests.get(f"{base}/moc/src", params={"type": "stmoc", "order": order, "time_order": time_order})
            assert r.status_code == 200, r.text[:300]
            assert STMOC.from_fits(io.BytesIO(r.content)) == want, (order, time_order)
        for column in ["nope", "ra"]:
            r = requests.get(f"{base}/moc/src", params={"type": "stmoc", "time_column": column})
            assert r.status_code == 400 and column in r.text, (column, r.text[:200])
