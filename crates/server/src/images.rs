//! The FITS files of the registered image collections, as ObsCore's `access_url` names
//! them: `GET /images/file?ID=<obs_publisher_did>`. Only registered datasets are served,
//! found by their identifier; no path ever comes from the request.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use meridian_images::collection::Collection;

use crate::AppState;
use crate::error::{Error, Result};
use crate::params::DaliRequest;

/// The registered datasets by publisher DID.
#[derive(Debug, Default)]
pub struct ImageIndex {
    by_did: HashMap<String, PathBuf>,
}

impl ImageIndex {
    /// The datasets of `collections`, with DIDs under `authority`.
    pub fn new(collections: &[Collection], authority: &str) -> Self {
        let by_did = collections
            .iter()
            .flat_map(|c| {
                c.datasets.iter().map(|d| {
                    (
                        meridian_images::obscore::publisher_did(authority, &c.name, &d.id),
                        d.path.clone(),
                    )
                })
            })
            .collect();
        Self { by_did }
    }
}

/// `GET /images/file?ID=...`: the file that holds the dataset, as it is registered.
pub async fn file(State(state): State<AppState>, req: DaliRequest) -> Result<Response> {
    let id = req.params.required("ID")?;
    let path = state
        .images
        .by_did
        .get(id)
        .ok_or_else(|| Error::NotFound(format!("no image dataset '{id}'")))?;
    let fh = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::Internal(format!("image dataset '{id}' cannot be read: {e}")))?;
    let len = fh
        .metadata()
        .await
        .map_err(|e| Error::Internal(format!("image dataset '{id}' cannot be read: {e}")))?
        .len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().replace('"', ""))
        .unwrap_or_default();
    let kind = if name.ends_with(".gz") {
        "application/gzip"
    } else {
        "image/fits"
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(fh)),
    )
        .into_response())
}
