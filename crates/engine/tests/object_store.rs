//! Queries over a catalog in an object store: the engine reads its partitions through the
//! session's object-store registry (which reaches the catalog's bucket on first use) and
//! answers exactly as over the same catalog on local disk, with the same pruning. The store
//! here is the in-process `memory:///`; tests/python/test_object_store.py runs the same
//! against a real S3 server, embedded and on a cluster.

mod common;

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;
use meridian_catalog::{Store, objects};
use meridian_engine::{Engine, EngineConfig, Lang, XMatchZones};
use object_store::ObjectStoreExt;

fn upload(dir: &std::path::Path, url: &str) {
    let (_, store, prefix) = objects::parse(url).unwrap();
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
            let (store, bytes) = (store.clone(), std::fs::read(&p).unwrap());
            objects::block_on(async move { store.put(&path, bytes.into()).await }).unwrap();
        }
    }
}

/// Rows as sorted text lines.
fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).unwrap())
                .collect();
            out.push(cells.join("|"));
        }
    }
    out.sort();
    out
}

#[test]
fn queries_over_an_object_store_catalog_equal_the_local_ones() {
    let (dir, store) = common::gaia_store();
    let on_disk = std::fs::canonicalize(dir.path().join("gaia")).unwrap();
    upload(&on_disk, "memory:///engine-object-store/gaia");
    let remote_dir = tempfile::tempdir().unwrap();
    let remote_store = Store::open(remote_dir.path()).unwrap();
    remote_store
        .register_remote("gaia", "memory:///engine-object-store/gaia")
        .unwrap();

    let queries = [
        // A cone: pruned to a few partitions.
        "SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia \
         WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 56.75, 24.12, 3))",
        // A whole-catalog aggregate.
        "SELECT ivo_healpix_index(2, ra, dec) AS cell, COUNT(*) AS n, AVG(phot_g_mean_mag) AS g \
         FROM gaia GROUP BY ivo_healpix_index(2, ra, dec)",
        // A self cross-match at 60 arcsec (the index side with the margin, from the store).
        "SELECT a.source_id, b.source_id FROM gaia AS a JOIN gaia AS b \
         ON DISTANCE(POINT(a.ra, a.dec), POINT(b.ra, b.dec)) < 60.0 / 3600 \
         WHERE a.source_id <> b.source_id",
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    for zones in [XMatchZones::Never, XMatchZones::Always] {
        let config = EngineConfig {
            xmatch_zones: zones,
            ..Default::default()
        };
        let local = Engine::open(&store, &config).unwrap();
        let remote = Engine::open(&remote_store, &config).unwrap();
        for q in queries {
            let run = |e: &Engine| {
                rt.block_on(async {
                    let df = e.query(q, Lang::Adql).await.map_err(|e| e.to_string())?;
                    df.collect().await.map_err(|e| e.to_string())
                })
                .unwrap_or_else(|err| panic!("{q}: {err}"))
            };
            let want = lines(&run(&local));
            assert!(!want.is_empty(), "{q}");
            let got = lines(&run(&remote));
            assert_eq!(got.len(), want.len(), "{q} ({zones:?})");
            assert_eq!(got, want, "{q} ({zones:?})");
        }
        let (l, r) = (local.table("gaia").unwrap(), remote.table("gaia").unwrap());
        assert_eq!(r.last_pruning(), l.last_pruning());
    }
}
