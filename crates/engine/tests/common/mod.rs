//! The shared test catalog: the Gaia DR3 bright-star sample from ../shared/data, ingested
//! with small partitions and row groups so that pruning shows.

use std::path::PathBuf;

use meridian_catalog::{IngestOptions, Store};

/// The input file.
pub fn gaia_input() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../../../shared/data/catalogs/gaia_dr3_bright.csv.gz")
}

/// A store in a temporary directory holding the catalog `gaia`.
pub fn gaia_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let opts = IngestOptions {
        partition_rows: 20_000,
        row_group_rows: 2_000,
        ..Default::default()
    };
    meridian_catalog::ingest::ingest(&store, "gaia", &[gaia_input()], &opts, &|_| {}).unwrap();
    (dir, store)
}
