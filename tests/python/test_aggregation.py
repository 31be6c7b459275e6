"""Grouped aggregation over a HEALPix-sorted catalog against pandas on the same rows:
counts, means (Meridian's run-aware AVG), sums and extremes per sky cell, with NULL
inputs (from CASE) and cells whose inputs are all NULL."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from conftest import run

CELL3 = 4 ** 26  # order-29 cells per order-3 cell


def test_grouped_means_per_sky_cell_match_pandas(store, tmp_path):
    everything = tmp_path / "all.parquet"
    run("query", "--lang", "sql", "SELECT _healpix_29, phot_g_mean_mag, phot_bp_mean_mag, phot_rp_mean_mag FROM gaia",
        "--format", "parquet", "--out", everything, data_dir=store)
    df = pq.read_table(everything).to_pandas()
    df["cell"] = df["_healpix_29"] // CELL3

    out = tmp_path / "agg.parquet"
    run("query", "--lang", "sql",
        f"SELECT _healpix_29 / {CELL3} AS cell, COUNT(*) AS n, AVG(phot_g_mean_mag) AS g, "
        f"AVG(CASE WHEN phot_bp_mean_mag < 10.5 THEN phot_bp_mean_mag END) AS bp, AVG(CASE WHEN phot_rp_mean_mag > 12 THEN phot_rp_mean_mag END) AS plx, "
        f"SUM(phot_g_mean_mag) AS gsum, MIN(phot_bp_mean_mag) AS bpmin "
        f"FROM gaia GROUP BY _healpix_29 / {CELL3}",
        "--format", "parquet", "--out", out, data_dir=store)
    got = pq.read_table(out).to_pandas().set_index("cell").sort_index()

    near = df.assign(plx=df["phot_rp_mean_mag"].where(df["phot_rp_mean_mag"] > 12),
                     bp=df["phot_bp_mean_mag"].where(df["phot_bp_mean_mag"] < 10.5))
    want = near.groupby("cell").agg(n=("cell", "size"), g=("phot_g_mean_mag", "mean"),
                                    bp=("bp", "mean"), plx=("plx", "mean"),
                                    gsum=("phot_g_mean_mag", "sum"), bpmin=("phot_bp_mean_mag", "min"))
    assert len(got) == len(want) > 300
    assert (got.index.values == want.index.values).all()
    assert (got["n"].values == want["n"].values).all()
    for col in ["g", "bp", "plx", "gsum", "bpmin"]:
        a, b = got[col].to_numpy(dtype=float), want[col].to_numpy(dtype=float)
        assert (np.isnan(a) == np.isnan(b)).all(), col
        ok = ~np.isnan(a)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-6, err_msg=col)
    assert got["plx"].isna().any(), "some cells have no star fainter than RP 12: NULL means"


def test_ungrouped_and_filtered_means_match_pandas(store, tmp_path):
    out = tmp_path / "one.csv"
    run("query", "SELECT AVG(phot_g_mean_mag) AS g, AVG(phot_bp_mean_mag) AS bp FROM gaia "
        "WHERE dec > 30", "--out", out, data_dir=store)
    got = pd.read_csv(out)
    everything = tmp_path / "all.parquet"
    run("query", "SELECT dec, phot_g_mean_mag, phot_bp_mean_mag FROM gaia", "--format", "parquet",
        "--out", everything, data_dir=store)
    df = pq.read_table(everything).to_pandas()
    sel = df[df["dec"] > 30]
    np.testing.assert_allclose(got["g"][0], sel["phot_g_mean_mag"].mean(), rtol=1e-9)
    np.testing.assert_allclose(got["bp"][0], sel["phot_bp_mean_mag"].mean(), rtol=1e-9)
