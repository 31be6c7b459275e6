"""Spectra over the IVOA protocols: pyvo's SSAService finds and fetches them (SDM VOTable
and FITS, read back by astropy and compared with the DESI files), ObsCore rows with
dataproduct_type 'spectrum' pass `stilts taplint`'s OBS stage, DataLink points at the
spectrum files and `stilts datalinklint` finds nothing wrong."""

import re
import subprocess

import numpy as np
import pytest
import pyvo
import requests
from astropy.io import fits
from astropy.io.votable import parse_single_table

from conftest import Server, run


@pytest.fixture(scope="module")
def service(tmp_path_factory, shared):
    d = tmp_path_factory.mktemp("ssa")
    run("spectra", "add", "DESI-EDR", *sorted((shared / "spectra").glob("desi_*.fits")), data_dir=d)
    with Server(d) as s:
        yield s.url.removesuffix("/tap"), shared


def test_pyvo_ssa_finds_and_fetches_spectra(service):
    base, shared = service
    ssa = pyvo.dal.SSAService(f"{base}/ssa")
    res = ssa.search(pos=(217.0, 3.27), diameter=0.3)
    assert len(res) == 10
    rec = res[0]
    assert rec.format.startswith("application/x-votable+xml")
    assert "DESI-EDR" in rec.title
    assert abs(rec.ra - 217.0) < 0.2 and abs(rec.dec - 3.27) < 0.2
    assert rec.instr == "DESI"
    # Fetch: an SDM VOTable whose arrays equal the file's (coadd or exposure).
    t = parse_single_table(rec.getdataurl()).to_table()
    assert len(t) == 7781
    assert str(t["wavelength"].unit) == "Angstrom"
    with fits.open(shared / "spectra/desi_coadd-sv3-dark-26065.fits") as h:
        wave_b = h["B_WAVELENGTH"].data
        fluxes_b = h["B_FLUX"].data
    with fits.open(shared / "spectra/desi_spectra-sv3-dark-26065.fits") as h:
        fluxes_b = np.vstack([fluxes_b, h["B_FLUX"].data])
    np.testing.assert_allclose(t["wavelength"][:len(wave_b)], wave_b)
    # Below the R arm only B contributes: the flux is B's, pixel for pixel.
    first = np.asarray(t["flux"][:100], dtype=np.float32)
    assert any(np.allclose(first, f[:100], rtol=1e-6, atol=1e-7) for f in fluxes_b)
    # An Arrow IPC stream (the portal's plot) holds the same arrays and the metadata.
    import pyarrow.ipc as ipc
    r = requests.get(rec.getdataurl().replace("FORMAT=", "X="), params={"FORMAT": "arrow"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/vnd.apache.arrow.stream"
    a = ipc.open_stream(r.content).read_all()
    np.testing.assert_array_equal(a["wavelength"].to_numpy(), np.asarray(t["wavelength"], dtype=float))
    np.testing.assert_array_equal(a["flux"].to_numpy(), np.asarray(t["flux"], dtype=np.float32))
    assert a.schema.field("wavelength").metadata[b"unit"] == b"Angstrom"
    assert a.schema.metadata[b"did"].startswith(b"ivo://") and b"ra" in a.schema.metadata
    # FITS through the same service.
    fres = ssa.search(pos=(217.0, 3.27), diameter=0.3, format="fits")
    with fits.open(fres[0].getdataurl()) as h:
        spec = h["SPECTRUM"].data
        assert len(spec) == 7781 and h["SPECTRUM"].header["TUNIT1"] == "Angstrom"
    # BAND (metres) and position filters.
    assert len(ssa.search(pos=(217.0, 3.27), diameter=0.3, band=(3e-7, 3.5e-7))) == 0
    assert len(ssa.search(pos=(217.0, 3.27), diameter=0.3, band=(5e-7, 6e-7))) == 10
    assert len(ssa.search(pos=(10.0, -40.0), diameter=0.3)) == 0
    # MAXREC overflow, metadata and bad input.
    r = requests.get(f"{base}/ssa", params={"REQUEST": "queryData", "POS": "217,3.27", "SIZE": 1, "MAXREC": 3})
    assert 'value="OVERFLOW"' in r.text and r.text.count("<TR>") == 3
    meta = requests.get(f"{base}/ssa", params={"REQUEST": "queryData", "FORMAT": "metadata"})
    assert "INPUT:POS" in meta.text and "<TR>" not in meta.text
    bad = requests.get(f"{base}/ssa", params={"REQUEST": "queryData", "POS": "217,95"})
    assert bad.status_code == 400 and "POS" in bad.text
    cap = requests.get(f"{base}/ssa/capabilities")
    assert "ivo://ivoa.net/std/SSA" in cap.text


@pytest.mark.skipif(__import__("shutil").which("stilts") is None, reason="stilts is installed by scripts/test.sh")
def test_obscore_spectra_pass_taplint_and_datalinklint(service):
    base, _ = service
    import io

    import pandas as pd
    rows = pd.read_csv(io.StringIO(requests.get(f"{base}/tap/sync", params={
        "LANG": "ADQL", "FORMAT": "csv",
        "QUERY": "SELECT obs_publisher_did, dataproduct_type, em_min, em_max, access_url FROM ivoa.obscore "
                 "WHERE 1=INTERSECTS(s_region, CIRCLE('ICRS', 217.0, 3.27, 0.3))"}).text)).values.tolist()
    assert len(rows) == 10 and {r[1] for r in rows} == {"spectrum"}
    assert all(abs(r[2] - 3.6e-7) < 1e-12 and abs(r[3] - 9.824e-7) < 1e-12 for r in rows)
    p = subprocess.run(["stilts", "taplint", f"tapurl={base}/tap", "stages=TMV TME TMS TMC OBS",
                        "report=EW", "maxrepeat=5"], capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert "Section OBS" in out, out
    totals = re.search(r"Totals: Errors: (\d+); Warnings: (\d+)", out)
    problems = "\n".join(line for line in out.splitlines() if re.match(r"^[EW]-", line))
    assert totals and int(totals.group(1)) == 0, problems
    links = requests.get(rows[0][4])
    assert links.status_code == 200 and "/spectra/file?" in links.text
    p = subprocess.run(["stilts", "datalinklint", "report=EW", rows[0][4]],
                       capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    problems = "\n".join(line for line in out.splitlines() if re.match(r"^[EW]-", line))
    assert not problems, out
