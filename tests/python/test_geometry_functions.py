"""ADQL geometry functions as values, against healpy (pixel counting and pixel centroids at a
fine resolution) and astropy: AREA, CENTROID, COORD1/COORD2, COORDSYS, REGION (STC-S), and
geometry columns with DALI xtypes."""

import healpy as hp
import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io.votable import parse

from conftest import run

NSIDE = 2 ** 13
PIX_DEG2 = hp.nside2pixarea(NSIDE, degrees=True)

POLYGONS = [
    [(10, 10), (14, 10), (14, 13), (10, 13)],
    [(359, -5), (2, -5), (1, -1)],  # across RA=0
    [(0, 85), (120, 85), (240, 85)],  # around the north pole
    [(200, -30), (205, -28), (204, -22), (199, -25), (197, -29)],
]


def scalar(store, expr):
    out = store / "scalar.parquet"
    run("query", f"SELECT TOP 1 {expr} AS v FROM gaia", "--format", "parquet", "--out", out, data_dir=store)
    return pq.read_table(out).column("v").to_pylist()[0]


def healpy_pixels(vertices):
    vec = hp.ang2vec([v[0] for v in vertices], [v[1] for v in vertices], lonlat=True)
    return hp.query_polygon(NSIDE, vec, inclusive=False, nest=True)


def adql_polygon(vertices):
    return "POLYGON('ICRS', " + ", ".join(f"{a}, {d}" for a, d in vertices) + ")"


@pytest.mark.parametrize("vertices", POLYGONS)
def test_polygon_area_and_centroid_match_healpy(store, vertices):
    pix = healpy_pixels(vertices)
    want_area = len(pix) * PIX_DEG2
    area = scalar(store, f"AREA({adql_polygon(vertices)})")
    assert area == pytest.approx(want_area, rel=5e-3)
    # Either winding gives the same region.
    assert scalar(store, f"AREA({adql_polygon(vertices[::-1])})") == pytest.approx(area, rel=1e-12)
    v = hp.pix2vec(NSIDE, pix, nest=True)
    mean = SkyCoord(x=v[0].sum(), y=v[1].sum(), z=v[2].sum(), representation_type="cartesian").spherical
    c1 = scalar(store, f"COORD1(CENTROID({adql_polygon(vertices)}))")
    c2 = scalar(store, f"COORD2(CENTROID({adql_polygon(vertices)}))")
    sep = SkyCoord(c1 * u.deg, c2 * u.deg).separation(SkyCoord(mean.lon, mean.lat)).deg
    assert sep < 0.01, (c1, c2, mean.lon.deg, mean.lat.deg)


def test_circle_and_box_area(store):
    assert scalar(store, "AREA(CIRCLE('ICRS', 30, 40, 2))") == pytest.approx(
        2 * np.pi * (1 - np.cos(np.radians(2))) * (180 / np.pi) ** 2, rel=1e-12)
    # A BOX is bounded by great circles through its corners: healpy's polygon on the
    # corners Meridian reports is the same region.
    corners = scalar(store, "BOX('ICRS', 10, 20, 3, 2)")
    pix = healpy_pixels(list(zip(corners[0::2], corners[1::2])))
    box = scalar(store, "AREA(BOX('ICRS', 10, 20, 3, 2))")
    assert box == pytest.approx(len(pix) * PIX_DEG2, rel=5e-3)
    assert box == pytest.approx(6.0, rel=2e-3)


def test_point_accessors_and_coordsys(store):
    assert scalar(store, "COORD1(POINT('ICRS', 12.5, -3.25))") == 12.5
    assert scalar(store, "COORD2(POINT('ICRS', 12.5, -3.25))") == -3.25
    assert scalar(store, "COORDSYS(POINT('ICRS', 12.5, -3.25))") == "ICRS"
    assert scalar(store, "COORD1(CENTROID(CIRCLE('ICRS', 7, 8, 1)))") == 7
    d = scalar(store, "DISTANCE(CENTROID(CIRCLE('ICRS', 7, 8, 1)), POINT('ICRS', 9, 10))")
    assert d == pytest.approx(SkyCoord(7 * u.deg, 8 * u.deg).separation(SkyCoord(9 * u.deg, 10 * u.deg)).deg, abs=1e-12)


def test_region_stcs_selects_the_same_rows_as_the_shape(store):
    def count(where):
        out = store / "n.parquet"
        run("query", f"SELECT COUNT(*) AS n FROM gaia WHERE {where}", "--format", "parquet", "--out", out, data_dir=store)
        return pq.read_table(out).column("n").to_pylist()[0]
    for shape, stcs in [("CIRCLE('ICRS', 56.75, 24.12, 2)", "Circle ICRS 56.75 24.12 2"),
                        ("BOX('ICRS', 10, 20, 6, 4)", "Box ICRS GEOCENTER 10 20 6 4"),
                        ("POLYGON('ICRS', 10, 10, 14, 10, 14, 13, 10, 13)", "Polygon ICRS 10 10 14 10 14 13 10 13")]:
        n = count(f"1 = CONTAINS(POINT('ICRS', ra, dec), {shape})")
        assert n > 0
        assert count(f"1 = CONTAINS(POINT('ICRS', ra, dec), REGION('{stcs}'))") == n
    p = run("query", "SELECT TOP 1 REGION('Ellipse ICRS 1 2 3 4 5') FROM gaia", data_dir=store, check=False)
    assert p.returncode == 1 and "unknown shape 'ELLIPSE'" in p.stderr and "column" in p.stderr


def test_geometry_columns_carry_dali_xtypes(store, tmp_path):
    out = tmp_path / "g.vot"
    run("query", "SELECT TOP 3 source_id, POINT('ICRS', ra, dec) AS pos, CIRCLE('ICRS', ra, dec, 0.01) AS cone, "
        "BOX('ICRS', ra, dec, 0.1, 0.2) AS bx, POLYGON('ICRS', ra, dec, ra + 0.1, dec, ra, dec + 0.1) AS tri, ra, dec "
        "FROM gaia WHERE dec BETWEEN -60 AND 60", "--format", "votable", "--out", out, data_dir=store)
    table = parse(str(out), verify="exception").get_first_table()
    fields = {f.name: (f.datatype, f.arraysize, f.xtype) for f in table.fields}
    assert fields["pos"] == ("double", "2", "point")
    assert fields["cone"] == ("double", "3", "circle")
    assert fields["bx"] == ("double", "*", "polygon") and fields["tri"] == ("double", "*", "polygon")
    t = table.to_table()
    for row in t:
        assert list(row["pos"]) == [row["ra"], row["dec"]]
        assert list(row["cone"]) == [row["ra"], row["dec"], 0.01]
        assert len(row["bx"]) == 8 and len(row["tri"]) == 6
        # The box corners lie 0.05 deg east/west and 0.1 deg north/south of the centre.
        corners = SkyCoord(row["bx"][0::2] * u.deg, row["bx"][1::2] * u.deg)
        centre = SkyCoord(row["ra"] * u.deg, row["dec"] * u.deg)
        assert np.allclose(corners.separation(centre).deg, np.hypot(0.05, 0.1), rtol=1e-3)
