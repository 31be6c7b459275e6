"""Spectra through the unmodified sparclclient 1.3.1 (PyPI, in a venv of its own:
SPARCL_PYTHON, set up by scripts/test.sh): the DESI files of the shared data added with
`meridian spectra add` (a Redrock-style redshift catalogue joined by TARGETID), then a
scripted session (find, retrieve with DEFAULT and ALL, by specid, missing, pandas and
specutils outputs, errors, login with a Meridian account to a private dataset). The arrays
the client receives are compared with the FITS files read by astropy, the B/R/Z arms
merged by numpy as documented (ivar-weighted flux, summed ivar, OR-ed masks)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from astropy.io import fits
from astropy.table import Table

from conftest import Server, personal_env, run

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def sparcl_python():
    python = os.environ.get("SPARCL_PYTHON",
                            str(Path.home() / ".cache/meridian/sparcl-venv/bin/python"))
    assert Path(python).exists(), (
        f"sparclclient's venv is missing at {python}: scripts/test.sh creates it")
    return python


def desi_files(shared):
    files = sorted((shared / "spectra").glob("desi_*.fits"))
    assert len(files) == 4, files
    return files


@pytest.fixture(scope="module")
def spectra_store(tmp_path_factory, shared):
    d = tmp_path_factory.mktemp("spectra")
    # A redshift catalogue in Redrock's layout for the coadd's targets.
    coadd = shared / "spectra/desi_coadd-sv3-dark-26065.fits"
    tid = fits.getdata(coadd, "FIBERMAP")["TARGETID"]
    z = Table({"TARGETID": tid, "Z": np.linspace(0.1, 0.5, len(tid)),
               "ZERR": np.full(len(tid), 1e-4), "ZWARN": np.arange(len(tid)),
               "SPECTYPE": ["GALAXY", "QSO", "STAR", "GALAXY", "GALAXY"][:len(tid)]})
    zpath = d / "zpix.fits"
    z.write(zpath, format="fits")
    fits.setval(zpath, "EXTNAME", value="ZCATALOG", ext=1)
    env = personal_env(d)
    run("spectra", "add", "DESI-EDR", *desi_files(shared), "--zcatalog", zpath,
        data_dir=d, env=env)
    run("user", "add", "erin", data_dir=d, input="erin-password\n", env=env)
    run("spectra", "add", "DESI-PRIV", coadd, "--private", "--reader", "erin",
        data_dir=d, env=env)
    return d, env


def merged_arms(path):
    """The B/R/Z arms of a DESI file merged onto one grid by numpy (the oracle)."""
    with fits.open(path) as h:
        waves = [h[f"{a}_WAVELENGTH"].data.astype(float) for a in "BRZ"]
        step = waves[0][1] - waves[0][0]
        start = min(w[0] for w in waves)
        n = int(round((max(w[-1] for w in waves) - start) / step)) + 1
        grid = start + step * np.arange(n)
        nspec = h["B_FLUX"].data.shape[0]
        wsum = np.zeros((nspec, n))
        fsum = np.zeros((nspec, n))
        plain = np.zeros((nspec, n))
        count = np.zeros((nspec, n))
        ivar = np.zeros((nspec, n))
        mask = np.zeros((nspec, n), dtype=np.uint32)
        for a, w in zip("BRZ", waves):
            i0 = int(round((w[0] - start) / step))
            sl = slice(i0, i0 + len(w))
            f = h[f"{a}_FLUX"].data.astype(float)
            iv = h[f"{a}_IVAR"].data.astype(float)
            m = h[f"{a}_MASK"].data.astype(np.uint32)
            wsum[:, sl] += iv
            fsum[:, sl] += iv * f
            plain[:, sl] += f
            count[:, sl] += 1
            ivar[:, sl] += iv
            mask[:, sl] |= m
        with np.errstate(invalid="ignore", divide="ignore"):
            flux = np.where(wsum > 0, fsum / wsum, plain / np.maximum(count, 1))
        return grid, flux, ivar, mask, h["FIBERMAP"].data


def test_sparclclient_session_and_arrays_equal_astropy(spectra_store, shared, tmp_path, sparcl_python):
    d, env = spectra_store
    with Server(d, env=env) as s:
        base = s.url.removesuffix("/tap")
        out = tmp_path / "arrays.npz"
        p = subprocess.run([sparcl_python, HERE / "sparcl_session.py", f"{base}/sparcl", out,
                            "erin", "erin-password", "DESI-PRIV"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:] + "".join(s.log)[-2000:]
        seen = json.loads(p.stdout.strip().splitlines()[-1])
        # The service's own answers, for the checks below.
        fields = requests.get(f"{base}/sparcl/api/datafields/").json()

    assert seen["version"] == 14.2
    assert seen["all_datasets"] == ["DESI-EDR", "DESI-PRIV"]
    assert seen["default_fields"] == ["dec", "flux", "ra", "sparcl_id", "specid", "wavelength"]
    assert {"ivar", "mask", "redshift", "spectype", "targetid"} <= set(seen["all_fields"])
    assert {f["data_release"] for f in fields} == {"DESI-EDR", "DESI-PRIV"}
    # Four files: for each of two sky patches, 5 coadds and 5 single exposures of the
    # same targets.
    assert seen["find_count"] == 20 and seen["find_info_count"] == 20
    assert seen["find_specids"] == sorted(seen["find_specids"])
    assert seen["find_desc"] == sorted(seen["find_specids"], reverse=True)[:3]
    assert seen["count_only"] == "Found 20 records"
    assert seen["count_limited"] == "Found 3 records"
    assert seen["find_ra"] and all(216.95 <= r <= 217.0 for r in seen["find_ra"])
    assert seen["default_keys"] == sorted(["_dr", "dec", "flux", "ra", "sparcl_id", "specid", "wavelength"])
    assert {"ivar", "mask", "redshift", "spectype", "targetid", "data_release"} <= set(seen["all_keys"])
    assert seen["flux_is_ndarray"] and seen["flux_dtype"] == "float32"
    assert seen["by_specid_n"] == 2  # the coadd and the exposure of that target
    assert seen["missing"] == ["00000000-0000-8000-8000-000000000000"]
    assert seen["missing_specids"] == [12345]
    assert seen["partial_n"] == 2
    assert seen["partial_warnings"] and "1 out of the 3 requested" in seen["partial_warnings"][0]
    assert seen["pandas_rows"] == 20
    assert {"sparcl_id", "specid", "ra", "dec"} <= set(seen["pandas_columns"])
    assert "specutils_error" not in seen, seen.get("specutils_error")
    assert seen["specutils_shape"][-1] == 7781
    assert seen["too_many"] == "TooManyRecords"
    assert seen["bad_include"] in ("BadInclude", "UnknownField")
    assert seen["anonymous_private"].startswith("AccessNotAllowed"), seen["anonymous_private"]
    assert seen["anonymous_as"] == "Anonymous"
    assert seen["bad_login"].startswith("Could not login")
    assert seen["private_found"] == 5 and seen["private_retrieved"] == 5
    assert seen["logged_in_as"] == "erin"

    # The arrays equal the files' arms merged by numpy, to float32 precision.
    got = np.load(out)
    checked = 0
    for path in desi_files(shared):
        grid, flux, ivar, mask, fibermap = merged_arms(path)
        for i, target in enumerate(fibermap["TARGETID"]):
            keys = [k.split(":")[0] for k in got.files if k.endswith(":meta")
                    and got[k][0] == float(target)]
            # The spectrum of this file (coadd or exposure) is the one whose flux matches.
            matches = [k for k in keys if np.allclose(got[f"{k}:flux"], flux[i].astype(np.float32),
                                                      rtol=1e-6, atol=1e-6, equal_nan=True)]
            assert len(matches) == 1, (path.name, target)
            k = matches[0]
            np.testing.assert_allclose(got[f"{k}:wavelength"], grid, rtol=0, atol=1e-9)
            np.testing.assert_allclose(got[f"{k}:ivar"], ivar[i].astype(np.float32), rtol=1e-6)
            np.testing.assert_array_equal(got[f"{k}:mask"], mask[i])
            np.testing.assert_allclose(got[f"{k}:meta"][1:], [fibermap["TARGET_RA"][i],
                                                              fibermap["TARGET_DEC"][i]])
            checked += 1
    assert checked == 20


def test_find_errors_are_sparcl_bodies(spectra_store):
    d, env = spectra_store
    with Server(d, env=env) as s:
        api = s.url.removesuffix("/tap") + "/sparcl/api"
        bad_field = requests.post(f"{api}/find/", json={"outfields": ["nope"], "search": []})
        bad_const = requests.post(f"{api}/find/", json={"outfields": ["sparcl_id"],
                                                        "search": [["ra", 1]]})
        denied = requests.post(f"{api}/find/", json={"outfields": ["sparcl_id"],
                                                     "search": [["data_release", "DESI-PRIV"]]})
        not_json = requests.post(f"{api}/find/", data=b"{oops")
        too_many = requests.post(f"{api}/spectras/?include=flux&format=pkl",
                                 json=["x"] * 25_001)
        forged = requests.post(f"{api}/find/", json={"outfields": ["sparcl_id"], "search": []},
                               headers={"Authorization": "e30.eyJtdGsiOiJub3BlIn0.x"})
        # Without a dataset list, anonymous callers see the public releases only.
        anon = requests.post(f"{api}/find/?limit=None", json={"outfields": ["sparcl_id"], "search": []})
    assert bad_field.status_code == 400 and bad_field.json()["errorCode"] == "UNKFIELD"
    assert bad_const.status_code == 400 and bad_const.json()["errorCode"] == "BADCONST"
    assert denied.status_code == 400 and denied.json()["errorCode"] == "NODRACCESS"
    assert "ANONYMOUS" in denied.json()["errorMessage"]
    assert not_json.status_code == 400 and not_json.json()["errorCode"] == "BADQUERY"
    assert too_many.status_code == 400 and "at most 25000" in too_many.json()["errorMessage"]
    assert forged.status_code == 400 and forged.json()["errorCode"] == "NODRACCESS"
    recs = anon.json()[1:]
    assert len(recs) == 20 and {r["_dr"] for r in recs} == {"DESI-EDR"}


def test_redshifts_and_core_fields_are_queryable_over_tap(spectra_store, shared):
    d, env = spectra_store
    with Server(d, env=env) as s:
        r = requests.get(f"{s.url}/sync", params={
            "LANG": "ADQL", "FORMAT": "csv",
            "QUERY": "SELECT specid, redshift, spectype, npix, wavemin, wavemax FROM "
                     "spectra.desi_edr WHERE 1=CONTAINS(POINT('ICRS', ra, dec), "
                     "CIRCLE('ICRS', 217.0, 3.27, 0.1)) ORDER BY specid"})
        private = requests.get(f"{s.url}/sync", params={
            "LANG": "ADQL", "QUERY": "SELECT * FROM spectra.desi_priv"})
    assert r.status_code == 200, r.text
    import io

    import pandas as pd
    t = pd.read_csv(io.StringIO(r.text))
    assert len(t) == 10
    assert set(t["npix"]) == {7781}
    assert np.allclose(t["wavemin"], 3600.0) and np.allclose(t["wavemax"], 9824.0)
    coadd = fits.getdata(shared / "spectra/desi_coadd-sv3-dark-26065.fits", "FIBERMAP")
    z = dict(zip(coadd["TARGETID"], np.linspace(0.1, 0.5, len(coadd))))
    for _, row in t.iterrows():
        assert row["redshift"] == pytest.approx(z[row["specid"]])
    # A private dataset is not a TAP table.
    assert private.status_code == 400
