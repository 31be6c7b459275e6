"""Sky geometry of the meridian binary against healpy and astropy."""

import healpy as hp
import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from conftest import run

RNG = np.random.default_rng(20261121)


def special_points():
    """Poles, the RA=0/360 seam, the equator and HEALPix base-cell corners."""
    pts = [(0.0, 90.0), (123.0, 90.0), (0.0, -90.0), (271.0, -90.0), (0.0, 0.0), (359.9999999, 0.0),
           (360.0 - 1e-12, 45.0), (1e-12, -45.0), (45.0, 41.8103148958), (135.0, -41.8103148958),
           (90.0, 0.0), (180.0, 0.0), (270.0, 89.9999999), (0.0, -89.9999999)]
    return np.array(pts)


def random_points(n):
    ra = RNG.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(RNG.uniform(-1, 1, n)))
    return np.column_stack([ra, dec])


@pytest.mark.parametrize("order", [0, 3, 8, 12, 17, 23, 29])
def test_healpix_matches_healpy(order):
    pts = np.vstack([random_points(100_000), special_points()])
    text = "\n".join(f"{float(ra)!r},{float(dec)!r}" for ra, dec in pts) + "\n"
    out = run("sky", "healpix", "--order", order, input=text).stdout.split()
    ours = np.array([int(x) for x in out], dtype=np.int64)
    theirs = hp.ang2pix(2**order, pts[:, 0], pts[:, 1], nest=True, lonlat=True)
    mismatch = np.nonzero(ours != theirs)[0]
    # A point exactly on a cell edge may go either way with rounding; accept ours there only
    # if nudging the point by 1e-9 degrees makes healpy agree.
    for i in mismatch:
        ra, dec = pts[i]
        nudged = {int(hp.ang2pix(2**order, (ra + dra) % 360, np.clip(dec + ddec, -90, 90), nest=True, lonlat=True))
                  for dra in (-1e-9, 0, 1e-9) for ddec in (-1e-9, 0, 1e-9)}
        assert ours[i] in nudged, f"point {pts[i]}: ours {ours[i]}, healpy {theirs[i]}"
    assert len(mismatch) <= len(special_points()), f"{len(mismatch)} mismatches"


def test_separation_matches_astropy_from_01mas_to_180deg():
    n = 20_000
    a = random_points(n)
    # Log-uniform separations from 0.1 milliarcsecond to 180 degrees, random directions.
    sep_deg = 10 ** RNG.uniform(np.log10(0.1e-3 / 3600), np.log10(180.0), n)
    pa = RNG.uniform(0, 360, n)
    ca = SkyCoord(a[:, 0] * u.deg, a[:, 1] * u.deg)
    cb = ca.directional_offset_by(pa * u.deg, sep_deg * u.deg)
    b = np.column_stack([cb.ra.deg, cb.dec.deg])
    # Include the seam, the poles and exact antipodes.
    extra_a = np.array([[359.99999, 10.0], [0.0, 90.0], [10.0, 20.0], [0.0, -89.999999]])
    extra_b = np.array([[0.00001, 10.0], [180.0, 89.9999], [190.0, -20.0], [180.0, -89.999999]])
    a = np.vstack([a, extra_a])
    b = np.vstack([b, extra_b])
    text = "\n".join(f"{float(x[0])!r},{float(x[1])!r},{float(y[0])!r},{float(y[1])!r}" for x, y in zip(a, b)) + "\n"
    ours = np.array([float(x) for x in run("sky", "separation", input=text).stdout.split()])
    theirs = SkyCoord(a[:, 0] * u.deg, a[:, 1] * u.deg).separation(SkyCoord(b[:, 0] * u.deg, b[:, 1] * u.deg)).deg
    err = np.abs(ours - theirs)
    # 1e-11 degrees is 36 nano-arcseconds; relative 1e-9 at large separations.
    tol = np.maximum(1e-11, 1e-9 * theirs)
    bad = np.nonzero(err > tol)[0]
    assert len(bad) == 0, f"worst: ours={ours[bad[:3]]} astropy={theirs[bad[:3]]}"


