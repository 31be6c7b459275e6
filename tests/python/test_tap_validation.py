"""The TAP service against the IVOA validators and other clients: `stilts taplint` over
every stage it has, `stilts votlint` on each VOTable serialization, astroquery's TapPlus,
the queryable TAP_SCHEMA and the examples document."""

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import pyvo
import requests

from conftest import Server

pytestmark = pytest.mark.skipif(shutil.which("stilts") is None, reason="stilts is installed by scripts/test.sh")


@pytest.fixture(scope="module")
def full_tap(store):
    """The service as configured by default: with URL uploads, which TAP 1.1 requires of a
    service that takes uploads (taplint reports their absence as an error), behind the
    guard that keeps them out of this machine and its private network."""
    with Server(store) as s:
        yield s.url


def test_taplint_reports_no_errors_or_warnings(full_tap):
    p = subprocess.run(["stilts", "taplint", f"tapurl={full_tap}", "report=EW", "maxrepeat=5"],
                       capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    sections = re.findall(r"^Section (\w+):", out, re.M)
    for stage in ["TMV", "TME", "TMS", "TMC", "CPV", "CAP", "AVV", "QGE", "QPO", "QAS", "UWS", "MDQ", "UPL", "EXA"]:
        assert stage in sections, f"taplint did not run {stage}:\n{out}"
    totals = re.search(r"Totals: Errors: (\d+); Warnings: (\d+)", out)
    assert totals, out
    problems = "\n".join(line for line in out.splitlines() if re.match(r"^[EW]-", line))
    assert int(totals.group(1)) == 0, problems
    assert int(totals.group(2)) == 0, problems


@pytest.mark.parametrize("fmt", ["votable", "votable/td", "votable/b"])
def test_votlint_accepts_every_serialization(tap, tmp_path, fmt):
    # tycho2 has units and UCDs; the HEALPix column a description.
    r = requests.get(f"{tap}/sync", params={"QUERY": "SELECT TOP 500 * FROM tycho2", "RESPONSEFORMAT": fmt,
                                            "MAXREC": 100})
    assert r.status_code == 200
    f = tmp_path / "t.vot"
    f.write_bytes(r.content)
    p = subprocess.run(["stilts", "votlint", f"votable={f}", "version=1.4"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "" and "ERROR" not in p.stderr, p.stdout + p.stderr


def test_astroquery_tapplus_runs_a_query(tap):
    from astroquery.utils.tap.core import TapPlus
    t = TapPlus(url=tap, verbose=False)
    job = t.launch_job("SELECT TOP 7 source_id, ra, dec FROM gaia ORDER BY source_id")
    r = job.get_results()
    assert len(r) == 7 and list(r["source_id"]) == sorted(r["source_id"])
    job = t.launch_job_async("SELECT COUNT(*) AS n FROM tycho2", verbose=False)
    assert job.get_results()["n"][0] > 0


def test_tap_schema_is_queryable_and_matches_vosi(tap):
    svc = pyvo.dal.TAPService(tap)
    cols = svc.run_sync("SELECT column_name, unit, ucd, datatype, indexed, principal, \"size\" "
                        "FROM TAP_SCHEMA.columns WHERE table_name = 'tycho2'").to_table()
    by = {c["column_name"]: c for c in cols}
    assert by["ra"]["unit"] == "deg" and by["ra"]["datatype"] == "double" and by["ra"]["indexed"] == 1
    # Not a regular ADQL identifier: published delimited, and queryable that way.
    assert '"_healpix_29"' in by
    assert len(svc.run_sync('SELECT TOP 3 "_healpix_29" FROM tycho2').to_table()) == 3
    tables = svc.run_sync("SELECT schema_name, table_name FROM TAP_SCHEMA.tables").to_table()
    names = set(tables["table_name"])
    vosi = {t.name for t in svc.tables}
    assert names == vosi and {"gaia", "tycho2", "TAP_SCHEMA.keys"} <= names
    keys = svc.run_sync("SELECT k.from_table, k.target_table, c.from_column FROM TAP_SCHEMA.keys AS k "
                        "JOIN TAP_SCHEMA.key_columns AS c ON c.key_id = k.key_id").to_table()
    assert ("TAP_SCHEMA.columns", "TAP_SCHEMA.tables", "table_name") in {tuple(r) for r in keys}
    # detail=min leaves columns out.
    doc = ET.fromstring(requests.get(f"{tap}/tables", params={"detail": "min"}).content)
    assert doc.find(".//table") is not None and doc.find(".//column") is None


def test_every_example_runs(tap):
    doc = ET.fromstring(requests.get(f"{tap}/examples").content)
    ns = {"h": "http://www.w3.org/1999/xhtml"}
    queries = [p.text for p in doc.findall(".//h:pre[@property='query']", ns)]
    assert len(queries) >= 3
    svc = pyvo.dal.TAPService(tap)
    for q in queries:
        assert len(svc.run_sync(q, maxrec=10).to_table()) > 0, q
