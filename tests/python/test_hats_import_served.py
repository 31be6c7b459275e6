"""A catalog written by hats-import is served in place by meridian with the same rows."""

import io
import subprocess
import sys

import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from conftest import run

IMPORT = """
import sys
from dask.distributed import Client
from hats_import.catalog.arguments import ImportArguments
from hats_import.pipeline import pipeline_with_client
if __name__ == "__main__":
    args = ImportArguments(output_artifact_name="hip", input_file_list=[sys.argv[1]], file_reader="parquet",
                           ra_column="ra", dec_column="dec", pixel_threshold=10000, output_path=sys.argv[2],
                           resume=False, progress_bar=False)
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        pipeline_with_client(args, client)
"""


@pytest.fixture(scope="module")
def hip_hats(tmp_path_factory, shared):
    d = tmp_path_factory.mktemp("hats-import")
    t = Table.read(shared / "catalogs/hipparcos2.vot")
    df = t.to_pandas()
    df.to_parquet(d / "hip.parquet")
    script = d / "import.py"
    script.write_text(IMPORT)
    subprocess.run([sys.executable, str(script), str(d / "hip.parquet"), str(d / "out")], check=True,
                   capture_output=True, timeout=900)
    return d / "out" / "hip", df


def test_meridian_serves_hats_import_catalog(hip_hats, tmp_path):
    path, df = hip_hats
    out = run("register", "hip", path, data_dir=tmp_path).stdout
    assert f"{len(df)} rows" in out
    listing = run("catalogs", data_dir=tmp_path).stdout
    assert listing.startswith("hip\t")
    info = run("info", "hip", data_dir=tmp_path).stdout
    assert "_healpix_29" in info and "plx" in info
    for ra, dec, r in [(10.0, 10.0, 7200.0), (0.0, -89.0, 10800.0), (359.9, 0.0, 3600.0), (266.4, -28.9, 3600.0)]:
        res = run("cone", "hip", "--ra", ra, "--dec", dec, "--radius-arcsec", r, data_dir=tmp_path).stdout
        got = pd.read_csv(io.StringIO(res)) if res.strip() else pd.DataFrame(columns=["hip"])
        sep = SkyCoord(df["ra"].values * u.deg, df["dec"].values * u.deg).separation(SkyCoord(ra * u.deg, dec * u.deg))
        want = df[sep.arcsec <= r]
        assert len(want) > 0
        assert set(got["hip"]) == set(want["hip"]), (ra, dec, r)


def test_register_refuses_a_non_hats_directory(tmp_path):
    p = run("register", "x", tmp_path, data_dir=tmp_path / "d", check=False)
    assert p.returncode != 0
    assert "not a HATS catalog" in p.stderr
