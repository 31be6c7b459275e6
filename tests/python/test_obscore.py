"""ivoa.obscore over TAP: the registered images, queried with pyvo like any table, listed
in VOSI tables and TAP_SCHEMA with ObsCore's units, UCDs and utypes, s_region a DALI
polygon; access_url is the image's DataLink document, whose #this link serves its file."""

import json
import os
import subprocess
import warnings

import pytest
import requests

from conftest import SHARED, Server, meridian_bin

warnings.simplefilter("ignore")
IMAGES = SHARED / "images"
MANDATORY = ["dataproduct_type", "calib_level", "obs_collection", "obs_id", "obs_publisher_did",
             "access_url", "access_format", "access_estsize", "target_name", "s_ra", "s_dec", "s_fov",
             "s_region", "s_resolution", "s_xel1", "s_xel2", "t_min", "t_max", "t_exptime",
             "t_resolution", "t_xel", "em_min", "em_max", "em_res_power", "em_xel", "o_ucd",
             "pol_states", "facility_name", "instrument_name"]


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    data = tmp_path_factory.mktemp("obscore-data")
    os.symlink(store / "catalogs", data / "catalogs")
    subprocess.run([meridian_bin(), "--data-dir", str(data), "images", "add", "shared", str(IMAGES),
                    "--quiet"], check=True, capture_output=True)
    doc = json.loads((data / "images" / "shared.json").read_text())
    with Server(data) as s:
        yield s.url, doc


def test_obscore_is_queried_like_any_table(service):
    import pyvo
    url, doc = service
    tap = pyvo.dal.TAPService(url)
    rows = tap.search("SELECT * FROM ivoa.obscore ORDER BY obs_id").to_table()
    assert len(rows) == len(doc["datasets"]) == 15
    assert set(MANDATORY) <= set(rows.colnames)
    assert set(rows["dataproduct_type"]) == {"image"} and set(rows["obs_collection"]) == {"shared"}
    assert rows["s_ra"].unit == "deg" and rows["em_min"].unit == "m" and rows["t_min"].unit == "d"
    # A cone on the centres finds the images there, as the registry computed them.
    m13 = next(d for d in doc["datasets"] if d["id"] == "astropy_m13.fits")
    near = tap.search(f"SELECT obs_id FROM ivoa.obscore WHERE 1 = CONTAINS(POINT('ICRS', s_ra, s_dec), "
                      f"CIRCLE('ICRS', {m13['ra_deg']}, {m13['dec_deg']}, 0.01))").to_table()
    assert sorted(near["obs_id"]) == sorted(d["id"] for d in doc["datasets"]
                                            if d["id"].startswith("astropy_m13"))


def test_obscore_metadata_is_published(service):
    import pyvo
    url, _ = service
    tap = pyvo.dal.TAPService(url)
    cols = tap.search("SELECT column_name, ucd, utype, unit, datatype, xtype FROM TAP_SCHEMA.columns "
                      "WHERE table_name = 'ivoa.obscore'").to_table()
    by = {r["column_name"]: r for r in cols}
    assert set(MANDATORY) <= set(by)
    assert by["s_ra"]["ucd"] == "pos.eq.ra" and by["s_ra"]["utype"].startswith("obscore:Char.SpatialAxis")
    assert by["s_region"]["xtype"] == "polygon" and by["access_url"]["ucd"] == "meta.ref.url"
    tables = requests.get(f"{url}/tables").text
    assert "ivoa.obscore" in tables


def test_access_urls_are_datalink_documents_that_serve_the_files(service):
    import io
    import pyvo
    from astropy.io.votable import parse
    from pyvo.dal.adhoc import DatalinkResults
    url, _ = service
    rows = pyvo.dal.TAPService(url).search(
        "SELECT obs_id, obs_publisher_did, access_url, access_format, access_estsize, s_region "
        "FROM ivoa.obscore").to_table()
    for r in rows:
        assert r["access_format"] == "application/x-votable+xml;content=datalink"
        dl = DatalinkResults(parse(io.BytesIO(requests.get(r["access_url"]).content)))
        this = next(dl.bysemantics("#this", include_narrower=False))
        assert this["ID"] == r["obs_publisher_did"]
        name = r["obs_id"].split("[")[0]
        body = requests.get(this.access_url).content
        assert body == (IMAGES / name).read_bytes(), r["obs_id"]
        assert r["access_estsize"] == -(-len(body) // 1024)
        assert len(r["s_region"]) == 8  # four corners
    base = url.removesuffix("/tap")
    r = requests.get(f"{base}/images/file", params={"ID": "ivo://meridian/images/shared?../../etc/passwd"})
    assert r.status_code == 404 and "root:" not in r.text
    assert requests.get(f"{base}/images/file").status_code == 400


def test_adql_geometry_on_s_region(service):
    """INTERSECTS and CONTAINS with s_region, as TOPCAT's ObsCore queries write them,
    against the footprints astropy computes (the oracle of test_sia.py)."""
    import pyvo
    from test_sia import footprint_points, oracle
    url, doc = service
    tap = pyvo.dal.TAPService(url)
    points = {d["id"]: footprint_points(d) for d in doc["datasets"]}
    m13 = next(d for d in doc["datasets"] if d["id"] == "astropy_m13.fits")
    for ra, dec, r in [(m13["ra_deg"], m13["dec_deg"], 0.05), (m13["ra_deg"] + 0.1, m13["dec_deg"], 0.04),
                       (0, 0, 90), (180, 0, 90)]:
        got = {row["obs_id"] for row in tap.search(
            f"SELECT obs_id FROM ivoa.obscore WHERE 1 = INTERSECTS(s_region, CIRCLE('ICRS', {ra}, {dec}, {r}))")}
        yes, no = oracle(points, ra, dec, r)
        assert yes <= got and not (no & got), (ra, dec, r, yes - got, no & got)
    got = {row["obs_id"] for row in tap.search(
        f"SELECT obs_id FROM ivoa.obscore WHERE 1 = CONTAINS(POINT('ICRS', {m13['ra_deg']}, {m13['dec_deg']}), s_region)")}
    assert got == {d["id"] for d in doc["datasets"] if d["id"].startswith("astropy_m13")}
    inside = {row["obs_id"] for row in tap.search(
        f"SELECT obs_id FROM ivoa.obscore WHERE 1 = CONTAINS(s_region, CIRCLE('ICRS', {m13['ra_deg']}, {m13['dec_deg']}, 1))")}
    assert inside >= got
