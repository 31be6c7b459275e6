"""Stacks of synthetic spectra (`meridian generate --spectra`) by `meridian spectra stack`
and `/spectra/stack`, against an oracle: the same spectra fetched with sparclclient,
shifted to the rest frame, resampled by specutils' FluxConservingResampler (with
InverseVariance uncertainties) and combined by numpy. Also: the memory budget refuses a
median that does not fit, with a clear message."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from astropy.io import fits

from conftest import Server, run

ORACLE = r'''
import json, sys
import numpy as np
import astropy.units as u
from astropy.nddata import InverseVariance
from sparcl.client import SparclClient
from specutils import Spectrum
from specutils.manipulation import FluxConservingResampler

base, ids_file, start, stop, step, out = sys.argv[1:7]
ids = json.load(open(ids_file))
client = SparclClient(url=base, announcement=False)
recs = client.retrieve(ids, include=["flux", "ivar", "mask", "wavelength", "redshift"],
                       dataset_list=["SYNTH-DR1"], limit=len(ids)).records
grid = float(start) + float(step) * np.arange(int(round((float(stop) - float(start)) / float(step))) + 1)
res = FluxConservingResampler(extrapolation_treatment="nan_fill")
F, W = [], []
for r in recs:
    z = r.redshift
    bad = (r.mask != 0) | ~(r.ivar > 0) | ~np.isfinite(r.flux)
    flux = np.where(bad, 0.0, r.flux.astype(float)) * (1 + z)
    ivar = np.where(bad, 0.0, r.ivar.astype(float)) / (1 + z) ** 2
    wave = r.wavelength / (1 + z)
    spec = Spectrum(spectral_axis=wave * u.AA, flux=flux * u.Unit("erg/(s cm2 AA)"),
                    uncertainty=InverseVariance(ivar / u.Unit("erg/(s cm2 AA)") ** 2))
    o = res(spec, grid * u.AA)
    f = np.asarray(o.flux.value)
    w = np.asarray(o.uncertainty.array)
    ok = np.isfinite(f) & np.isfinite(w) & (w > 0)
    F.append(np.where(ok, f, np.nan))
    W.append(np.where(ok, w, 0.0))
F, W = np.array(F), np.array(W)
np.savez(out, grid=grid, flux=F, ivar=W)
'''


@pytest.fixture(scope="module")
def sparcl_python():
    python = os.environ.get("SPARCL_PYTHON",
                            str(Path.home() / ".cache/meridian/sparcl-venv/bin/python"))
    assert Path(python).exists(), f"sparclclient's venv is missing at {python}"
    return python


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth-spectra")
    run("generate", "--out", d / "survey", "--objects", 5000, "--spectra", 400, data_dir=d)
    return d


QUERY = ("SELECT sparcl_id FROM spectra.synth_dr1 WHERE spectype = 'GALAXY' "
         "AND redshift < 0.5 ORDER BY specid")


def test_stacks_equal_a_specutils_oracle(synth, tmp_path, sparcl_python):
    d = synth
    out = tmp_path / "stack.fits"
    run("spectra", "stack", QUERY, "--rest-frame", "--grid", "3000:6000:2", "--method", "ivar",
        "--out", out, data_dir=d)
    mean_out = tmp_path / "mean.fits"
    run("spectra", "stack", QUERY, "--rest-frame", "--grid", "3000:6000:2", "--method", "mean",
        "--out", mean_out, data_dir=d)
    median_out = tmp_path / "median.fits"
    run("spectra", "stack", QUERY, "--rest-frame", "--grid", "3000:6000:2", "--method", "median",
        "--out", median_out, data_dir=d)
    with Server(d) as s:
        base = s.url.removesuffix("/tap")
        ids = requests.get(f"{s.url}/sync", params={"LANG": "ADQL", "QUERY": QUERY,
                                                     "FORMAT": "csv"}).text.split()[1:]
        assert len(ids) > 50
        (tmp_path / "ids.json").write_text(json.dumps(ids))
        script = tmp_path / "oracle.py"
        script.write_text(ORACLE)
        p = subprocess.run([sparcl_python, script, f"{base}/sparcl", tmp_path / "ids.json",
                            "3000", "6000", "2", tmp_path / "oracle.npz"],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        http = requests.get(f"{base}/spectra/stack", params={
            "QUERY": QUERY, "GRID": "3000:6000:2", "METHOD": "ivar", "REST_FRAME": "true"})
        assert http.status_code == 200, http.text
        (tmp_path / "http.fits").write_bytes(http.content)
        bad = requests.get(f"{base}/spectra/stack", params={"QUERY": QUERY, "GRID": "6000:3000:2"})

    o = np.load(tmp_path / "oracle.npz")
    F, W = o["flux"], o["ivar"]
    t = fits.getdata(out, "SPECTRUM")
    np.testing.assert_allclose(t["WAVELENGTH"], o["grid"])
    assert fits.getheader(out, "SPECTRUM")["NCOMBINE"] == len(ids)
    # Inverse-variance weighted mean.
    wsum = W.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        wmean = np.where(wsum > 0, np.nansum(np.where(W > 0, W * F, 0), axis=0) / wsum, 0)
    n = (W > 0).sum(axis=0)
    covered = n > 0
    assert covered.sum() > 1000
    np.testing.assert_allclose(t["FLUX"][covered], wmean[covered], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(t["IVAR"][covered], wsum[covered], rtol=2e-5)
    np.testing.assert_array_equal(t["N"], n)
    # The HTTP service gives the same stack.
    h = fits.getdata(tmp_path / "http.fits", "SPECTRUM")
    np.testing.assert_array_equal(h["FLUX"], t["FLUX"])
    # Plain mean and median of the contributing pixels.
    Fm = np.where(W > 0, F, np.nan)
    import warnings
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        mean = np.nanmean(Fm, axis=0)
        median = np.nanmedian(Fm, axis=0)
    m = fits.getdata(mean_out, "SPECTRUM")
    np.testing.assert_allclose(m["FLUX"][covered], mean[covered], rtol=2e-5, atol=1e-6)
    md = fits.getdata(median_out, "SPECTRUM")
    np.testing.assert_allclose(md["FLUX"][covered], median[covered], rtol=2e-5, atol=1e-6)
    assert bad.status_code == 400 and "GRID" in bad.text


def test_a_median_past_the_memory_budget_is_refused(synth):
    p = run("spectra", "stack", "SELECT sparcl_id FROM spectra.synth_dr1", "--method", "median",
            "--grid", "3600:9800:0.5", "--memory-mib", "1", "--out", synth / "x.fits",
            data_dir=synth, check=False)
    assert p.returncode != 0
    assert "memory budget" in p.stderr and "mean or ivar" in p.stderr, p.stderr
    assert not (synth / "x.fits").exists()
