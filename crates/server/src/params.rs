//! DALI request parameters: names are case-insensitive, values case-sensitive, and a
//! request may come as a query string, a url-encoded form or a multipart form.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{Method, header};

use crate::error::{Error, Result};

/// The parameters of one request, in the order given.
#[derive(Debug, Default, Clone)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parses `application/x-www-form-urlencoded` text (a query string or a form body).
    pub fn parse_urlencoded(text: &[u8], into: &mut Params) {
        for (k, v) in form_urlencoded::parse(text) {
            into.pairs.push((k.into_owned(), v.into_owned()));
        }
    }

    /// Parameters from (name, value) pairs.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// Every (name, value) pair, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name` (case-insensitive), if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, required.
    pub fn required(&self, name: &str) -> Result<&str> {
        self.get(name)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| Error::Usage(format!("missing parameter {name}")))
    }

    /// Adds a pair.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.pairs.push((name.into(), value.into()));
    }
}

/// Parameters with the files of a multipart request (inline uploads).
#[derive(Debug, Default)]
pub struct DaliRequest {
    /// Every text parameter.
    pub params: Params,
    /// (part name, file name, content) of each file part.
    pub files: Vec<(String, Option<String>, Bytes)>,
}

impl<S: Send + Sync> FromRequest<S> for DaliRequest {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let mut out = DaliRequest::default();
        if let Some(q) = req.uri().query() {
            Params::parse_urlencoded(q.as_bytes(), &mut out.params);
        }
        if req.method() != Method::POST {
            return Ok(out);
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("multipart/form-data") {
            let mut mp = Multipart::from_request(req, state)
                .await
                .map_err(|e| Error::Usage(format!("multipart request: {e}")))?;
            while let Some(field) = mp
                .next_field()
                .await
                .map_err(|e| Error::Usage(format!("multipart request: {e}")))?
            {
                let name = field.name().unwrap_or_default().to_string();
                let file = field.file_name().map(str::to_string);
                let data = field
                    .bytes()
                    .await
                    .map_err(|e| Error::Usage(format!("multipart part '{name}': {e}")))?;
                match file {
                    Some(f) => out.files.push((name, Some(f), data)),
                    None => out
                        .params
                        .push(name, String::from_utf8_lossy(&data).into_owned()),
                }
            }
        } else {
            let body = Bytes::from_request(req, state)
                .await
                .map_err(|e| Error::Usage(format!("request body: {e}")))?;
            Params::parse_urlencoded(&body, &mut out.params);
        }
        Ok(out)
    }
}

/// The query string's fields, first value of each key, decoded leniently as a form: Data
/// Lab's clients build query strings by hand and sometimes repeat keys.
pub fn query_fields(uri: &axum::http::Uri) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}
