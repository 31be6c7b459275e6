"""The real astro-datalab 2.24 client (PyPI, in a venv of its own: DATALAB_PYTHON, set up by
scripts/test.sh) against a running Meridian: login, queries as pandas and CSV, an async
query with status and results, a failing query, MyDB (save, list, describe, query, rename,
copy, truncate, drop), logout. Its answers are compared with the
same queries through TAP."""

import io
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import requests

from conftest import Server, run

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def datalab_python():
    python = os.environ.get("DATALAB_PYTHON",
                            str(Path.home() / ".cache/meridian/datalab-venv/bin/python"))
    assert Path(python).exists(), (
        f"astro-datalab's venv is missing at {python}: scripts/test.sh creates it")
    return python


def test_notebook_workflow_with_the_unmodified_client(store, tmp_path, datalab_python):
    env = {"MERIDIAN_AUTH__DB": str(tmp_path / "accounts.sqlite")}
    run("user", "add", "erin", data_dir=store, input="erin-password\n", env=env)
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        home = tmp_path / "home"
        home.mkdir()
        p = subprocess.run([datalab_python, HERE / "datalab_workflow.py", base, "erin", "erin-password"],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HOME": str(home)})
        assert p.returncode == 0, p.stderr[-3000:]
        seen = json.loads(p.stdout.strip().splitlines()[-1])

        sql = ("SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia "
               "WHERE q3c_radial_query(ra, dec, 56.75, 24.12, 1) ORDER BY source_id")
        tap = pd.read_csv(io.StringIO(requests.get(
            f"{s.url}/sync", params={"LANG": "SQL", "QUERY": sql, "FORMAT": "csv",
                                     "MAXREC": 10**9}).text))

    assert seen["alive"] is True and seen["query_alive"] is True, seen
    assert seen["token"].startswith("erin.1001.1001.$1$")
    assert seen["whoami"] == "erin"
    assert seen["valid"] is True
    assert seen["pandas_rows"] == len(tap) > 100
    assert seen["pandas_columns"] == list(tap.columns)
    assert seen["pandas_first_ids"] == [int(x) for x in tap["source_id"][:5]]
    assert seen["adql_csv"].splitlines()[0] == "source_id" and len(seen["adql_csv"].splitlines()) == 4
    assert seen["status"] == "COMPLETED"
    assert seen["async_rows"] == len(tap)
    assert "nonexistent" in seen["bad_query"]
    assert seen["valid_after_logout"] is False
    assert seen["mydb_save"] == "OK"
    assert seen["mydb_list"].strip() == "pleiades"
    assert [line.split(",")[0] for line in seen["mydb_columns"].split("\n")] == [
        "source_id", "ra", "dec", "phot_g_mean_mag"]
    assert seen["mydb_count"] == len(tap)
    assert seen["mydb_rename"] == seen["mydb_copy"] == seen["mydb_truncate"] == "OK"
    assert seen["mydb_truncated_count"] == 0
    assert seen["mydb_list_after"].split("\n") == ["pleiades2", "pleiades3"]
    assert seen["mydb_drop"] == ["OK", "OK"]
    assert "not known" in seen["mydb_drop_missing"]
    assert seen["mydb_list_end"] == ""

    # mydb_import of a CSV, then a cross-match of it with the catalog, against astropy.
    from astropy import units as u
    from astropy.coordinates import SkyCoord, search_around_sky
    assert seen["mydb_import"] == "OK"
    assert "exists" in seen["mydb_import_again"] and "append=True" in seen["mydb_import_again"]
    mine = pd.read_csv(io.StringIO(seen["mystars"]))
    assert len(mine) == 40
    c1 = SkyCoord(mine["ra"].values * u.deg, mine["dec"].values * u.deg)
    c2 = SkyCoord(tap["ra"].values * u.deg, tap["dec"].values * u.deg)
    i, j, _, _ = search_around_sky(c1, c2, 1 * u.arcsec)
    expected = sorted(zip(mine["id"].values[i].tolist(), tap["source_id"].values[j].tolist()))
    got = pd.read_csv(io.StringIO(seen["xmatch"]))
    assert sorted(zip(got["id"].tolist(), got["source_id"].tolist())) == expected
    assert len(expected) >= 40

    # mydb_create, mydb_insert (twice), mydb_index: the rows in the created column types.
    assert seen["mydb_create"] == "OK" and seen["mydb_index"] == "OK"
    assert seen["made_count"] == 2 * len(mine)
    # The client keeps only the names (text before the first comma); an insert whose rows
    # had other types than the created columns would have been refused.
    assert seen["made_columns"].split("\n") == ["id", "ra", "dec"]

    # Storage: put, ls, get, mv, cp, ln, tag, rm, rmdir, and query results kept as files.
    text = seen["mystars"]
    assert seen["ls_home"] == "public,tmp"
    assert seen["mkdir"] == "OK"
    assert seen["put"] == ["OK"]  # the client returns a list per file
    assert seen["ls_work"] == "mystars.csv"
    assert seen["ls_long"].startswith("-rw-") and seen["ls_long"].rstrip().endswith("mystars.csv")
    assert f"erin  {len(text.encode())}  " in seen["ls_long"]
    assert seen["get_text"] == text
    assert seen["get_file"] == ["OK"] and seen["got_file"] == text
    assert seen["stat"]["type"] == "data" and seen["stat"]["size"] == len(text.encode())
    assert seen["stat"]["owner"] == "erin"
    assert seen["isdir"] == [True, False]
    assert seen["access"] is True
    assert seen["mv"] == "OK"
    assert seen["ls_public"] == "mystars.csv"
    assert seen["cp"] == "OK" and seen["tag"] == "OK" and seen["ln"] == "OK"
    assert seen["via_link"] == text
    assert seen["ls_work_after"] == "copy.csv,link.csv"
    assert seen["rm"] == ["OK", "OK", "OK"]
    assert "does not exist" in seen["rm_missing"]
    assert seen["rmdir"] == "OK"
    assert seen["ls_home_end"] == "public,tmp"
    assert seen["query_to_vos"] == "OK"
    kept = pd.read_csv(io.StringIO(seen["query_to_vos_text"]))
    assert list(kept["source_id"]) == list(tap["source_id"])
    from astropy.table import Table
    fits = Table.read(seen["fits_path"])
    assert list(fits["source_id"]) == list(tap["source_id"])
    assert seen["rm_results"] == ["OK", "OK"]
