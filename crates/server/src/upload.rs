//! TAP table uploads (`UPLOAD=name,param:part`): inline multipart tables as VOTable (any
//! serialization), CSV, TSV, FITS or Parquet, read into memory under the service's size
//! and row limits and queryable as `TAP_UPLOAD.name` for the one query.
//!
//! Each uploaded part is first written to a file (in the job's directory for async jobs,
//! in a temporary directory for sync queries), so that both paths read uploads the same
//! way and an async job can run again after a restart.

use meridian_services::net::public_address;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use datafusion::datasource::{MemTable, TableProvider};
use meridian_engine::Engine;

use crate::Limits;
use crate::error::{Error, Result};
use crate::params::Params;

/// Value prefix of a job parameter whose content is an uploaded file kept with the job.
/// Only the service writes such values (see [`store`]); one a client sends names at most a
/// file [`store`] wrote into the same request's or job's own directory (see [`stored`]).
pub const STORED_PREFIX: &str = "stored:";

/// Extensions [`sniff`] gives, the only ones a stored upload's file name may end in.
const STORED_EXTENSIONS: [&str; 5] = ["csv", "tsv", "vot", "fits", "parquet"];

/// The schema upload tables are reached in.
pub const SCHEMA: &str = "TAP_UPLOAD";

/// File name extension for the table format `data` starts with (looking inside gzip).
pub(crate) fn sniff(data: &[u8]) -> &'static str {
    let content = meridian_formats::content_head(&data[..data.len().min(64 << 10)], 512);
    let head = &content[..content.len().min(512)];
    let text = String::from_utf8_lossy(head);
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if head.starts_with(b"PAR1") {
        "parquet"
    } else if head.starts_with(b"SIMPLE  =") {
        "fits"
    } else if t.starts_with('<') {
        "vot"
    } else if t.lines().next().is_some_and(|l| l.contains('\t')) {
        "tsv"
    } else {
        "csv"
    }
}

/// Writes the file parts of a request into `dir` and returns the parameters that refer to
/// them (part name, `stored:<file>`).
pub fn store(
    files: &[(String, Option<String>, Bytes)],
    dir: &Path,
    limits: &Limits,
) -> Result<Vec<(String, String)>> {
    let mut refs = Vec::new();
    for (part, _, data) in files {
        if data.len() as u64 > limits.upload_max_bytes {
            return Err(Error::Usage(format!(
                "upload '{part}' is {} bytes, over the limit of {} bytes",
                data.len(),
                limits.upload_max_bytes
            )));
        }
        if part.is_empty() {
            return Err(Error::Usage(
                "an inline upload is a multipart part with a name (UPLOAD=table,param:name)".into(),
            ));
        }
        let safe: String = part
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let file = format!("upload-{safe}.{}", sniff(data));
        debug_assert!(is_stored_name(&file));
        let tmp = dir.join(format!(".{file}.partial"));
        std::fs::write(&tmp, data)
            .and_then(|_| std::fs::rename(&tmp, dir.join(&file)))
            .map_err(|e| Error::Usage(format!("storing upload '{part}': {e}")))?;
        refs.push((part.clone(), format!("{STORED_PREFIX}{file}")));
    }
    Ok(refs)
}

/// Where an uploaded table's content is.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file (an inline part, stored).
    File(PathBuf),
    /// An http(s) URL the service fetches.
    Url(String),
}

/// One table to upload: the name it is queried by and where its content is.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Table name in `TAP_UPLOAD`.
    pub name: String,
    /// Its content.
    pub source: Source,
}

/// Whether `file` is a name [`store`] gives: `upload-<letters, digits, _>.<extension>`,
/// so no directory, no `..`, nothing but an upload.
fn is_stored_name(file: &str) -> bool {
    let Some((stem, ext)) = file
        .strip_prefix("upload-")
        .and_then(|rest| rest.rsplit_once('.'))
    else {
        return false;
    };
    !stem.is_empty()
        && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && STORED_EXTENSIONS.contains(&ext)
}

