//! Object stores: where catalogs (and users' files) live when they are not in a local
//! directory. `s3://bucket/prefix` reaches Amazon S3 or any S3-compatible server (MinIO,
//! Ceph, a cloud's own), configured by the standard `AWS_*` environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`, ...), so that every process of a cluster that shares the environment
//! reaches the same buckets; `memory:///` is an in-process store for tests.
//!
//! One store per bucket is kept for the life of the process, and all of its network I/O
//! runs on one dedicated runtime: a store is then usable from any async runtime (the
//! engine's, a test's) and from blocking code alike, and no pooled connection is left
//! bound to a runtime that has since shut down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use url::Url;

use crate::{Error, Result};

/// The runtime that performs object stores' network I/O.
pub fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("meridian-io")
            .enable_all()
            .build()
            .expect("the object-store I/O runtime starts")
    })
}

/// Runs `fut` on the I/O runtime and waits for it: object-store calls from blocking code
/// (opening a catalog, the catalog crate's own scans), whether or not the caller is on an
/// async runtime itself.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = io_runtime().spawn(fut);
    futures::executor::block_on(task).unwrap_or_else(|e| match e.try_into_panic() {
        Ok(p) => std::panic::resume_unwind(p),
        Err(e) => panic!("object-store task cancelled: {e}"),
    })
}

/// Whether `s` names an object-store location (`scheme://...`) rather than a local path.
pub fn is_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
    })
}

/// The base of `url` that names its store: `scheme://host/` (`s3://bucket/`).
pub fn store_base(url: &Url) -> String {
    format!("{}://{}/", url.scheme(), url.host_str().unwrap_or(""))
}

/// The store holding `url` (one per bucket, shared by the whole process).
pub fn store_for(url: &Url) -> Result<Arc<dyn ObjectStore>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let base = store_base(url);
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(s) = stores.get(&base) {
        return Ok(s.clone());
    }
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                Error::Invalid(format!("object-store URL '{url}': no bucket named"))
            })?;
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_http_connector(object_store::client::SpawnedReqwestConnector::new(
                    io_runtime().handle().clone(),
                ))
                .build()
                .map_err(|e| Error::Invalid(format!("object-store URL '{url}': {e}")))?;
            Arc::new(s3)
        }
        "memory" => Arc::new(object_store::memory::InMemory::new()),
        other => {
            return Err(Error::Invalid(format!(
                "object-store URL '{url}': scheme '{other}' is not supported (s3://bucket/prefix, \
                 memory:///prefix, or a local directory)"
            )));
        }
    };
    stores.insert(base, store.clone());
    Ok(store)
}

/// The store and the path inside it that an object-store URL names.
pub fn parse(url: &str) -> Result<(Url, Arc<dyn ObjectStore>, ObjectPath)> {
    let parsed =
        Url::parse(url).map_err(|e| Error::Invalid(format!("object-store URL '{url}': {e}")))?;
    let store = store_for(&parsed)?;
    let path = ObjectPath::from_url_path(parsed.path())
        .map_err(|e| Error::Invalid(format!("object-store URL '{url}': {e}")))?;
    Ok((parsed, store, path))
}

/// The error of an object-store call on `url`.
pub(crate) fn error(url: &str, e: object_store::Error) -> Error {
    Error::Object {
        url: url.to_string(),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[test]
    fn urls_and_paths() {
        assert!(is_url("s3://bucket/a/b"));
        assert!(is_url("memory:///x"));
        assert!(!is_url("/data/catalogs/gaia"));
        assert!(!is_url("relative/dir"));
        assert!(!is_url("://x"));
        let (url, _, path) = parse("memory:///objects-test/a/b").unwrap();
        assert_eq!(store_base(&url), "memory:///");
        assert_eq!(path.as_ref(), "objects-test/a/b");
        let e = parse("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("scheme 'ftp' is not supported"), "{e}");
        let e = parse("s3:///no-bucket").unwrap_err().to_string();
        assert!(e.contains("no bucket"), "{e}");
    }

    #[test]
    fn one_store_per_bucket_usable_from_blocking_and_async_code() {
        let (_, a, p) = parse("memory:///objects-test-2/x").unwrap();
        let (_, b, _) = parse("memory:///elsewhere").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one store per scheme and host");
        let put = {
            let (a, p) = (a.clone(), p.clone());
            async move { a.put(&p, bytes::Bytes::from_static(b"abc").into()).await }
        };
        block_on(put).unwrap();
        // From inside another runtime too.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let (a, p) = (a.clone(), p.clone());
            block_on(async move { a.get(&p).await.unwrap().bytes().await.unwrap() })
        });
        assert_eq!(&got[..], b"abc");
    }
}
