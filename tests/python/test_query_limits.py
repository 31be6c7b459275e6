"""Query limits through the real binary: a runaway query is stopped by its time limit with a
clear error and the process exits promptly."""

import time

from conftest import run


def test_time_limit_stops_a_runaway_cross_join(store):
    start = time.time()
    # 482,106 x 482,106 rows: hours of work without the limit.
    p = run("query", "SELECT COUNT(*) FROM gaia AS a, gaia AS b WHERE a.ra + b.ra > 1000",
            "--timeout-s", 3, data_dir=store, check=False, timeout=120)
    elapsed = time.time() - start
    assert p.returncode != 0
    assert "exceeded its time limit of 3 s" in p.stderr, p.stderr
    assert elapsed < 30, f"took {elapsed:.1f} s to stop"


def test_unsupported_geometry_value_is_a_clear_error(store):
    p = run("query", "SELECT POINT('ICRS', ra, dec) FROM gaia", data_dir=store, check=False)
    assert p.returncode != 0
    assert "not supported" in p.stderr and "POINT" in p.stderr and "line 1, column 8" in p.stderr, p.stderr
