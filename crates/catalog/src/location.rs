//! Where a catalog's files are: a local directory, or a prefix in an object store that
//! every process of a cluster reads (see [`crate::objects`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::file::reader::{ChunkReader, Length};

use crate::{Error, Result, objects};

/// A catalog directory: local, or a prefix of an object store.
#[derive(Clone)]
pub enum Location {
    /// A directory of the local (or a shared) filesystem.
    Local(PathBuf),
    /// A prefix in an object store.
    Object(ObjectLocation),
}

/// A prefix in an object store.
#[derive(Clone)]
pub struct ObjectLocation {
    /// `scheme://host/` of the store.
    base: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Object(o) => write!(f, "{}{}", o.base, o.prefix),
        }
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Location::Local(p.to_path_buf())
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Local(p)
    }
}

impl PartialEq for Location {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Location {
    /// A local path (`/data/gaia`, `file:///data/gaia`) or an object-store URL
    /// (`s3://bucket/catalogs/gaia`).
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if !objects::is_url(s) {
            return Ok(Location::Local(PathBuf::from(s)));
        }
        let (url, store, prefix) = objects::parse(s)?;
        Ok(Location::Object(ObjectLocation {
            base: objects::store_base(&url),
            store,
            prefix,
        }))
    }

    /// The local directory, if this is one.
    pub fn as_local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::Object(_) => None,
        }
    }

    /// The location `rel` (a `/`-separated relative path) below this one.
    pub fn join(&self, rel: &str) -> Location {
        match self {
            Location::Local(p) => Location::Local(p.join(rel)),
            Location::Object(o) => Location::Object(ObjectLocation {
                prefix: o.child(rel),
                ..o.clone()
            }),
        }
    }

    /// How errors and listings name `rel` below this location.
    pub fn name_of(&self, rel: &str) -> String {
        self.join(rel).to_string()
    }

    /// Whether the file `rel` exists.
    pub fn exists(&self, rel: &str) -> Result<bool> {
        match self {
            Location::Local(p) => Ok(p.join(rel).exists()),
            Location::Object(o) => {
                let (store, path) = (o.store.clone(), o.child(rel));
                match objects::block_on(async move { store.head(&path).await }) {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(objects::error(&self.name_of(rel), e)),
                }
            }
        }
    }

    /// The text of file `rel`.
    pub fn read_to_string(&self, rel: &str) -> Result<String> {
        match self {
            Location::Local(p) => {
                let path = p.join(rel);
                std::fs::read_to_string(&path).map_err(|e| Error::io(path, e))
            }
            Location::Object(o) => {
                let (store, path) = (o.store.clone(), o.child(rel));
                let bytes = objects::block_on(async move { store.get(&path).await?.bytes().await })
                    .map_err(|e| objects::error(&self.name_of(rel), e))?;
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| Error::Invalid(format!("{}: not UTF-8 text", self.name_of(rel))))
            }
        }
    }

    /// The files below `rel`, as paths relative to this location, in no set order.
    pub fn list_files(&self, rel: &str) -> Result<Vec<String>> {
        match self {
            Location::Local(p) => {
                let mut out = Vec::new();
                let mut dirs = vec![rel.trim_end_matches('/').to_string()];
                while let Some(d) = dirs.pop() {
                    let dir = p.join(&d);
                    for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
                        let e = e.map_err(|e| Error::io(&dir, e))?;
                        let child = format!("{d}/{}", e.file_name().to_string_lossy());
                        if e.path().is_dir() {
                            dirs.push(child);
                        } else {
                            out.push(child);
                        }
                    }
                }
                Ok(out)
            }
            Location::Object(o) => {
                use futures::TryStreamExt;
                let (store, prefix) = (o.store.clone(), o.child(rel));
                let metas: Vec<_> = objects::block_on(async move {
                    store.list(Some(&prefix)).try_collect::<Vec<_>>().await
                })
                .map_err(|e| objects::error(&self.name_of(rel), e))?;
                let base = o.prefix.as_ref();
                Ok(metas
                    .into_iter()
                    .filter_map(|m| {
                        let full = m.location.as_ref().to_string();
                        let rel = if base.is_empty() {
                            Some(full.as_str())
                        } else {
                            full.strip_prefix(base).and_then(|r| r.strip_prefix('/'))
                        };
                        rel.map(str::to_string)
                    })
                    .collect())
            }
        }
    }

    /// File `rel` for the Parquet reader: the local file, or the object read by ranges.
    pub fn open(&self, rel: &str) -> Result<PartFile> {
        match self {
            Location::Local(p) => {
                let path = p.join(rel);
                let f = std::fs::File::open(&path).map_err(|e| Error::io(path, e))?;
                Ok(PartFile::Local(f))
            }
            Location::Object(o) => {
                let (store, path) = (o.store.clone(), o.child(rel));
                let size = {
                    let (store, path) = (store.clone(), path.clone());
                    objects::block_on(async move { store.head(&path).await })
                        .map_err(|e| objects::error(&self.name_of(rel), e))?
                        .size
                };
                Ok(PartFile::Object(ObjectFile { store, path, size }))
            }
        }
    }

    /// The store's URL for DataFusion (`file:///`, `s3://bucket/`) and the path of `rel`
    /// inside that store.
    pub fn object_path(&self, rel: &str) -> Result<(String, ObjectPath)> {
        match self {
            Location::Local(p) => {
                let path = p.join(rel);
                let abs = std::path::absolute(&path).map_err(|e| Error::io(&path, e))?;
                let object = ObjectPath::from_absolute_path(&abs)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", abs.display())))?;
                Ok(("file:///".to_string(), object))
            }
            Location::Object(o) => Ok((o.base.clone(), o.child(rel))),
        }
    }

    /// The same location named so that another process reaches it: an absolute path or the
    /// object-store URL.
    pub fn absolute(&self) -> Result<Location> {
        match self {
            Location::Local(p) => Ok(Location::Local(
                std::path::absolute(p).map_err(|e| Error::io(p, e))?,
            )),
            Location::Object(_) => Ok(self.clone()),
        }
    }
}

