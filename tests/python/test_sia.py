"""SIA 2.0 and DataLink over the registered images, through pyvo.

The oracle is astropy: each image's footprint is sampled on its pixel grid (every edge
pixel and an interior grid) by astropy.wcs and converted to ICRS by SkyCoord, and an image
meets a circle when one of those points lies within it. Images whose nearest point is
within a small band of the circle's edge (where sampling and the footprint polygon may
honestly differ) are left out of the comparison; everything else must agree exactly."""

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
    data = tmp_path_factory.mktemp("sia-data")
    os.symlink(store / "catalogs", data / "catalogs")
    for name, paths in [("shared", [str(IMAGES)]),
                        ("m13", [str(p) for p in sorted(IMAGES.glob("astropy_m13*.fits"))])]:
        subprocess.run([meridian_bin(), "--data-dir", str(data), "images", "add", name, *paths,
                        "--quiet"], check=True, capture_output=True)
    docs = {n: json.loads((data / "images" / f"{n}.json").read_text()) for n in ("shared", "m13")}
    with Server(data) as s:
        yield s.url.removesuffix("/tap"), docs


def did(collection, dataset):
    return f"ivo://meridian/images/{collection}?{dataset['id']}"


def footprint_points(dataset):
    """ICRS SkyCoord of points of the image: every edge pixel (outer edges) and a grid."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS
    with fits.open(dataset["path"]) as hl:
        h = hl[dataset["hdu"]].header
        w = WCS(h, hl).celestial
    nx, ny = dataset["width"], dataset["height"]
    xs = np.linspace(0.5, nx + 0.5, max(nx, 2) + 1)  # FITS 1-based edges ...
    ys = np.linspace(0.5, ny + 0.5, max(ny, 2) + 1)
    gx, gy = np.meshgrid(np.linspace(0.5, nx + 0.5, 25), np.linspace(0.5, ny + 0.5, 25))
    px = np.concatenate([xs, xs, np.full_like(ys, 0.5), np.full_like(ys, nx + 0.5), gx.ravel()])
    py = np.concatenate([np.full_like(xs, 0.5), np.full_like(xs, ny + 0.5), ys, ys, gy.ravel()])
    c = w.pixel_to_world(px - 1, py - 1)  # astropy pixels are 0-based
    return SkyCoord(c).icrs


@pytest.fixture(scope="module")
def points(service):
    _, docs = service
    return {did("shared", d): footprint_points(d) for d in docs["shared"]["datasets"]}


def oracle(points, ra, dec, r_deg):
    """(must match, must not match) DIDs for CIRCLE ra dec r."""
    from astropy.coordinates import SkyCoord
    import astropy.units as u
    centre = SkyCoord(ra * u.deg, dec * u.deg)
    yes, no = set(), set()
    for k, pts in points.items():
        nearest = pts.separation(centre).deg.min()
        span = pts.separation(pts[0]).deg.max()
        tol = max(1e-3 * span, 1 / 3600)
        if nearest <= r_deg - tol:
            yes.add(k)
        elif nearest >= r_deg + tol:
            no.add(k)
    return yes, no


def test_circles_match_astropy_footprints(service, points):
    import pyvo
    base, docs = service
    sia = pyvo.dal.SIA2Service(f"{base}/sia")
    ds = docs["shared"]["datasets"]
    circles = []
    for d in ds:
        fov = d["fov_deg"]
        ra, dec = d["ra_deg"], d["dec_deg"]
        circles += [(ra, dec, fov / 100), (ra, dec + 0.6 * fov, 0.15 * fov),
                    ((ra + 0.7 * fov / max(np.cos(np.radians(dec)), 0.1)) % 360, dec, 0.2 * fov)]
    circles += [(0, 0, 90), (180, 0, 90), (10, -80, 5), (250.42, 36.46, 2.0)]
    checked = 0
    for ra, dec, r in circles:
        got = {row["obs_publisher_did"] for row in
               sia.search(pos=(ra, dec, r), collection="shared", maxrec=1000)}
        yes, no = oracle(points, ra, dec, r)
        assert yes <= got, (ra, dec, r, yes - got)
        assert not (no & got), (ra, dec, r, no & got)
        checked += len(yes) + len(no)
    assert checked > 0.9 * len(circles) * len(ds)


def test_polygon_and_range(service, points):
    import pyvo
    base, docs = service
    sia = pyvo.dal.SIA2Service(f"{base}/sia")
    m13 = next(d for d in docs["shared"]["datasets"] if d["id"] == "astropy_m13.fits")
    ra, dec = m13["ra_deg"], m13["dec_deg"]
    # pyvo: a flat list of an even number (at least 6) of values is a polygon.
    box = (ra - 0.01, dec - 0.01, ra + 0.01, dec - 0.01, ra + 0.01, dec + 0.01, ra - 0.01, dec + 0.01)
    got = {r["obs_id"] for r in sia.search(pos=box, collection="shared")}
    assert got == {d["id"] for d in docs["shared"]["datasets"] if d["id"].startswith("astropy_m13")}
    got = {r["obs_id"] for r in sia.search(pos=(ra - 0.01, ra + 0.01, dec - 0.01, dec + 0.01),
                                           collection="shared")}
    assert got == {d["id"] for d in docs["shared"]["datasets"] if d["id"].startswith("astropy_m13")}
    # A range round the whole sky at every declination finds everything.
    r = requests.get(f"{base}/sia/query", params={"POS": "RANGE 0 360 -90 90", "COLLECTION": "shared"})
    assert r.status_code == 200
    from astropy.io.votable import parse_single_table
    import io
    assert len(parse_single_table(io.BytesIO(r.content)).array) == len(docs["shared"]["datasets"])


def band_of(header):
    """Central wavelengths (m) of the test images' filters, from the filter systems
    (SDSS r 620 nm, Johnson B 440 nm, MegaPrime g 475 nm), independent of the service."""
    f = str(header.get("FILTER", "")).strip()
    return {"r": 620e-9, "B": 440e-9, "g.MP9401": 475e-9}.get(f)


def test_band_time_and_collection(service):
    import pyvo
    from astropy.io import fits
    from astropy.time import Time
    base, docs = service
    sia = pyvo.dal.SIA2Service(f"{base}/sia")
    ds = docs["shared"]["datasets"]
    headers = {}
    for d in ds:
        with fits.open(d["path"]) as hl:
            headers[d["id"]] = hl[d["hdu"]].header
    # BAND: a narrow interval about each filter's centre finds the images in that filter.
    for centre in (620e-9, 440e-9, 475e-9):
        got = {r["obs_id"] for r in sia.search(band=(centre - 5e-9, centre + 5e-9), collection="shared")}
        want = {k for k, h in headers.items() if band_of(h) and abs(band_of(h) - centre) < 1e-9}
        assert want and want <= got, (centre, want, got)
    # TIME: MJD-OBS (or DATE-OBS) to MJD-OBS + EXPTIME, by astropy.time.
    for k, h in headers.items():
        if "MJD-OBS" not in h:
            continue
        t0 = Time(h["MJD-OBS"], format="mjd")
        got = {r["obs_id"] for r in sia.search(time=(t0 + 1e-5, t0 + 2e-5), collection="shared")}
        assert k in got
        others = {o for o, oh in headers.items() if "MJD-OBS" in oh
                  and abs(oh["MJD-OBS"] - h["MJD-OBS"]) > 1}
        assert not (others & got)
        assert k not in {r["obs_id"] for r in sia.search(time=(t0 - 2, t0 - 1), collection="shared")}
    # COLLECTION, repeated values OR-ed, and the per-collection service.
    m13 = {r["obs_publisher_did"] for r in sia.search(collection="m13")}
    assert m13 == {did("m13", d) for d in docs["m13"]["datasets"]} and len(m13) == 5
    both = {r["obs_publisher_did"] for r in sia.search(collection=["m13", "shared"], maxrec=100)}
    assert len(both) == 20
    one = pyvo.dal.SIA2Service(f"{base}/sia/m13")
    assert {r["obs_publisher_did"] for r in one.search()} == m13
    assert not list(one.search(collection="shared"))
    # MAXREC and the overflow status.
    r = requests.get(f"{base}/sia/query", params={"MAXREC": "3", "RESPONSEFORMAT": "votable/td"})
    assert r.status_code == 200 and r.text.count("<TR>") == 3 and 'value="OVERFLOW"' in r.text


def test_other_parameters(service):
    base, docs = service
    from astropy.io.votable import parse_single_table
    import io

    def ids(**params):
        r = requests.get(f"{base}/sia/query", params={"COLLECTION": "shared", **params})
        assert r.status_code == 200, r.text
        return {x["obs_id"] for x in parse_single_table(io.BytesIO(r.content)).to_table()}

    ds = {d["id"]: d for d in docs["shared"]["datasets"]}
    assert ids(FOV="0 0.05") == {k for k, d in ds.items() if d["fov_deg"] <= 0.05}
    assert ids(SPATRES="1 2") == {k for k, d in ds.items() if 1 <= d["pixel_arcsec"] <= 2}
    assert ids(EXPTIME="100 +Inf") == {k for k, d in ds.items() if (d["exptime_s"] or 0) >= 100}
    assert ids(DPTYPE="image") == set(ds) and ids(DPTYPE="cube") == set()
    assert ids(CALIB="2") == set(ds) and ids(CALIB="1") == set()
    assert ids(ID=did("shared", ds["astropy_m13.fits"])) == {"astropy_m13.fits"}
    assert ids(POL="I") == set() and ids(SPECRP="1000 +Inf") == set()
    assert ids(FORMAT="image/fits") == set(ds)
    fac = next(d["facility"] for d in ds.values() if d["facility"])
    assert ids(FACILITY=fac) == {k for k, d in ds.items() if d["facility"] == fac}


def test_bad_parameters_name_the_parameter(service):
    base, _ = service
    for params, says in [({"POS": "CIRCLE 10 95 1"}, "POS"), ({"POS": "BOX 1 2 3 4"}, "POS"),
                         ({"POS": "CIRCLE 1 2"}, "POS"), ({"BAND": "5 1"}, "BAND"),
                         ({"TIME": "x"}, "TIME"), ({"CALIB": "high"}, "CALIB"),
                         ({"MAXREC": "-1"}, "MAXREC"), ({"RESPONSEFORMAT": "pdf"}, "pdf")]:
        r = requests.get(f"{base}/sia/query", params=params)
        assert r.status_code == 400, (params, r.status_code)
        assert says in r.text and 'value="ERROR"' in r.text, r.text
    assert requests.get(f"{base}/sia/nosuch/query").status_code == 404
    assert requests.get(f"{base}/sia/availability").status_code == 200


def test_capabilities(service):
    import pyvo
    base, _ = service
    caps = pyvo.dal.SIA2Service(f"{base}/sia").capabilities
    ids = {c.standardid for c in caps}
    assert "ivo://ivoa.net/std/SIA#query-2.0" in ids and "ivo://ivoa.net/std/VOSI#availability" in ids
    caps = pyvo.dal.SIA2Service(f"{base}/sia/m13").capabilities
    sia = next(c for c in caps if c.standardid == "ivo://ivoa.net/std/SIA#query-2.0")
    assert sia.interfaces[0].accessurls[0].content == f"{base}/sia/m13/query"


# pyvo widens a semantics term with narrower ones from the IVOA vocabulary, which it fetches
# from the network: the tests ask for the exact terms.
def test_datalink_from_sia_results(service):
    import pyvo
    base, docs = service
    res = pyvo.dal.SIA2Service(f"{base}/sia").search(collection="m13")
    seen = 0
    for dl in res.iter_datalinks():
        this = next(dl.bysemantics("#this", include_narrower=False))
        d = next(d for d in docs["m13"]["datasets"] if did("m13", d) == this["ID"])
        assert requests.get(this.access_url).content == open(d["path"], "rb").read()
        assert this.content_length == os.path.getsize(d["path"])
        head = requests.get(next(dl.bysemantics("#auxiliary", include_narrower=False)).access_url).text
        assert head.splitlines()[-1] == "END" and "NAXIS1" in head
        png = requests.get(next(dl.bysemantics("#preview", include_narrower=False)).access_url)
        assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        moc = requests.get(next(dl.bysemantics("#coverage", include_narrower=False)).access_url).json()
        assert moc and all(k.isdigit() for k in moc)
        cut = next(dl.bysemantics("#cutout", include_narrower=False))
        assert cut.service_def
        seen += 1
    assert seen == 5


def test_datalink_many_ids_and_unknown_ones(service):
    from pyvo.dal.adhoc import DatalinkResults
    base, docs = service
    ids = [did("m13", d) for d in docs["m13"]["datasets"][:2]] + ["ivo://meridian/images/m13?nosuch"]
    r = requests.get(f"{base}/datalink", params=[("ID", i) for i in ids])
    assert r.status_code == 200 and "content=datalink" in r.headers["content-type"]
    import io
    from astropy.io.votable import parse
    dl = DatalinkResults(parse(io.BytesIO(r.content)))
    rows = list(dl)
    assert {x["ID"] for x in rows} == set(ids)
    bad = [x for x in rows if x["ID"] == ids[2]]
    assert len(bad) == 1 and "NotFoundFault" in bad[0].error_message
    assert len(list(dl.bysemantics("#this", include_narrower=False))) == 3
    assert requests.get(f"{base}/datalink").status_code == 400


def test_preview_sizes_stretches_and_errors(service):
    from PIL import Image
    import io
    base, docs = service
    d = docs["shared"]["datasets"][0]
    for size, stretch in [(64, "zscale"), (128, "asinh")]:
        r = requests.get(f"{base}/preview", params={"ID": did("shared", d), "SIZE": size, "STRETCH": stretch})
        assert r.status_code == 200
        im = Image.open(io.BytesIO(r.content))
        assert max(im.size) <= size and im.mode == "L"
    assert requests.get(f"{base}/preview", params={"ID": did("shared", d), "SIZE": 0}).status_code == 400
    assert requests.get(f"{base}/preview", params={"ID": did("shared", d), "STRETCH": "log9"}).status_code == 400
    assert requests.get(f"{base}/preview", params={"ID": "ivo://x?y"}).status_code == 404


@pytest.mark.skipif(__import__("shutil").which("stilts") is None, reason="stilts is installed by scripts/test.sh")
def test_taplint_obscore_stage_and_datalinklint(service):
    import re
    base, docs = service
    p = subprocess.run(["stilts", "taplint", f"tapurl={base}/tap", "stages=TMV TME TMS TMC OBS",
                        "report=EW", "maxrepeat=5"], capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert "Section OBS" in out, out
    totals = re.search(r"Totals: Errors: (\d+); Warnings: (\d+)", out)
    problems = "\n".join(line for line in out.splitlines() if re.match(r"^[EW]-", line))
    assert totals and int(totals.group(1)) == 0, problems
    ids = "&".join(f"ID={requests.utils.quote(did('m13', d), safe='')}" for d in docs["m13"]["datasets"][:2])
    p = subprocess.run(["stilts", "datalinklint", "report=EW", f"{base}/datalink?{ids}&ID=ivo%3A%2F%2Fx%3Fy"],
                       capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    problems = "\n".join(line for line in out.splitlines() if re.match(r"^[EW]-", line))
    assert not problems, out


def test_hostile_requests_are_bounded(service):
    """A POLYGON's cost grows with the square of its vertices, a parameter list costs
    more memory than its bytes: both are bounded, and the service keeps answering."""
    import time
    base, _ = service
    ring = " ".join(f"{10 + 0.5 * np.cos(t)} {20 + 0.5 * np.sin(t)}" for t in np.linspace(0, 6.28, 600)[:-1])
    t = time.time()
    r = requests.post(f"{base}/sia/query", data={"POS": f"POLYGON {ring}"})
    assert r.status_code == 400 and "at most 500" in r.text and time.time() - t < 2
    r = requests.post(f"{base}/sia/query", data={"POS": ["CIRCLE 10 10 1"] * 65})
    assert r.status_code == 400 and "POS" in r.text
    r = requests.post(f"{base}/datalink", data=b"ID=" + b"x" * (2 << 20),
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code in (400, 413) and "limit" in r.text.lower(), r.text[:300]
    assert requests.get(f"{base}/health").status_code == 200


def test_range_with_open_ends(service):
    from astropy.io.votable import parse_single_table
    import io
    base, _ = service

    def ids(pos):
        r = requests.get(f"{base}/sia/query", params={"POS": pos, "COLLECTION": "shared"})
        assert r.status_code == 200, r.text
        return {x["obs_id"] for x in parse_single_table(io.BytesIO(r.content)).to_table()}

    assert ids("RANGE 200 +Inf -90 90") == ids("RANGE 200 360 -90 90")
    assert ids("RANGE -Inf 200 -90 90") == ids("RANGE 0 200 -90 90")
    assert ids("RANGE 200 +Inf -90 90") != ids("RANGE -Inf 200 -90 90")
