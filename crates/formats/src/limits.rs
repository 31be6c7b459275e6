//! Bounds on what reading one input may cost. A reader checks every size a file declares
//! (FITS NAXISn and TFORM repeat counts, VOTable arraysizes and BINARY lengths, Parquet
//! column chunk sizes) against the bytes actually present and these limits before it
//! allocates, and [`Meter`] bounds what it reads: the bytes after decompression, the
//! expansion ratio of compressed data, and the length of one record (a CSV line, a VOTable
//! row or XML event).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{ByteCounter, Error};

/// Limits on one input file; see [`crate::ReadOptions::limits`].
#[derive(Debug, Clone, PartialEq)]
pub struct InputLimits {
    /// Most bytes of table data read from one file after decompression (`None`: no bound
    /// beyond the ratio below). Services set it to their upload limit.
    pub max_data_bytes: Option<u64>,
    /// Largest expansion ratio of gzip data, checked once [`InputLimits::RATIO_FLOOR`]
    /// bytes have been expanded: real tables compress 2 to 20 times, a decompression bomb
    /// about 1000 times.
    pub max_compression_ratio: u64,
    /// Longest record, bytes: a CSV line, a VOTable row (or XML element), a FITS row.
    pub max_record_bytes: u64,
    /// Most columns of a table.
    pub max_columns: usize,
    /// Deepest XML element nesting of a VOTable.
    pub max_xml_depth: usize,
}

impl InputLimits {
    /// Expanded bytes below which the compression ratio is not checked (small files of
    /// repeated values compress far better than tables do).
    pub const RATIO_FLOOR: u64 = 16 << 20;
    /// Input bytes a reader puts in one record batch at most (fewer rows per batch for
    /// wide rows), so that a batch's memory is bounded whatever `batch_rows` says.
    pub const BATCH_BYTES: u64 = 64 << 20;
    /// Values (rows times columns) of one batch at most.
    pub const BATCH_CELLS: usize = 16 << 20;
}

impl InputLimits {
    /// Refuses a table of `columns` columns (read from `path`) over [`Self::max_columns`].
    pub(crate) fn check_column_count(
        &self,
        columns: usize,
        path: &std::path::Path,
    ) -> crate::Result<()> {
        if columns > self.max_columns {
            return Err(crate::Error::limit(
                path,
                format!(
                    "the table has {columns} columns, over the limit of {}",
                    self.max_columns
                ),
            ));
        }
        Ok(())
    }
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_data_bytes: None,
            max_compression_ratio: 200,
            max_record_bytes: 16 << 20,
            max_columns: 10_000,
            max_xml_depth: 256,
        }
    }
}

/// Rows per batch for rows of about `row_bytes` bytes and `columns` columns: at most
/// `batch_rows`, and within [`InputLimits::BATCH_BYTES`] and [`InputLimits::BATCH_CELLS`].
pub(crate) fn batch_rows_for(batch_rows: usize, row_bytes: u64, columns: usize) -> usize {
    let by_bytes = (InputLimits::BATCH_BYTES / row_bytes.max(1)).max(1);
    let by_cells = (InputLimits::BATCH_CELLS / columns.max(1)).max(1);
    batch_rows
        .max(1)
        .min(usize::try_from(by_bytes).unwrap_or(usize::MAX))
        .min(by_cells)
}

/// A limit an input passed; carried inside an `io::Error` from [`Meter`]'s reader.
#[derive(Debug)]
pub(crate) struct LimitExceeded(pub(crate) String);

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitExceeded {}

#[derive(Debug, Default)]
struct MeterState {
    /// Bytes delivered (after decompression).
    total: AtomicU64,
    /// `total` at the start of the current record.
    mark: AtomicU64,
    /// Compressed bytes read from the file (gzip only).
    compressed: ByteCounter,
    /// The first limit passed, kept so that a parser's own wrapping of the I/O error can
    /// be replaced by it.
    tripped: Mutex<Option<String>>,
}

/// Measures the bytes a reader takes from its input, failing the read that passes a limit.
/// Clones share the counts: the reader holds one, the format parser another.
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    state: Arc<MeterState>,
    limits: InputLimits,
    /// Whether the parser marks record starts (then a record is bounded).
    records: bool,
    gzip: bool,
}

impl Meter {
    pub(crate) fn new(limits: &InputLimits) -> Self {
        Self {
            state: Arc::default(),
            limits: limits.clone(),
            records: false,
            gzip: false,
        }
    }

    /// Bounds the bytes between [`Meter::mark`]s by the record limit.
    pub(crate) fn bound_records(&mut self) {
        self.records = true;
    }

    pub(crate) fn limits(&self) -> &InputLimits {
        &self.limits
    }

    /// Bytes delivered so far.
    pub(crate) fn total(&self) -> u64 {
        self.state.total.load(Ordering::Relaxed)
    }

