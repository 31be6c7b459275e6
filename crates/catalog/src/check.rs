//! Checking catalogs on disk against their metadata: every partition file there and
//! readable (its footer, and with `deep` every page), the rows it holds adding up to what
//! the properties say, the margin cache present; and what interrupted writers left.

use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};

use crate::{Catalog, Result, Store};

/// What a check found wrong, naming the catalog and the partition or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The catalog's name.
    pub catalog: String,
    /// What is wrong, and where.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "catalog '{}': {}", self.catalog, self.what)
    }
}

/// What a check looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// Catalogs checked.
    pub catalogs: usize,
    /// Partition files checked.
    pub files: usize,
    /// Rows counted.
    pub rows: u64,
    /// What was found wrong.
    pub problems: Vec<Problem>,
}

impl Catalog {
    /// Checks the catalog's partition files (and its margin's), reporting each problem
    /// under `name`: a missing or unreadable file, a file that does not decode (with
    /// `deep`, which reads every page), rows that do not add up to `hats_nrows`.
    pub fn check(&self, name: &str, deep: bool, out: &mut Checked) {
        self.check_one(name, "", deep, out);
        if let Some(p) = self.margin_problem() {
            out.problems.push(Problem {
                catalog: name.to_string(),
                what: p.to_string(),
            });
        }
        if let Some(m) = self.margin() {
            m.check_one(name, "margin ", deep, out);
        }
    }

    fn check_one(&self, name: &str, part: &str, deep: bool, out: &mut Checked) {
        let mut problem = |what: String| {
            out.problems.push(Problem {
                catalog: name.to_string(),
                what,
            })
        };
        let mut rows = 0u64;
        let mut files = 0usize;
        let mut readable = true;
        for pixel in self.partitions() {
            let names = self.partition_files(pixel);
            if names.is_empty() {
                problem(format!("{part}partition {pixel} has no file"));
                readable = false;
            }
            for rel in names {
                files += 1;
                let path = self.location().name_of(&rel);
                let file = match self.location().open(&rel) {
                    Ok(f) => f,
                    Err(e) => {
                        problem(format!("{part}partition {pixel}: {e}"));
                        readable = false;
                        continue;
                    }
                };
                let meta = match ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()) {
                    Ok(m) => m,
                    Err(e) => {
                        problem(format!(
                            "{part}partition {pixel}: {path} is not a readable Parquet file \
                             ({e})"
                        ));
                        readable = false;
                        continue;
                    }
                };
                rows += meta.metadata().file_metadata().num_rows() as u64;
                if deep && let Err(e) = decode_all(file, &path) {
                    problem(format!("{part}partition {pixel}: {e}"));
                }
            }
        }
        out.files += files;
        if part.is_empty() {
            out.rows += rows;
        }
        let declared = self
            .properties()
            .get("hats_nrows")
            .and_then(|n| n.parse::<u64>().ok());
        if readable && let Some(n) = declared.filter(|n| *n != rows) {
            problem(format!(
                "{part}files hold {rows} rows, its properties say {n} (hats_nrows)"
            ));
        }
    }
}

/// Reads every row of the Parquet file `file` (named `path` in the error); a panic of the
/// Parquet decoder on a corrupt page is an error too.
pub fn decode_all<R>(file: R, path: &str) -> Result<(), String>
where
    R: parquet::file::reader::ChunkReader + 'static,
{
    meridian_formats::contain::contain(|| {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(65_536).build())
            .map_err(|e| format!("{path}: {e}"))?;
        for b in reader {
            b.map_err(|e| format!("{path} does not decode: {e}"))?;
        }
        Ok(())
    })
    .unwrap_or_else(|panic| Err(format!("{path} does not decode: corrupt data: {panic}")))
}

impl Store {
    /// Checks every catalog of the store (see [`Catalog::check`]) and reports what
    /// interrupted writers left (staging directories of processes that are gone); with
    /// `repair`, removes those leftovers.
    pub fn check(&self, deep: bool, repair: bool) -> Result<Checked> {
        let mut out = Checked::default();
        for name in self.list()? {
            out.catalogs += 1;
            match self.catalog(&name) {
                Ok(c) => c.check(&name, deep, &mut out),
                Err(e) => out.problems.push(Problem {
                    catalog: name.clone(),
                    what: format!("cannot be opened: {e}"),
                }),
            }
        }
        let leftovers = self.leftovers();
        if repair {
            self.clean_leftovers();
        }
        for l in leftovers {
            out.problems.push(Problem {
                catalog: l.0,
                what: format!(
                    "an interrupted write left {}{}",
                    l.1.display(),
                    if repair { " (removed)" } else { "" }
                ),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_page_the_decoder_panics_on_is_an_error() {
        // Found by fuzzing: a page whose bit width is over 64 (the Parquet decoder asserts).
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/regressions/parquet/bit-width-over-capacity"
        );
        let file = std::fs::File::open(path).unwrap();
        let e = super::decode_all(file, "the file").unwrap_err();
        assert!(
            e.starts_with("the file does not decode: corrupt data"),
            "{e}"
        );
    }
}