/// The file of part `part`: the last `stored:` value of that name (the service adds its
/// own after what the client sent) that names an upload [`store`] wrote into `dir`. A
/// value that names anything else (another directory, an absolute path, `..`) is ignored
/// as if absent, so that an answer never tells whether some path exists.
fn stored_file(params: &Params, part: &str, dir: &Path) -> Option<PathBuf> {
    params
        .all(part)
        .filter_map(|v| v.strip_prefix(STORED_PREFIX))
        .filter(|f| is_stored_name(f))
        .map(|f| dir.join(f))
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .last()
}

/// Reads the UPLOAD parameter: each `name,param:part` entry names a part stored in `dir`
/// (the request's or the job's own directory) by [`store`].
pub fn stored(params: &Params, dir: &Path, limits: &Limits) -> Result<Vec<Upload>> {
    let mut out: Vec<Upload> = Vec::new();
    for value in params.all("UPLOAD") {
        for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, uri) = entry.split_once(',').ok_or_else(|| {
                Error::Usage(format!(
                    "UPLOAD '{entry}' must be 'table_name,URI' (for example t1,param:t1)"
                ))
            })?;
            let (name, uri) = (name.trim(), uri.trim());
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(Error::Usage(format!(
                    "UPLOAD table name '{name}' is not an ADQL identifier (a letter, then \
                     letters, digits or _)"
                )));
            }
            if out.iter().any(|u| u.name.eq_ignore_ascii_case(name)) {
                return Err(Error::Usage(format!("UPLOAD names table '{name}' twice")));
            }
            let source = if let Some(part) = uri.strip_prefix("param:") {
                let file = stored_file(params, part, dir).ok_or_else(|| {
                    Error::Usage(format!(
                        "UPLOAD '{name}' refers to param:{part}, but the request has no \
                         file part named '{part}'"
                    ))
                })?;
                Source::File(file)
            } else if uri.starts_with("http://") || uri.starts_with("https://") {
                if !limits.allow_url_uploads {
                    return Err(Error::Usage(format!(
                        "UPLOAD '{name}': uploads by URL are disabled on this service; send \
                         the table inline (UPLOAD={name},param:{name} with a multipart part \
                         '{name}')"
                    )));
                }
                Source::Url(uri.to_string())
            } else {
                return Err(Error::Usage(format!(
                    "UPLOAD '{name}': URI '{uri}' is not supported; use param:<part name>"
                )));
            };
            out.push(Upload {
                name: name.to_string(),
                source,
            });
        }
    }
    Ok(out)
}