    /// A record starts here.
    pub(crate) fn mark(&self) {
        self.state.mark.store(self.total(), Ordering::Relaxed);
    }

    /// The counter of compressed bytes, for the reader below the decompressor.
    pub(crate) fn compressed(&mut self) -> ByteCounter {
        self.gzip = true;
        self.state.compressed.clone()
    }

    /// The limit passed, if any.
    pub(crate) fn tripped(&self) -> Option<String> {
        self.state
            .tripped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `e`, or the limit error it stands for when a limit was passed.
    pub(crate) fn explain(&self, e: Error, file: &Path) -> Error {
        match (self.tripped(), &e) {
            (_, Error::Limit { .. }) => e,
            (Some(message), _) => Error::Limit {
                file: file.to_path_buf(),
                message,
            },
            (None, _) => e,
        }
    }

    /// Reading `inner` through this meter.
    pub(crate) fn reader<R: Read>(&self, inner: R) -> Metered<R> {
        Metered {
            inner,
            meter: self.clone(),
        }
    }

    fn check(&self, total: u64) -> Result<(), String> {
        let l = &self.limits;
        if let Some(max) = l.max_data_bytes
            && total > max
        {
            return Err(format!(
                "the table data is larger than the limit of {max} bytes{}",
                if self.gzip {
                    " (after decompression)"
                } else {
                    ""
                }
            ));
        }
        if self.gzip && total > InputLimits::RATIO_FLOOR {
            let packed = self.state.compressed.get().max(1);
            if total / packed > l.max_compression_ratio {
                return Err(format!(
                    "the gzip data expands more than {} times, the limit of the expansion \
                     ratio (a likely decompression bomb: {total} bytes from {packed})",
                    l.max_compression_ratio
                ));
            }
        }
        if self.records {
            let since = total.saturating_sub(self.state.mark.load(Ordering::Relaxed));
            // Parsers read ahead by up to a buffer's length.
            if since > l.max_record_bytes.saturating_add(2 << 20) {
                return Err(format!(
                    "a record (line, row or XML element) is longer than the limit of {} bytes",
                    l.max_record_bytes
                ));
            }
        }
        Ok(())
    }

    fn trip(&self, message: String) -> std::io::Error {
        let mut t = self.state.tripped.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_none() {
            *t = Some(message.clone());
        }
        std::io::Error::other(LimitExceeded(message))
    }
}

/// A reader measured by a [`Meter`].
pub(crate) struct Metered<R> {
    inner: R,
    meter: Meter,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(m) = self.meter.tripped() {
            return Err(std::io::Error::other(LimitExceeded(m)));
        }
        let n = self.inner.read(buf)?;
        let total = self
            .meter
            .state
            .total
            .fetch_add(n as u64, Ordering::Relaxed)
            + n as u64;
        self.meter.check(total).map_err(|m| self.meter.trip(m))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_rows_shrink_for_wide_rows() {
        assert_eq!(batch_rows_for(65_536, 100, 10), 65_536);
        assert_eq!(batch_rows_for(65_536, 1_000_000, 1), 67);
        assert_eq!(batch_rows_for(65_536, u64::MAX, 1), 1);
        assert_eq!(batch_rows_for(65_536, 8, 1_000_000), 16);
    }

    #[test]
    fn records_longer_than_the_limit_fail() {
        let limits = InputLimits {
            max_record_bytes: 10,
            ..Default::default()
        };
        let mut meter = Meter::new(&limits);
        meter.bound_records();
        let data = vec![b'x'; 4 << 20];
        let mut r = meter.reader(&data[..]);
        let mut buf = vec![0u8; 1 << 20];
        let mut err = None;
        for _ in 0..4 {
            if let Err(e) = r.read(&mut buf) {
                err = Some(e);
                break;
            }
        }
        let e = err.expect("the record limit is passed");
        assert!(e.to_string().contains("limit of 10 bytes"), "{e}");
        assert!(meter.tripped().is_some());
        // Marking record starts keeps a reader within the limit.
        let meter = {
            let mut m = Meter::new(&limits);
            m.bound_records();
            m
        };
        let mut r = meter.reader(&data[..]);
        for _ in 0..4 {
            r.read_exact(&mut buf).unwrap();
            meter.mark();
        }
    }

    #[test]
    fn data_limit_counts_every_byte() {
        let limits = InputLimits {
            max_data_bytes: Some(100),
            ..Default::default()
        };
        let meter = Meter::new(&limits);
        let mut out = Vec::new();
        let e = meter
            .reader(&[0u8; 101][..])
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(e.to_string().contains("limit of 100 bytes"), "{e}");
        let mut out = Vec::new();
        Meter::new(&limits)
            .reader(&[0u8; 100][..])
            .read_to_end(&mut out)
            .unwrap();
    }
}
