"""`meridian spectra add` with bad input: truncated and foreign files are reported (file,
HDU, reason) and skipped, an add with nothing good changes nothing, adding a file twice
adds nothing, and a killed add leaves the dataset as it was. Synthetic spectra
(`meridian generate --spectra`) are reproducible from their seed."""

import shutil
import signal
import subprocess
import time

import requests

from conftest import Server, meridian_bin, run


def spectra_count(d, name):
    out = run("spectra", "list", data_dir=d).stdout
    for line in out.splitlines():
        if line.startswith(name + "\t"):
            return int(line.split("\t")[2].split()[0])
    return 0


def test_bad_files_are_reported_and_skipped(tmp_path, shared):
    d = tmp_path / "data"
    coadd = shared / "spectra/desi_coadd-sv3-dark-26065.fits"
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(coadd.read_bytes()[:200_000])
    foreign = tmp_path / "notes.fits"
    foreign.write_text("these are not FITS\n" * 200)
    table = shared / "votable/dal_tests_data_scs_result.xml"  # a cone search, not a spectrum
    p = run("spectra", "add", "DESI-EDR", coadd, truncated, foreign, table, data_dir=d)
    skipped = [line for line in p.stderr.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 3, p.stderr
    assert any("truncated.fits" in s for s in skipped)
    assert any("notes.fits" in s for s in skipped)
    assert spectra_count(d, "DESI-EDR") == 5
    # Nothing good: an error, and the dataset is as it was.
    p = run("spectra", "add", "DESI-EDR", truncated, foreign, data_dir=d, check=False)
    assert p.returncode != 0 and "nothing changed" in p.stderr
    assert spectra_count(d, "DESI-EDR") == 5
    # The same file again adds nothing.
    p = run("spectra", "add", "DESI-EDR", coadd, data_dir=d)
    assert "nothing new" in p.stderr
    assert spectra_count(d, "DESI-EDR") == 5
    # A bad name is refused.
    p = run("spectra", "add", "../escape", coadd, data_dir=d, check=False)
    assert p.returncode != 0 and "invalid dataset name" in p.stderr


def test_a_killed_add_leaves_the_dataset_as_it_was(tmp_path, shared):
    d = tmp_path / "data"
    coadd = shared / "spectra/desi_coadd-sv3-dark-26065.fits"
    run("spectra", "add", "DESI-EDR", coadd, data_dir=d)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(300):
        shutil.copy(shared / "spectra/desi_spectra-sv3-dark-26065.fits", many / f"s{i:03}.fits")
    proc = subprocess.Popen([meridian_bin(), "--quiet", "--data-dir", str(d), "spectra", "add",
                             "DESI-EDR", str(many)], stderr=subprocess.PIPE)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Either the add was killed before it published (5) or it had finished (10): never a
    # dataset in between.
    n = spectra_count(d, "DESI-EDR")
    assert n in (5, 10)
    with Server(d) as s:
        r = requests.post(s.url.removesuffix("/tap") + "/sparcl/api/find/?limit=None",
                          json={"outfields": ["sparcl_id"], "search": []})
        assert len(r.json()) == 1 + n
    # The next add finishes the job (staging leftovers do not get in the way).
    run("spectra", "add", "DESI-EDR", shared / "spectra/desi_spectra-sv3-dark-26065.fits", data_dir=d)
    assert spectra_count(d, "DESI-EDR") == 10


def test_synthetic_spectra_are_reproducible(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        run("generate", "--out", d / "survey", "--objects", 1000, "--spectra", 50, "--seed", 7, data_dir=d)
    fa = run("spectra", "get", "--dataset", "SYNTH-DR1", first_specid(a), data_dir=a).stdout
    fb = run("spectra", "get", "--dataset", "SYNTH-DR1", first_specid(a), data_dir=b).stdout
    assert fa == fb and "<TR>" in fa
    assert spectra_count(a, "SYNTH-DR1") == 50


def first_specid(d):
    with Server(d) as s:
        r = requests.get(f"{s.url}/sync", params={"LANG": "ADQL", "FORMAT": "csv",
                                                   "QUERY": "SELECT TOP 1 specid FROM spectra.synth_dr1 ORDER BY specid"})
        return r.text.split()[1]