/// Fetches an http(s) upload into a temporary file, within the size limit.
pub(crate) fn fetch(name: &str, url: &str, limits: &Limits) -> Result<tempfile::TempPath> {
    let fail = |what: String| Error::Usage(format!("UPLOAD '{name}' from {url}: {what}"));
    let uri: axum::http::Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
    let host = uri.host().ok_or_else(|| fail("no host".into()))?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = (host.trim_matches(|c| c == '[' || c == ']'), port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve the host: {e}")))?
        .collect();
    if !limits.url_uploads_allow_private && addrs.iter().any(|a| !public_address(a.ip())) {
        return Err(fail(
            "the host is this machine or a private network, which uploads may not read".into(),
        ));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .max_redirects(0)
        .build()
        .into();
    let response = agent
        .get(url)
        .call()
        .map_err(|e| fail(format!("request failed: {e}")))?;
    let data = response
        .into_body()
        .with_config()
        .limit(limits.upload_max_bytes)
        .read_to_vec()
        .map_err(|e| {
            fail(format!(
                "reading the table (limit {} bytes): {e}",
                limits.upload_max_bytes
            ))
        })?;
    let file = tempfile::Builder::new()
        .prefix("meridian-upload-")
        .suffix(&format!(".{}", sniff(&data)))
        .tempfile()
        .map_err(|e| fail(format!("temporary file: {e}")))?;
    std::fs::write(file.path(), &data).map_err(|e| fail(format!("temporary file: {e}")))?;
    Ok(file.into_temp_path())
}

/// The options uploads are read with: the table's data, decompressed, within the upload
/// limit; the other bounds of [`meridian_formats::InputLimits`] as they are.
fn read_options(limits: &Limits) -> meridian_formats::ReadOptions {
    meridian_formats::ReadOptions {
        limits: meridian_formats::InputLimits {
            max_data_bytes: Some(limits.upload_max_bytes),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Reads one uploaded table into memory, within the size and row limits.
fn read(upload: &Upload, limits: &Limits) -> Result<Arc<dyn TableProvider>> {
    // The message leaves out where the service keeps the file; a limit passed is 413.
    let bad = |e: meridian_formats::Error| {
        let message = format!("UPLOAD '{}' cannot be read: {}", upload.name, e.detail());
        if e.is_limit() {
            Error::Services(meridian_services::Error::Quota(message))
        } else {
            Error::Usage(message)
        }
    };
    let fetched;
    let path = match &upload.source {
        Source::File(p) => p.as_path(),
        Source::Url(url) => {
            fetched = fetch(&upload.name, url, limits)?;
            &*fetched
        }
    };
    if let Some(moc) = moc_upload(&upload.name, path, limits)? {
        return Ok(moc);
    }
    let reader = meridian_formats::open(path, &read_options(limits)).map_err(bad)?;
    let schema = reader.schema();
    let mut batches = Vec::new();
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(bad)?;
        rows += batch.num_rows() as u64;
        if rows > limits.upload_max_rows {
            return Err(Error::Usage(format!(
                "UPLOAD '{}' has more than {} rows, the service's limit",
                upload.name, limits.upload_max_rows
            )));
        }
        batches.push(batch);
    }
    let table = MemTable::try_new(schema, vec![batches])
        .map_err(|e| Error::Usage(format!("UPLOAD '{}' cannot be used: {e}", upload.name)))?;
    Ok(Arc::new(table))
}

/// An uploaded MOC (MOC 2.0 FITS, ASCII or JSON) as a one-row table whose column `moc`
/// holds its ASCII text, for `... FROM t, TAP_UPLOAD.name AS m WHERE
/// CONTAINS(POINT(t.ra, t.dec), MOC(m.moc)) = 1`;
/// `None` when the file is not a MOC (a table, then).
fn moc_upload(
    name: &str,
    path: &std::path::Path,
    limits: &Limits,
) -> Result<Option<Arc<dyn TableProvider>>> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4 * 2880).read_to_end(&mut head))
        .map_err(|e| Error::Usage(format!("UPLOAD '{name}' cannot be read: {e}")))?;
    let text = String::from_utf8_lossy(&head);
    let fits_moc = head.starts_with(b"SIMPLE  =")
        && (text.contains("MOCORDER") || text.contains("MOCVERS") || text.contains("MOCDIM"));
    let trimmed = text.trim_start();
    let ascii_moc = !trimmed.is_empty()
        && trimmed
            .chars()
            .take(512)
            .all(|c| c.is_ascii_digit() || " \t\r\n/-,".contains(c))
        && trimmed
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('/'));
    let json_moc = trimmed.starts_with('{') && trimmed[1..].trim_start().starts_with('"');
    if !(fits_moc || ascii_moc || json_moc) {
        return Ok(None);
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > limits.upload_max_bytes {
        return Err(Error::Services(meridian_services::Error::Quota(format!(
            "UPLOAD '{name}' is over the service's limit of {} bytes",
            limits.upload_max_bytes
        ))));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Usage(format!("UPLOAD '{name}' cannot be read: {e}")))?;
    let moc = match meridian_sky::moc_parse(&bytes) {
        Ok(m) => m,
        // JSON that is not a MOC may still be a table.
        Err(_) if json_moc => return Ok(None),
        Err(e) => return Err(Error::Usage(format!("UPLOAD '{name}': {e}"))),
    };
    let ascii = meridian_sky::moc_ascii(&moc)
        .map_err(|e| Error::Usage(format!("UPLOAD '{name}': {e}")))?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    // Dictionary-encoded: a join repeats the key, not the MOC's text, on every row.
    let column: arrow::array::DictionaryArray<arrow::datatypes::Int32Type> =
        vec![ascii.as_str()].into_iter().collect();
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new(
            "moc",
            arrow::array::Array::data_type(&column).clone(),
            false,
        ),
    ]));
    let batch = arrow::array::RecordBatch::try_new(schema.clone(), vec![Arc::new(column)])
        .map_err(|e| Error::Usage(format!("UPLOAD '{name}': {e}")))?;
    let table = MemTable::try_new(schema, vec![vec![batch]])
        .map_err(|e| Error::Usage(format!("UPLOAD '{name}' cannot be used: {e}")))?;
    Ok(Some(Arc::new(table)))
}

