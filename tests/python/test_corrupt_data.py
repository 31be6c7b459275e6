"""Corrupt data on disk: a truncated partition file, or one whose pages are overwritten,
fails only the queries that need it, with an error naming the catalog, the partition and
its file, while other queries go on; a missing margin cache leaves the catalog served;
`meridian check` finds each, a damaged SQLite database and what an interrupted write left
(and with --repair removes the leftovers)."""

import re

import healpy as hp
import requests

from conftest import Server, add_users, personal_env, run


def tap_count(url, where):
    r = requests.post(f"{url}/sync", data={"LANG": "ADQL", "FORMAT": "csv",
                                          "QUERY": f"SELECT COUNT(*) AS n FROM gaia WHERE {where}"})
    return r


def cone(ra, dec, r=1.0):
    return f"1 = CONTAINS(POINT(ra, dec), CIRCLE({ra}, {dec}, {r}))"


def victim_of(data):
    """A partition file of gaia in the middle of the list, with its order, pixel and centre."""
    main = (data / "catalogs" / "gaia").resolve() / "gaia"
    files = sorted((main / "dataset").glob("Norder=*/Dir=*/Npix=*.parquet"))
    victim = files[len(files) // 2]
    order, pix = map(int, re.search(r"Norder=(\d+)/Dir=\d+/Npix=(\d+)", str(victim)).groups())
    theta, phi = hp.pix2ang(2 ** order, pix, nest=True)
    ra, dec = phi * 180 / 3.141592653589793, 90 - theta * 180 / 3.141592653589793
    return victim, order, pix, ra, dec


def test_a_truncated_partition_fails_only_its_queries_and_check_finds_it(shared, tmp_path):
    data = tmp_path / "data"
    env = personal_env(tmp_path)
    run("ingest", "gaia", shared / "catalogs/gaia_dr3_bright.csv.gz", "--partition-rows", 20000,
        data_dir=data)
    add_users(data, env, "ann")
    ok = run("check", data_dir=data, env=env)
    assert "no problem found" in ok.stdout and "482106 rows" in ok.stdout, ok.stdout

    victim, order, pix, ra, dec = victim_of(data)
    far_ra, far_dec = (ra + 180) % 360, -dec
    with Server(data, env=env) as s:
        before = tap_count(s.url, cone(far_ra, far_dec, 3))
        assert before.status_code == 200, before.text
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)

    with Server(data, env=env) as s:
        # A query that needs the partition: an error naming it and its file.
        r = tap_count(s.url, cone(ra, dec))
        assert r.status_code >= 400, r.text
        assert f"partition Norder={order}/Npix={pix} cannot be read" in r.text, r.text
        assert victim.name in r.text
        # A query elsewhere is unaffected, with the same answer as before.
        r = tap_count(s.url, cone(far_ra, far_dec, 3))
        assert r.status_code == 200 and r.text == before.text, r.text

    bad = run("check", data_dir=data, env=env, check=False)
    assert bad.returncode == 1
    assert f"catalog 'gaia': partition Norder={order}/Npix={pix}" in bad.stdout, bad.stdout
    assert "1 problems" in bad.stdout, bad.stdout


def test_check_finds_a_damaged_database_and_leftovers(shared, tmp_path):
    data = tmp_path / "data"
    env = personal_env(tmp_path)
    run("ingest", "tycho2", shared / "catalogs/tycho2_subset.fits.gz", data_dir=data)
    add_users(data, env, "ann", "bob", "carol")
    assert run("check", data_dir=data, env=env).returncode == 0
    # What an ingest killed mid-way leaves: a staging directory of a process that is gone.
    left = data / "catalogs" / ".staging" / "tycho2.999999999.1"
    (left / "dataset").mkdir(parents=True)
    (left / "dataset" / "part.parquet").write_bytes(b"half")
    # A page of the account database overwritten.
    db = tmp_path / "accounts.sqlite"
    page = 4096
    assert db.stat().st_size >= 3 * page
    with open(db, "r+b") as f:
        f.seek(page)
        f.write(b"\xa5" * page)
    # MyDB: a table file overwritten, and a table write killed before its rename.
    mydb = tmp_path / "mydb" / "ann"
    mydb.mkdir(parents=True)
    (mydb / "stars.parquet").write_bytes(b"PAR1" + b"\0" * 100)
    (mydb / ".stars2.999999999.1.tmp").write_bytes(b"half a table")
    bad = run("check", data_dir=data, env=env, check=False)
    assert bad.returncode == 1
    assert "accounts.sqlite" in bad.stdout, bad.stdout
    assert "MyDB table 'stars' of ann" in bad.stdout, bad.stdout
    assert "MyDB of ann: an interrupted write left" in bad.stdout, bad.stdout
    assert "catalog 'tycho2': an interrupted write left" in bad.stdout, bad.stdout
    run("check", "--repair", data_dir=data, env=env, check=False)
    assert not left.exists() and not (mydb / ".stars2.999999999.1.tmp").exists()
    # What cannot be repaired is still reported.
    again = run("check", data_dir=data, env=env, check=False).stdout
    assert "interrupted write" not in again and "MyDB table 'stars'" in again, again


def test_overwritten_pages_and_a_missing_margin(shared, tmp_path):
    data = tmp_path / "data"
    env = personal_env(tmp_path)
    run("ingest", "gaia", shared / "catalogs/gaia_dr3_bright.csv.gz", "--partition-rows", 20000,
        data_dir=data)
    victim, order, pix, ra, dec = victim_of(data)
    far_ra, far_dec = (ra + 180) % 360, -dec
    with Server(data, env=env) as s:
        before = tap_count(s.url, cone(far_ra, far_dec, 3))
        assert before.status_code == 200, before.text
    # The column data overwritten, the footer intact: found only when pages are decoded.
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.seek(size // 8)
        f.write(bytes(range(256)) * ((size // 2) // 256))
    # The margin cache removed.
    margin = next(p for p in ((data / "catalogs" / "gaia").resolve()).iterdir()
                  if p.is_dir() and "margin" in p.name or p.name.endswith("arcs"))
    import shutil
    shutil.rmtree(margin)

    with Server(data, env=env) as s:
        r = tap_count(s.url, cone(ra, dec))
        assert r.status_code >= 400, r.text
        assert f"Norder={order}/Npix={pix}" in r.text and "gaia" in r.text, r.text
        r = tap_count(s.url, cone(far_ra, far_dec, 3))
        assert r.status_code == 200 and r.text == before.text, r.text
        # The service goes on after the failure.
        assert requests.get(f"{s.url.removesuffix('/tap')}/health").status_code == 200

    quick = run("check", data_dir=data, env=env, check=False)
    assert quick.returncode == 1 and "margin" in quick.stdout, quick.stdout
    deep = run("check", "--deep", data_dir=data, env=env, check=False)
    assert f"catalog 'gaia': partition Norder={order}/Npix={pix}" in deep.stdout, deep.stdout
