//! A catalog in an object store reads as the same catalog in a local directory: the same
//! properties, partitions, schema, rows and pruned cone scans (the store here is the
//! in-process `memory:///`; tests/python/test_object_store.py does the same against a real
//! S3 server).

use std::path::{Path, PathBuf};

use meridian_catalog::ingest::ingest;
use meridian_catalog::objects;
use meridian_catalog::{Catalog, IngestOptions, Location, Store};
use meridian_sky::{Circle, Region, SkyPoint};
use object_store::ObjectStoreExt;

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../../../shared/data")
        .join(rel)
}

/// Copies every file under `dir` to `url` (a `memory:///` prefix).
fn upload(dir: &Path, url: &str) -> usize {
    let (_, store, prefix) = objects::parse(url).unwrap();
    let mut n = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
            let path = rel
                .split('/')
                .fold(prefix.clone(), |acc, part| acc.clone().join(part));
            let bytes = std::fs::read(&p).unwrap();
            let store = store.clone();
            objects::block_on(async move { store.put(&path, bytes.into()).await }).unwrap();
            n += 1;
        }
    }
    n
}

fn rows(catalog: &Catalog, region: Option<&Region>) -> (Vec<String>, usize) {
    let mut scan = catalog.scan(region).unwrap();
    let mut ids = Vec::new();
    for batch in scan.by_ref() {
        let batch = batch.unwrap();
        let col = arrow::compute::cast(
            batch.column_by_name("source_id").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let col = col
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        ids.extend(col.iter().map(|v| v.unwrap_or("").to_string()));
    }
    ids.sort();
    (ids, scan.stats().partitions_read)
}

#[test]
fn a_catalog_in_an_object_store_reads_as_the_local_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("catalogs")).unwrap();
    let opts = IngestOptions {
        partition_rows: 20_000,
        row_group_rows: 5_000,
        memory_budget_bytes: 64 << 20,
        ..Default::default()
    };
    ingest(
        &store,
        "gaia",
        &[shared("catalogs/gaia_dr3_bright.csv.gz")],
        &opts,
        &|_| {},
    )
    .unwrap();
    let local = store.catalog("gaia").unwrap();
    let on_disk = std::fs::canonicalize(dir.path().join("catalogs/gaia")).unwrap();
    let files = upload(&on_disk, "memory:///object-store-test/gaia");
    assert!(files > 4, "{files} files uploaded");

    // Registered under a name of its own: the entry names the URL.
    let remote = store
        .register_remote("gaia_s3", "memory:///object-store-test/gaia")
        .unwrap();
    assert_eq!(
        remote.location().to_string(),
        "memory:///object-store-test/gaia/gaia"
    );
    assert!(remote.local_dir().is_none());
    assert_eq!(store.list().unwrap(), vec!["gaia", "gaia_s3"]);
    let reopened = store.catalog("gaia_s3").unwrap();
    assert_eq!(reopened.location(), remote.location());

    assert_eq!(remote.partitions(), local.partitions());
    assert!(remote.partitions().len() > 1);
    assert_eq!(remote.schema(), local.schema());
    assert_eq!(remote.properties(), local.properties());
    assert_eq!(remote.total_rows().unwrap(), local.total_rows().unwrap());
    let (rm, lm) = (remote.margin().unwrap(), local.margin().unwrap());
    assert_eq!(rm.partitions(), lm.partitions());
    assert_eq!(rm.total_rows().unwrap(), lm.total_rows().unwrap());

    // Whole scans and pruned cones give the same rows, reading the same partitions.
    assert_eq!(rows(&remote, None), rows(&local, None));
    let cone = Region::Circle(Circle::new(SkyPoint::new(56.75, 24.12).unwrap(), 3.0).unwrap());
    let (ids, read) = rows(&remote, Some(&cone));
    assert!(!ids.is_empty() && read < remote.partitions().len());
    assert_eq!((ids, read), rows(&local, Some(&cone)));
    assert_eq!(
        remote.cell_counts(3, &|_| {}).unwrap(),
        local.cell_counts(3, &|_| {}).unwrap()
    );

    // Removing the entry leaves the objects alone.
    store.remove("gaia_s3").unwrap();
    assert_eq!(store.list().unwrap(), vec!["gaia"]);
    assert!(
        Location::parse("memory:///object-store-test/gaia")
            .unwrap()
            .exists("collection.properties")
            .unwrap()
    );
}

#[test]
fn a_missing_or_bad_object_store_catalog_fails_clearly_and_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("catalogs")).unwrap();
    let e = store
        .register_remote("nothing", "memory:///object-store-test/no/such/catalog")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("memory:///object-store-test/no/such/catalog")
            && e.contains("not a HATS catalog"),
        "{e}"
    );
    let e = store
        .register_remote("bad", "ftp://host/catalog")
        .unwrap_err()
        .to_string();
    assert!(e.contains("scheme 'ftp' is not supported"), "{e}");
    let e = store
        .register_remote("local", "/tmp/not-a-url")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an object-store URL"), "{e}");
    // A properties file but a partition that is not Parquet.
    let (_, s, p) = objects::parse("memory:///object-store-test/broken").unwrap();
    let put = |rel: &'static str, body: &'static [u8]| {
        let (s, p) = (s.clone(), p.clone());
        objects::block_on(async move {
            let path = rel.split('/').fold(p, |acc, part| acc.clone().join(part));
            s.put(&path, bytes::Bytes::from_static(body).into()).await
        })
        .unwrap();
    };
    put("hats.properties", b"hats_col_ra=ra\nhats_col_dec=dec\n");
    put("partition_info.csv", b"Norder,Npix\n0,1\n");
    put("dataset/Norder=0/Dir=0/Npix=1.parquet", b"not parquet");
    let e = store
        .register_remote("broken", "memory:///object-store-test/broken")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("memory:///object-store-test/broken/dataset/Norder=0/Dir=0/Npix=1.parquet"),
        "{e}"
    );
    assert!(store.list().unwrap().is_empty(), "nothing registered");
}