impl ObjectLocation {
    fn child(&self, rel: &str) -> ObjectPath {
        rel.split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .fold(self.prefix.clone(), |p, part| p.clone().join(part))
    }
}

/// A partition file as the synchronous Parquet reader reads it.
pub enum PartFile {
    /// A local file.
    Local(std::fs::File),
    /// An object, read by ranged GETs.
    Object(ObjectFile),
}

/// An object read by ranged GETs (the footer, then each column chunk the reader needs).
pub struct ObjectFile {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    size: u64,
}

impl ObjectFile {
    fn range(&self, start: u64, end: u64) -> parquet::errors::Result<Bytes> {
        let (store, path) = (self.store.clone(), self.path.clone());
        objects::block_on(async move { store.get_range(&path, start..end).await })
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
    }
}

impl Length for PartFile {
    fn len(&self) -> u64 {
        match self {
            PartFile::Local(f) => f.len(),
            PartFile::Object(o) => o.size,
        }
    }
}

/// What [`PartFile::get_read`] returns.
pub enum PartRead {
    /// A local file from an offset.
    Local(<std::fs::File as ChunkReader>::T),
    /// Bytes fetched from an object.
    Object(bytes::buf::Reader<Bytes>),
}

impl std::io::Read for PartRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            PartRead::Local(r) => r.read(buf),
            PartRead::Object(r) => r.read(buf),
        }
    }
}

impl ChunkReader for PartFile {
    type T = PartRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<PartRead> {
        match self {
            PartFile::Local(f) => Ok(PartRead::Local(f.get_read(start)?)),
            PartFile::Object(o) => Ok(PartRead::Object(o.range(start, o.size)?.reader())),
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            PartFile::Local(f) => f.get_bytes(start, length),
            PartFile::Object(o) => o.range(start, start + length as u64),
        }
    }
}
