//! Golden tests in the style of DataFusion's sqllogictest files: each `tests/golden/*.slt`
//! holds records of the form
//!
//! ```text
//! query <adql|sql>
//! <the query, one or more lines>
//! ----
//! <expected rows as CSV, or for explain: the pruning figures>
//! ```
//!
//! separated by blank lines; `explain <adql|sql>` records check what the scan read:
//! partitions and row groups against the totals. `MERIDIAN_BLESS=1 cargo test -p
//! meridian-engine --test golden` rewrites the expected parts from the current output, to
//! be reviewed as a diff. The data is the Gaia DR3 bright-star sample from ../shared/data.

use std::path::PathBuf;

use arrow::array::RecordBatch;
use meridian_engine::{Engine, EngineConfig, Lang};

mod common;

fn engine() -> (tempfile::TempDir, Engine) {
    let (dir, store) = common::gaia_store();
    let engine = Engine::open(
        &store,
        &EngineConfig {
            target_partitions: 2,
            ..Default::default()
        },
    )
    .unwrap();
    (dir, engine)
}

fn csv(batches: &[RecordBatch]) -> String {
    let mut out = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(&mut out);
        for b in batches {
            w.write(b).unwrap();
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn golden_files() {
    let bless = std::env::var("MERIDIAN_BLESS").is_ok_and(|v| v == "1");
    let (_dir, engine) = engine();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("tests/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let mut records = 0;
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "slt"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        let mut out = String::new();
        for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
            let all: Vec<&str> = block.lines().collect();
            let sep = all.iter().position(|l| *l == "----").unwrap_or(all.len());
            let head = all[..sep].join("\n");
            let expected = all.get(sep + 1..).map(|r| r.join("\n")).unwrap_or_default();
            let mut lines = head.lines();
            let expected = expected.as_str();
            let mut comments = String::new();
            let header = loop {
                let l = lines.next().expect("a record needs a header line");
                if l.starts_with('#') {
                    comments.push_str(l);
                    comments.push('\n');
                } else {
                    break l;
                }
            };
            let query: String = lines.collect::<Vec<_>>().join("\n");
            let (kind, lang) = header
                .split_once(' ')
                .expect("header: query|explain adql|sql");
            let lang = if lang.trim() == "sql" {
                Lang::Sql
            } else {
                Lang::Adql
            };
            let actual = match kind {
                "query" => {
                    let batches = rt.block_on(async {
                        engine
                            .query(&query, lang)
                            .await
                            .unwrap_or_else(|e| panic!("{query}: {e}"))
                            .collect()
                            .await
                            .unwrap()
                    });
                    csv(&batches)
                }
                "explain" => format!(
                    "{}\n",
                    rt.block_on(engine.scan_report(&query, lang)).unwrap()
                ),
                other => panic!("unknown record kind {other} in {}", file.display()),
            };
            records += 1;
            if actual.trim_end() != expected.trim_end() {
                failures.push(format!(
                    "{}: {query}\nexpected:\n{expected}\nactual:\n{actual}",
                    file.display()
                ));
            }
            out.push_str(&format!(
                "{comments}{header}\n{query}\n----\n{}\n\n",
                actual.trim_end()
            ));
        }
        if bless {
            std::fs::write(file, out.trim_end().to_string() + "\n").unwrap();
        }
    }
    assert!(records > 0);
    if !bless {
        assert!(
            failures.is_empty(),
            "{} golden records differ (MERIDIAN_BLESS=1 rewrites them):\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}