/// The engine to run a query on: `engine` itself without uploads, else an engine with
/// the uploaded tables as `TAP_UPLOAD.<name>`.
pub async fn with_uploads(
    engine: &Arc<Engine>,
    uploads: Vec<Upload>,
    limits: &Limits,
) -> Result<Arc<Engine>> {
    if uploads.is_empty() {
        return Ok(engine.clone());
    }
    let mut tables = Vec::new();
    for u in uploads {
        tracing::info!(table = %u.name, "reading upload");
        // Reading is blocking file work: keep it off the request threads.
        let (upload, limits) = (u.clone(), limits.clone());
        let table = tokio::task::spawn_blocking(move || read(&upload, &limits))
            .await
            .map_err(|e| Error::Usage(format!("reading upload '{}': {e}", u.name)))??;
        tables.push((SCHEMA.to_string(), u.name, table));
    }
    Ok(Arc::new(engine.with_tables(tables)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn only_names_store_gives_are_stored_names() {
        for ok in ["upload-t.csv", "upload-My_table2.parquet", "upload-x.fits"] {
            assert!(is_stored_name(ok), "{ok}");
        }
        for bad in [
            "/etc/passwd",
            "../upload-t.csv",
            "upload-../../x.csv",
            "upload-a/b.csv",
            "upload-t.csv/..",
            "upload-.csv",
            "upload-t.sh",
            "result.vot",
            ".upload-t.csv.partial",
            "",
        ] {
            assert!(!is_stored_name(bad), "{bad}");
        }
    }

    #[test]
    fn forged_stored_references_read_nothing_and_tell_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("job");
        std::fs::create_dir(&dir).unwrap();
        let secret = root.path().join("secret.csv");
        std::fs::write(&secret, "a\n1\n").unwrap();
        std::fs::write(dir.join("upload-t.csv"), "a\n2\n").unwrap();
        let limits = Limits::default();
        let missing = root.path().join("missing.csv");
        let mut errors = Vec::new();
        for forged in [
            format!("stored:{}", secret.display()),
            "stored:../secret.csv".to_string(),
            format!("stored:{}", missing.display()),
            "stored:upload-u.csv".to_string(),
        ] {
            let p = params(&[("UPLOAD", "t,param:t"), ("t", &forged)]);
            let e = stored(&p, &dir, &limits).unwrap_err().to_string();
            assert!(e.contains("no file part named 't'"), "{forged}: {e}");
            errors.push(e);
        }
        errors.dedup();
        assert_eq!(errors.len(), 1, "{errors:?}");
        // The service's own reference, added after what the client sent, is the one read.
        let p = params(&[
            ("UPLOAD", "t,param:t"),
            ("t", "stored:../secret.csv"),
            ("t", "stored:upload-t.csv"),
        ]);
        let got = stored(&p, &dir, &limits).unwrap();
        assert!(matches!(&got[0].source, Source::File(f) if *f == dir.join("upload-t.csv")));
    }

    #[test]
    fn uploads_are_named_by_their_content() {
        assert_eq!(sniff(b"a\tb\n1\t2\n"), "tsv");
        assert_eq!(sniff(b"a,b\n"), "csv");
        assert_eq!(sniff(b"SIMPLE  =                    T"), "fits");
    }
}
