"""Runs hats-import on the given files (the peer for `meridian ingest`), with a 2-worker dask
cluster on this machine, and prints rows/s and wall time. Usage:
    python3 bench/hats_import_ingest.py OUT_DIR csv|parquet FILE...
"""

import sys
import time

from dask.distributed import Client
from hats_import.catalog.arguments import ImportArguments
from hats_import.pipeline import pipeline_with_client

if __name__ == "__main__":
    out, reader, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    args = ImportArguments(
        output_artifact_name="bench",
        input_file_list=files,
        file_reader=reader,
        ra_column="ra",
        dec_column="dec",
        output_path=out,
        resume=False,
        progress_bar=False,
    )
    start = time.time()
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        pipeline_with_client(args, client)
    elapsed = time.time() - start
    import hats

    rows = hats.read_hats(f"{out}/bench").catalog_info.total_rows
    print(f"hats-import {reader}: {rows} rows in {elapsed:.1f} s, {rows / elapsed:.0f} rows/s")
