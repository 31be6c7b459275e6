"""The short version of the soak test (bench/soak.py; the long run is 30 minutes at 80% of
capacity, see bench/README.md): every operation of the mix answers as expected, open
descriptors stay flat, and the disk is back to its baseline once the soak's files, tables
and jobs are gone."""

import json
import subprocess
import sys

from conftest import ROOT, meridian_bin


def test_a_short_soak_has_no_errors_and_gives_everything_back(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench/soak.py"), "--binary", meridian_bin(),
                        "--minutes", "0.5", "--clients", "4", "--calibrate-seconds", "5",
                        "--window", "10", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    result = json.loads(next(tmp_path.glob("soak-*.json")).read_text())
    assert result["errors"] == 0, result["first_errors"]
    assert result["calibration_errors"] == 0
    assert result["operations"] > 100
    assert set(result["latency_ms"]) == {"cone", "scan", "async_upload", "mydb", "storage",
                                         "login", "vospace"}
    assert abs(result["fds_last_third"] - result["fds_first_third"]) <= 8, result["samples"]
    assert result["disk_final_bytes"] <= result["disk_baseline_bytes"] + (1 << 20), result
    assert p.returncode == 0, p.stderr[-2000:]
    assert next(tmp_path.glob("soak-*.svg")).stat().st_size > 500
