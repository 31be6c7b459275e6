"""Query limits through the real binary: a runaway query is stopped by its time limit or a
signal with a clear error, promptly, leaving no partial output; a sort beyond the memory
budget spills and succeeds; a cross-match whose indexed side exceeds it fails cleanly."""

import re
import signal
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import meridian_bin, run


SMALL_BUDGET = {"MERIDIAN_QUERY__MEMORY_LIMIT_MIB": "16"}


def test_time_limit_stops_a_runaway_cross_join(store):
    start = time.time()
    # 482,106 x 482,106 row pairs: minutes of work without the limit.
    p = run("query", "SELECT COUNT(*) FROM gaia AS a, gaia AS b WHERE a.ra + b.ra > 1000",
            "--timeout-s", 3, data_dir=store, check=False, timeout=120)
    elapsed = time.time() - start
    assert p.returncode != 0
    assert "exceeded its time limit of 3 s" in p.stderr, p.stderr
    # The limit is kept even while every worker is inside a long operator poll.
    assert elapsed < 8, f"took {elapsed:.1f} s to stop"


def test_sort_beyond_the_memory_budget_spills_and_succeeds(store, tmp_path):
    # 24 MiB: well under the sort's needs (it spills every row), with room for DataFusion's
    # in-memory merge of the last runs, which takes a fresh reservation and can fail
    # under the very smallest budgets.
    # One partition: with several, the fair pool splits the budget and the share left for a
    # partition's final merge depends on how the rows happened to spread (an occasional
    # "Resources exhausted" on 2 cores).
    budget = {"MERIDIAN_QUERY__MEMORY_LIMIT_MIB": "24", "DATAFUSION_EXECUTION_TARGET_PARTITIONS": "1"}
    sql = "SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia ORDER BY phot_g_mean_mag, source_id"
    out = tmp_path / "sorted.parquet"
    run("query", sql, "--format", "parquet", "--out", out, data_dir=store, env=budget)
    g = pq.read_table(out).column("phot_g_mean_mag").to_numpy()
    assert len(g) == 482106 and np.all(np.diff(g) >= 0)
    plan = run("query", "--lang", "sql", f"EXPLAIN ANALYZE {sql}", "--format", "csv",
               data_dir=store, env=budget).stdout
    spilled = [int(x) for x in re.findall(r"spill_count=(\d+)", plan)]
    assert spilled and max(spilled) > 0, plan


def test_cross_match_beyond_the_memory_budget(store, tmp_path):
    """Under a budget its index does not fit, a cross-match runs zone by zone and gives the
    pairs it gives under an ample budget; forced to one index, it fails cleanly."""
    out = tmp_path / "pairs.parquet"
    p = run("xmatch", "gaia", "tycho2", "--radius", "1arcsec", "--format", "parquet", "--out", out,
            data_dir=store, check=False, env={**SMALL_BUDGET, "MERIDIAN_QUERY__XMATCH_ZONES": "never"})
    assert p.returncode == 1
    assert "Resources exhausted" in p.stderr and "XMatch build side" in p.stderr, p.stderr
    assert not out.exists() and not list(tmp_path.iterdir()), "no partial output"
    run("xmatch", "gaia", "tycho2", "--radius", "1arcsec", "--format", "parquet", "--out", out,
        data_dir=store, env=SMALL_BUDGET)
    small = pq.read_table(out).to_pandas().sort_values(["id1", "id2"]).reset_index(drop=True)
    run("xmatch", "gaia", "tycho2", "--radius", "1arcsec", "--format", "parquet", "--out", out, data_dir=store)
    ample = pq.read_table(out).to_pandas().sort_values(["id1", "id2"]).reset_index(drop=True)
    assert len(ample) > 400_000
    assert small[["id1", "id2"]].equals(ample[["id1", "id2"]])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_cancelled_query_stops_promptly_and_leaves_no_file(store, tmp_path, sig):
    out = tmp_path / "never.csv"
    cmd = [meridian_bin(), "--quiet", "--data-dir", str(store), "query",
           "SELECT COUNT(*) FROM gaia AS a, gaia AS b WHERE a.ra + b.ra > 1000", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    assert p.poll() is None, "still running"
    start = time.time()
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    # Noticed at once, even while every worker is inside a long operator poll.
    assert time.time() - start < 3
    assert p.returncode == 1 and "the query was cancelled" in err, err
    assert not list(tmp_path.iterdir()), "no partial output"