@pytest.mark.parametrize("ra,dec,radius,order", [
    (10.0, 20.0, 1.0, 8), (0.0, 0.0, 0.5, 10), (359.95, -30.0, 0.2, 11),
    (45.0, 89.9, 0.3, 9), (200.0, -89.5, 1.0, 7), (123.0, 41.8, 5.0, 5), (300.0, 60.0, 30.0, 3),
])
def test_cone_coverage_is_a_tight_superset(ra, dec, radius, order):
    ours = set(int(x) for x in run("sky", "cone-cells", "--order", order, "--ra", ra, "--dec", dec,
                                    "--radius-deg", radius).stdout.split())
    nside = 2**order
    vec = hp.ang2vec(ra, dec, lonlat=True)
    # Every cell whose centre is in the cone must be there, and every cell that overlaps it
    # (healpy's inclusive query, refined 16 times)...
    centres = set(hp.query_disc(nside, vec, np.radians(radius), inclusive=False, nest=True).tolist())
    overlapping = set(hp.query_disc(nside, vec, np.radians(radius), inclusive=True, fact=16, nest=True).tolist())
    assert centres <= ours
    # healpy's inclusive query over-approximates too: a cell it adds that we lack must not
    # really overlap the cone (its densely sampled boundary stays outside the radius).
    centre = SkyCoord(ra * u.deg, dec * u.deg)
    for cell in overlapping - ours:
        b = hp.boundaries(nside, cell, step=400, nest=True)
        lon, lat = hp.vec2ang(b.T, lonlat=True)
        dist = centre.separation(SkyCoord(lon * u.deg, lat * u.deg)).deg.min()
        assert dist > radius, f"cell {cell} overlaps the cone (boundary at {dist} deg) but is missing"
    # ... and nothing far outside it.
    pix_deg = hp.nside2resol(nside, arcmin=True) / 60
    loose = set(hp.query_disc(nside, vec, np.radians(radius + 2 * pix_deg), inclusive=True, nest=True).tolist())
    assert ours <= loose


def test_bad_coordinates_are_refused_with_line():
    p = run("sky", "healpix", "--order", 5, input="10,20\n10,95\n", check=False)
    assert p.returncode != 0
    assert "line 2" in p.stderr and "95" in p.stderr


POLYGONS = [  # convex polygons (healpy's query_polygon needs convexity)
    [(10, 10), (20, 10), (20, 20), (10, 20)],
    [(355, -5), (5, -5), (5, 5), (355, 5)],                 # across RA = 0/360
    [(0, 80), (120, 80), (240, 80)],                       # around the north pole
    [(100, -60), (140, -55), (150, -70), (110, -75)],
    [(200, 0), (230, 30), (180, 40)],
]


@pytest.mark.parametrize("vertices", POLYGONS)
@pytest.mark.parametrize("order", [6, 9])
def test_polygon_coverage_either_winding_matches_healpy(vertices, order):
    nside = 2**order

    def ours(vs):
        flat = ",".join(f"{ra},{dec}" for ra, dec in vs)
        return set(int(x) for x in run("sky", "polygon-cells", "--order", order, "--vertices", flat).stdout.split())

    forward, backward = ours(vertices), ours(vertices[::-1])
    assert forward == backward, "winding must not change the region"
    vecs = np.array([hp.ang2vec(ra, dec, lonlat=True) for ra, dec in vertices])
    centres = set(hp.query_polygon(nside, vecs, inclusive=False, nest=True).tolist())
    assert centres <= forward
    # Not the complement: the area is that of the small polygon, within a border of cells.
    inclusive = set(hp.query_polygon(nside, vecs, inclusive=True, fact=8, nest=True).tolist())
    assert len(forward) <= 1.5 * len(inclusive) + 50
