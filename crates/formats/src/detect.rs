use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::limits::Meter;
use crate::progress::Counted;
use crate::{ByteCounter, Error, Result};

/// Table formats Meridian reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// Tab-separated values with a header line.
    Tsv,
    /// FITS with a binary table extension.
    Fits,
    /// IVOA VOTable (TABLEDATA, BINARY or BINARY2).
    VoTable,
    /// Apache Parquet.
    Parquet,
}

/// Whole-file compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// None.
    None,
    /// gzip (one or more members).
    Gzip,
}

/// Detects the format from the file name, then checks the first bytes agree, so that a file
/// that is not what its name says is refused with a message saying what it looks like.
pub fn detect(path: &Path) -> Result<(Format, Compression)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::format(path, "file name is not valid UTF-8"))?
        .to_ascii_lowercase();
    let (stem, compression) = match name.strip_suffix(".gz") {
        Some(s) => (s.to_string(), Compression::Gzip),
        None => (name.clone(), Compression::None),
    };
    let ext = stem.rsplit('.').next().unwrap_or("");
    let format = match ext {
        "csv" => Format::Csv,
        "tsv" | "tab" => Format::Tsv,
        "fits" | "fit" | "fts" => Format::Fits,
        "vot" | "xml" | "votable" => Format::VoTable,
        "parquet" | "pq" => Format::Parquet,
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "unknown table format '.{ext}': expected .csv, .tsv, .fits, .vot/.xml or \
                     .parquet, optionally followed by .gz"
                ),
            ));
        }
    };
    if format == Format::Parquet && compression == Compression::Gzip {
        return Err(Error::format(
            path,
            "gzip-compressed Parquet is not supported; Parquet compresses its own pages",
        ));
    }
    let mut head = Vec::with_capacity(512);
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    file.take(512)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    let gz_magic = head.starts_with(&[0x1f, 0x8b]);
    if compression == Compression::Gzip && !gz_magic {
        return Err(Error::format(
            path,
            format!("named .gz but is not gzip data ({})", looks_like(&head)),
        ));
    }
    // Services do send gzip without the suffix; trust the content.
    let compression = if gz_magic {
        Compression::Gzip
    } else {
        compression
    };
    if format == Format::Parquet && compression == Compression::Gzip {
        return Err(Error::format(
            path,
            "is gzip-compressed Parquet, which is not supported",
        ));
    }
    if compression == Compression::Gzip {
        let mut inner = Vec::with_capacity(512);
        let dec =
            flate2::read::MultiGzDecoder::new(File::open(path).map_err(|e| Error::io(path, e))?);
        dec.take(512)
            .read_to_end(&mut inner)
            .map_err(|e| Error::io(path, e))?;
        head = inner;
    }
    let ok = match format {
        Format::Fits => head.starts_with(b"SIMPLE  ="),
        Format::Parquet => head.starts_with(b"PAR1"),
        Format::VoTable => {
            let t = String::from_utf8_lossy(&head);
            let t = t.trim_start_matches('\u{feff}').trim_start();
            t.starts_with("<?xml") || t.starts_with("<VOTABLE") || t.starts_with("<!--")
        }
        Format::Csv | Format::Tsv => {
            !head.contains(&0) && std::str::from_utf8(trim_partial_utf8(&head)).is_ok()
        }
    };
    if !ok {
        return Err(Error::format(
            path,
            format!(
                "is named as {format:?} but its content {}",
                looks_like(&head)
            ),
        ));
    }
    Ok((format, compression))
}

/// The first bytes of a file's content from its first bytes `head`: decompressed when they
/// are gzip (as much as `head` holds of the first `max` bytes), else `head` itself.
pub fn content_head(head: &[u8], max: usize) -> std::borrow::Cow<'_, [u8]> {
    if !head.starts_with(&[0x1f, 0x8b]) {
        return std::borrow::Cow::Borrowed(head);
    }
    let mut inner = Vec::with_capacity(max.min(1 << 16));
    // A cut-off stream ends in an error after the bytes it could decode, which are kept.
    let _ = flate2::read::MultiGzDecoder::new(head)
        .take(max as u64)
        .read_to_end(&mut inner);
    std::borrow::Cow::Owned(inner)
}

/// Drops a UTF-8 sequence cut by the end of a sample.
fn trim_partial_utf8(b: &[u8]) -> &[u8] {
    match std::str::from_utf8(b) {
        Ok(_) => b,
        Err(e) if e.error_len().is_none() => &b[..e.valid_up_to()],
        Err(_) => b,
    }
}

fn looks_like(head: &[u8]) -> String {
    if head.is_empty() {
        "is empty".into()
    } else if head.starts_with(b"SIMPLE  =") {
        "looks like FITS".into()
    } else if head.starts_with(b"PAR1") {
        "looks like Parquet".into()
    } else if head.starts_with(&[0x1f, 0x8b]) {
        "looks like gzip".into()
    } else if head.starts_with(b"<?xml") || head.starts_with(b"<VOTABLE") {
        "looks like XML".into()
    } else if head.starts_with(b"Obj\x01") {
        "looks like Avro".into()
    } else if head.contains(&0) {
        "looks like binary data".into()
    } else {
        "looks like text".into()
    }
}

/// Opens a file for sequential reading, decompressing if needed, counting raw bytes in
/// `counter` and measuring what is read (after decompression) with `meter`.
pub(crate) fn open_stream(
    path: &Path,
    compression: Compression,
    counter: ByteCounter,
    meter: &mut Meter,
) -> Result<Box<dyn Read + Send>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let counted = Counted::new(BufReader::with_capacity(1 << 20, file), counter);
    Ok(match compression {
        Compression::None => Box::new(meter.reader(counted)),
        Compression::Gzip => {
            let packed = Counted::new(counted, meter.compressed());
            Box::new(meter.reader(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(packed),
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn content_head_looks_inside_gzip() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let text: String = (0..20_000)
            .map(|i| format!("{i},{}\n", i * 7919 % 10007))
            .collect();
        e.write_all(format!("a,b\n{text}").as_bytes()).unwrap();
        let packed = e.finish().unwrap();
        let head = content_head(&packed, 512);
        assert_eq!(head.len(), 512);
        assert!(head.starts_with(b"a,b\n0,0\n1,7919\n"));
        // Cut off: what could be decoded.
        let cut = content_head(&packed[..packed.len() / 2], 1 << 20);
        assert!(
            cut.len() > 512 && cut.starts_with(b"a,b\n"),
            "{}",
            cut.len()
        );
        assert_eq!(&*content_head(b"a,b\n", 512), b"a,b\n");
    }
}
