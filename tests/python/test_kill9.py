"""A kill -9 during ingest leaves the earlier catalog intact and readable."""

import os
import signal
import subprocess
import time

import hats
import lsdb

from conftest import meridian_bin, run


def test_kill9_during_ingest_keeps_previous_version(tmp_path, shared):
    data = tmp_path / "data"
    run("ingest", "cat", shared / "catalogs/hipparcos2.vot", data_dir=data)
    before = run("info", "cat", data_dir=data).stdout
    assert "hats_nrows = 117955" in before
    run("generate", "--out", tmp_path / "big", "--objects", 1_500_000, "--format", "csv", "--profile", "narrow")
    big = sorted((tmp_path / "big").glob("object-*.csv"))
    proc = subprocess.Popen([meridian_bin(), "--quiet", "--data-dir", str(data), "ingest", "cat", *map(str, big),
                             "--partition-rows", "20000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = data / "catalogs" / ".staging"
    deadline = time.time() + 120
    # Wait until the ingest has written spill or partition files, then kill it.
    while time.time() < deadline:
        files = [f for f in staging.rglob("*") if f.is_file()]
        if len(files) > 5:
            break
        assert proc.poll() is None, "ingest finished before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(staging.iterdir()), "the killed ingest left its staging directory"
    # The earlier version is intact for meridian, hats and lsdb.
    assert run("info", "cat", data_dir=data).stdout == before
    assert hats.read_hats(data / "catalogs" / "cat").main_catalog.catalog_info.total_rows == 117955
    assert len(lsdb.open_catalog(data / "catalogs" / "cat").cone_search(10, 10, 3600).compute()) > 0
    # The next ingest removes the leftovers and replaces the catalog.
    run("ingest", "cat", big[0], data_dir=data)
    assert not any(staging.iterdir())
    assert "hats_nrows = 1000000" in run("info", "cat", data_dir=data).stdout
