//! Data Lab's SPARCL API, as the unmodified `sparclclient` (1.3.1) calls it, under
//! `/sparcl/api/` (`SparclClient(url="http://HOST/sparcl")`):
//!
//! - `announcement/`, `version/` (14.x), `datafields/` (every field of every dataset);
//! - `get_token/`, `renew_token/`, `auth_status/`: Meridian accounts behind the client's
//!   JWT (the JWT carries a Meridian token, which is what is checked);
//! - `find/` (constraints, outfields, sort, limit, count) as JSON;
//! - `spectras/` (retrieve) as a streamed Python pickle of numpy arrays (or JSON);
//! - `missing/` and `missing_specids/`.
//!
//! Errors are the JSON bodies the client maps to its exceptions (`errorCode` BADQUERY,
//! UNKFIELD, BADCONST, NODRACCESS, ...), rendered in [`crate::error`].

use std::collections::HashSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use meridian_services::accounts::{Identity, Scopes};
use meridian_spectra::pickle::{Encoder, Value as Pv};
use meridian_spectra::store::{
    self, Constraint, Dataset, FIELDS, Given, Storage, Value as Cv, compare,
};
use serde_json::{Value as J, json};

use crate::AppState;
use crate::auth::ClientAddr;
use crate::error::{Error, Sparcl};

type Result<T> = std::result::Result<T, Sparcl>;

/// The most values one constraint may list (a retrieve by specid sends up to 24,000).
const MAX_VALUES: usize = 100_000;
/// The most constraints one find may give.
const MAX_CONSTRAINTS: usize = 64;
/// The most ids one `missing` call may check.
const MAX_MISSING: usize = 1_000_000;
/// The most spectra one retrieve may ask for as JSON (a convenience for curl users; the
/// client's pickles are streamed).
const MAX_JSON_RETRIEVE: usize = 500;

/// The API version announced: the client accepts 14.x.
const VERSION: &str = "14.2";

fn bad(code: &'static str, message: impl Into<String>) -> Sparcl {
    Sparcl(Error::Sparcl {
        code,
        message: message.into(),
    })
}

fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `units=False` turns units off.
fn units_wanted(pairs: &[(String, String)]) -> bool {
    !param(pairs, "units").is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The client's JWT around a Meridian token: HS256 header (the client decodes without
/// checking the signature), claims `sub`, `exp` (unix seconds) and `mtk` (the Meridian
/// token, which is what the service checks on every request).
fn jwt(user: &str, token: &str, expires_ms: i64) -> String {
    use sha2::Digest;
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64(json!({"sub": user, "exp": expires_ms / 1000, "mtk": token})
        .to_string()
        .as_bytes());
    let sig = b64(&sha2::Sha256::digest(
        format!("{head}.{claims}.{token}").as_bytes(),
    ));
    format!("{head}.{claims}.{sig}")
}

/// The Meridian token inside a request's `Authorization` (a raw JWT as sparclclient sends
/// it, or `Bearer TOKEN`).
fn token_in(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(t) = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_string());
    }
    let claims = v.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let claims: J = serde_json::from_slice(&bytes).ok()?;
    claims.get("mtk")?.as_str().map(str::to_string)
}

/// Who calls: `None` for anonymous callers; a token that is not (or no longer) valid is
/// refused.
fn caller(state: &AppState, headers: &HeaderMap) -> Result<Option<Identity>> {
    let Some(token) = token_in(headers) else {
        if headers.contains_key(header::AUTHORIZATION) {
            return Err(Sparcl(Error::Services(
                meridian_services::Error::Unauthorized(
                    "the Authorization header holds no Meridian token; log in again".into(),
                ),
            )));
        }
        return Ok(None);
    };
    state
        .accounts
        .authenticate(&token)
        .map_err(|e| Sparcl(e.into()))
}

fn datasets_for(
    state: &AppState,
    who: Option<&Identity>,
    asked: Option<Vec<String>>,
) -> Result<Vec<Arc<Dataset>>> {
    let mine = super::readable(state, who).map_err(Sparcl)?;
    let Some(mut asked) = asked else {
        return Ok(mine);
    };
    let mut once = HashSet::new();
    asked.retain(|n| once.insert(n.clone()));
    let mut out = Vec::new();
    let mut denied = Vec::new();
    for name in &asked {
        match mine.iter().find(|d| d.name() == name) {
            Some(d) => out.push(d.clone()),
            None if state.spectra.library.dataset(name).is_some() => denied.push(name.clone()),
            None => {
                return Err(bad(
                    "BADQUERY",
                    format!(
                        "unknown data release '{name}'; the data releases are: {}",
                        state
                            .spectra
                            .library
                            .datasets()
                            .iter()
                            .map(|d| d.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    if !denied.is_empty() {
        let uname = who.map_or("ANONYMOUS".to_string(), |i| i.user.clone());
        let my: Vec<&str> = mine.iter().map(|d| d.name()).collect();
        return Err(bad(
            "NODRACCESS",
            format!(
                "uname='{uname}' is declined access to datasets={denied:?}; \
                 drs_requested={asked:?} my_auth={my:?}"
            ),
        ));
    }
    Ok(out)
}

fn list_param(pairs: &[(String, String)], name: &str) -> Option<Vec<String>> {
    param(pairs, name).map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// `GET announcement/`.
pub async fn announcement() -> Response {
    Json(json!({"announcement": ""})).into_response()
}

/// `GET version/`: a number the client parses as a float.
pub async fn version() -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], VERSION).into_response()
}

/// `GET datafields/`: every field of every dataset, as the client validates them (the same
/// names on the wire and in science).
pub async fn datafields(State(state): State<AppState>) -> Response {
    let mut rows = Vec::new();
    for d in state.spectra.library.datasets() {
        for f in FIELDS {
            rows.push(json!({
                "data_release": d.name(),
                "origdp": f.name,
                "newdp": f.name,
                "storage": f.storage.code(),
                "default": f.default,
                "all": f.all,
            }));
        }
    }
    Json(J::Array(rows)).into_response()
}

fn body_json(body: &Bytes) -> Result<J> {
    serde_json::from_slice(body)
        .map_err(|e| bad("BADQUERY", format!("the request body is not JSON: {e}")))
}

/// `POST get_token/` `{"email", "password"}`: a JWT and a refresh token.
pub async fn get_token(
    State(state): State<AppState>,
    ClientAddr(from): ClientAddr,
    body: Bytes,
) -> Result<Response> {
    let b = body_json(&body)?;
    let email = b.get("email").and_then(J::as_str).unwrap_or("").to_string();
    let password = b
        .get("password")
        .and_then(J::as_str)
        .unwrap_or("")
        .to_string();
    let accounts = state.accounts.clone();
    let issued = tokio::task::spawn_blocking(move || {
        // Meridian users log in by name; their e-mail address works too.
        let name = match accounts.user(&email)? {
            Some(u) => u.name,
            None => accounts
                .users()?
                .into_iter()
                .find(|u| u.email.as_deref() == Some(email.as_str()))
                .map_or(email, |u| u.name),
        };
        let access = accounts.login(&name, &password, from)?;
        // The refresh token carries no scope: it is good for renew_token and nothing else.
        let refresh = accounts.issue_for(
            &name,
            Scopes::of(&[]),
            std::time::Duration::from_secs(30 * 86_400),
        )?;
        Ok::<_, meridian_services::Error>((name, access, refresh))
    })
    .await
    .map_err(|e| Sparcl(Error::Internal(format!("login task failed: {e}"))))?
    .map_err(|e| Sparcl(e.into()))?;
    let (name, access, refresh) = issued;
    tracing::info!(user = name, "sparcl login");
    Ok(Json(json!({
        "access": jwt(&name, &access.token, access.expires_ms),
        "refresh": refresh.token,
    }))
    .into_response())
}

/// `POST renew_token/` `{"refresh_token"}`: a new JWT.
pub async fn renew_token(State(state): State<AppState>, body: Bytes) -> Result<Response> {
    let b = body_json(&body)?;
    let refresh = b
        .get("refresh_token")
        .and_then(J::as_str)
        .unwrap_or("")
        .to_string();
    let id = state
        .accounts
        .authenticate(&refresh)
        .map_err(|e| Sparcl(e.into()))?
        .filter(|id| {
            meridian_services::accounts::Scope::ALL
                .iter()
                .all(|s| !id.scopes.has(*s))
        })
        .ok_or_else(|| {
            Sparcl(Error::Services(meridian_services::Error::Unauthorized(
                "not a valid refresh token (get_token gives one)".into(),
            )))
        })?;
    let access = state
        .accounts
        .issue_for(
            &id.user,
            Scopes::user(),
            std::time::Duration::from_secs(86_400),
        )
        .map_err(|e| Sparcl(e.into()))?;
    Ok(Json(json!({"access": jwt(&id.user, &access.token, access.expires_ms)})).into_response())
}

/// `GET auth_status/`.
pub async fn auth_status(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let who = caller(&state, &headers)?;
    let mine = super::readable(&state, who.as_ref()).map_err(Sparcl)?;
    let public: Vec<&str> = state
        .spectra
        .library
        .datasets()
        .iter()
        .filter(|d| d.manifest().access.public)
        .map(|d| d.name())
        .collect();
    let private: Vec<&str> = mine
        .iter()
        .filter(|d| !d.manifest().access.public)
        .map(|d| d.name())
        .collect();
    let user = who.as_ref().map_or("Anonymous".to_string(), |i| {
        state
            .accounts
            .user(&i.user)
            .ok()
            .flatten()
            .and_then(|u| u.email)
            .unwrap_or_else(|| i.user.clone())
    });
    Ok(Json(json!({
        "Loggedin_User": user,
        "All_Public_Datasets": public,
        "Authorized_Private_Datasets": private,
    }))
    .into_response())
}

fn units_of(datasets: &[Arc<Dataset>]) -> J {
    let mut m = serde_json::Map::new();
    for d in datasets {
        let u: serde_json::Map<String, J> = FIELDS
            .iter()
            .map(|f| {
                let unit = match f.name {
                    "wavelength" | "wavemin" | "wavemax" => Some("AA"),
                    _ if f.unit.is_empty() => None,
                    _ => Some(f.unit),
                };
                (
                    f.name.to_string(),
                    unit.map_or(J::Null, |u| J::String(u.into())),
                )
            })
            .collect();
        m.insert(d.name().to_string(), J::Object(u));
    }
    J::Object(m)
}

fn header_json(info: String, warnings: Vec<String>, units: Option<J>) -> J {
    let mut h = json!({"status": {"success": true, "info": [info], "warnings": warnings}});
    if let Some(u) = units {
        h["UNITS"] = u;
    }
    h
}

fn given_of(v: &J) -> Option<Given> {
    match v {
        J::Number(n) => n
            .as_i64()
            .map(Given::Int)
            .or_else(|| n.as_f64().map(Given::Num)),
        J::String(s) => Some(Given::Str(s.clone())),
        J::Bool(b) => Some(Given::Int(*b as i64)),
        _ => None,
    }
}

fn cv_json(v: Cv) -> J {
    match v {
        Cv::Null => J::Null,
        Cv::Int(i) => J::from(i),
        Cv::Float(x) if x.is_finite() => J::from(x),
        Cv::Float(_) => J::Null,
        Cv::Str(s) => J::String(s.to_string()),
    }
}

/// `POST find/?limit=&sort=&count=y&units=False`, body `{"outfields", "search"}`.
pub async fn find(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response> {
    let pairs = query_pairs(&q);
    let who = caller(&state, &headers)?;
    let b = body_json(&body)?;
    if !b.is_object() {
        return Err(bad(
            "BADQUERY",
            "the request body must be a JSON object {\"outfields\": [...], \"search\": [...]}",
        ));
    }
    let outfields: Vec<String> = match b.get("outfields") {
        None | Some(J::Null) => vec!["sparcl_id".into()],
        Some(J::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("BADQUERY", "outfields must be a list of field names"))
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad("BADQUERY", "outfields must be a list of field names")),
    };
    for f in &outfields {
        match store::field(f) {
            None => {
                return Err(bad("UNKFIELD", format!("unknown field '{f}' in outfields")));
            }
            Some(d) if d.storage == Storage::Spectrum => {
                return Err(bad(
                    "UNKFIELD",
                    format!("'{f}' is a spectrum array: find returns core fields; use retrieve"),
                ));
            }
            Some(_) => {}
        }
    }
    let mut constraints = Vec::new();
    let mut asked_drs = None;
    match b.get("search") {
        None | Some(J::Null) => {}
        Some(J::Array(items)) => {
            if items.len() > MAX_CONSTRAINTS {
                return Err(bad(
                    "BADCONST",
                    format!("{} constraints; at most {MAX_CONSTRAINTS}", items.len()),
                ));
            }
            for item in items {
                let parts = item.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                    bad(
                        "BADCONST",
                        format!("constraint {item} is not [field, value, ...]"),
                    )
                })?;
                let name = parts[0].as_str().ok_or_else(|| {
                    bad(
                        "BADCONST",
                        format!("constraint {item} does not start with a field name"),
                    )
                })?;
                let def = store::field(name)
                    .ok_or_else(|| bad("UNKFIELD", format!("unknown field '{name}' in search")))?;
                if def.constrain == store::Constrain::No {
                    return Err(bad("BADCONST", format!("'{name}' cannot be constrained")));
                }
                if parts.len() < 2 {
                    return Err(bad("BADCONST", format!("'{name}' is given no value")));
                }
                if parts.len() - 1 > MAX_VALUES {
                    return Err(bad(
                        "BADCONST",
                        format!(
                            "'{name}' is given {} values; at most {MAX_VALUES}",
                            parts.len() - 1
                        ),
                    ));
                }
                // Each value once: a repeated value selects nothing more.
                let mut values: Vec<Given> = Vec::with_capacity(parts.len() - 1);
                let mut seen = HashSet::new();
                for v in &parts[1..] {
                    let g = given_of(v).filter(|_| !v.is_boolean()).ok_or_else(|| {
                        bad(
                            "BADCONST",
                            format!("value {v} of '{name}' is not a number or text"),
                        )
                    })?;
                    if def.constrain == store::Constrain::Range || seen.insert(v.to_string()) {
                        values.push(g);
                    }
                }
                if def.constrain == store::Constrain::Range && values.len() != 2 {
                    return Err(bad(
                        "BADCONST",
                        format!(
                            "'{name}' takes a range [min, max], got {} values",
                            values.len()
                        ),
                    ));
                }
                if name == "data_release" {
                    asked_drs = Some(
                        values
                            .iter()
                            .map(|g| match g {
                                Given::Str(s) => s.clone(),
                                Given::Int(i) => i.to_string(),
                                Given::Num(x) => x.to_string(),
                            })
                            .collect(),
                    );
                }
                constraints.push(Constraint {
                    field: name.to_string(),
                    values,
                });
            }
        }
        Some(_) => return Err(bad("BADCONST", "search must be a list of constraints")),
    }
    let limit = match param(&pairs, "limit") {
        None => 500,
        Some("None") | Some("none") | Some("") => state.spectra.max_find,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad("BADQUERY", format!("limit '{v}' is not a whole number")))?,
    }
    .min(state.spectra.max_find);
    let sort: Vec<(String, bool)> = param(&pairs, "sort")
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match s.strip_prefix('-') {
                    Some(f) => (f.to_string(), true),
                    None => (s.to_string(), false),
                })
                .collect()
        })
        .unwrap_or_default();
    for (f, _) in &sort {
        if store::field(f).is_none_or(|d| d.storage == Storage::Spectrum) {
            return Err(bad("UNKFIELD", format!("cannot sort on '{f}'")));
        }
    }
    let datasets = datasets_for(&state, who.as_ref(), asked_drs)?;
    let count_only = param(&pairs, "count").is_some_and(|v| v == "y" || v == "yes");
    let units = units_wanted(&pairs).then(|| units_of(&datasets));
    // The answer is written as it is made: a record's JSON value never outlives its line.
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let mut hits: Vec<(usize, u32)> = Vec::new();
        for (di, d) in datasets.iter().enumerate() {
            let rows = store::select(d, &constraints).map_err(|e| match e {
                meridian_spectra::Error::UnknownField(m) => bad("UNKFIELD", m),
                e => bad("BADCONST", e.to_string()),
            })?;
            hits.extend(rows.into_iter().map(|r| (di, r)));
        }
        let total = hits.len();
        let mut out = Vec::new();
        let write = |out: &mut Vec<u8>, v: &J| {
            serde_json::to_writer(out, v)
                .map_err(|e| Sparcl(Error::Internal(format!("writing JSON: {e}"))))
        };
        out.push(b'[');
        if count_only {
            write(
                &mut out,
                &header_json(format!("Successfully found {total} records"), vec![], units),
            )?;
            out.push(b',');
            write(&mut out, &json!({"count": total}))?;
            out.push(b']');
            return Ok(out);
        }
        if !sort.is_empty() {
            hits.sort_by(|a, b| {
                for (f, desc) in &sort {
                    let va = datasets[a.0].value(f, a.1).unwrap_or(Cv::Null);
                    let vb = datasets[b.0].value(f, b.1).unwrap_or(Cv::Null);
                    let o = compare(&va, &vb);
                    let o = if *desc { o.reverse() } else { o };
                    if o.is_ne() {
                        return o;
                    }
                }
                std::cmp::Ordering::Equal
            });
        }
        hits.truncate(limit);
        write(
            &mut out,
            &header_json(
                format!("Successfully found {} records", hits.len()),
                vec![],
                units,
            ),
        )?;
        for &(di, r) in &hits {
            let d = &datasets[di];
            let mut m = serde_json::Map::new();
            m.insert("_dr".into(), J::String(d.name().to_string()));
            for f in &outfields {
                m.insert(f.clone(), cv_json(d.value(f, r).unwrap_or(Cv::Null)));
            }
            out.push(b',');
            write(&mut out, &J::Object(m))?;
        }
        out.push(b']');
        Ok(out)
    })
    .await
    .map_err(|e| Sparcl(Error::Internal(format!("find task failed: {e}"))))??;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn ids_of(body: &Bytes) -> Result<Vec<J>> {
    match body_json(body)? {
        J::Array(a) => Ok(a),
        _ => Err(bad(
            "BADQUERY",
            "the request body must be a JSON list of ids",
        )),
    }
}

/// `POST spectras/?include=&format=pkl|json&units=False&dataset_list=`, body: sparcl_ids.
pub async fn spectras(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response> {
    let pairs = query_pairs(&q);
    let who = caller(&state, &headers)?;
    let ids = ids_of(&body)?;
    if ids.len() > state.spectra.max_retrieve {
        return Err(bad(
            "BADQUERY",
            format!(
                "{} ids asked for; one retrieve takes at most {}",
                ids.len(),
                state.spectra.max_retrieve
            ),
        ));
    }
    let include = include_fields(param(&pairs, "include").unwrap_or("DEFAULT")).map_err(Sparcl)?;
    let datasets = datasets_for(&state, who.as_ref(), list_param(&pairs, "dataset_list"))?;
    let refs: Vec<&Arc<Dataset>> = datasets.iter().collect();
    let mut found: Vec<(Arc<Dataset>, u32)> = Vec::with_capacity(ids.len());
    let mut seen = HashSet::new();
    let mut missing = 0usize;
    for id in &ids {
        let text = match id {
            J::String(s) => s.as_str(),
            _ => {
                missing += 1;
                continue;
            }
        };
        match state.spectra.library.locate(&refs, text) {
            Some((d, r)) => {
                if seen.insert((d.name().to_string(), r)) {
                    found.push(((*d).clone(), r));
                }
            }
            None => missing += 1,
        }
    }
    let drs: Vec<&str> = datasets.iter().map(|d| d.name()).collect();
    let warnings = if missing > 0 {
        // The client re-formats this exact sentence (its integers become %s).
        vec![format!(
            "Some UUIDs were not found. {missing} out of the {} requested uuids have no \
             records available in the SPARCL database associated with DataSets {}. Use \
             \"client.missing()\" to get a list of the {missing} unavailable uuids.",
            ids.len(),
            drs.join(",")
        )]
    } else {
        vec![]
    };
    let info = format!(
        "Successfully found {} records in dr_list={:?}",
        found.len(),
        drs
    );
    let units = units_wanted(&pairs).then(|| units_of(&datasets));
    if param(&pairs, "format") == Some("json") {
        if ids.len() > MAX_JSON_RETRIEVE {
            return Err(bad(
                "BADQUERY",
                format!(
                    "format=json answers at most {MAX_JSON_RETRIEVE} spectra; use format=pkl \
                     (as sparclclient does) for more"
                ),
            ));
        }
        let mut out = vec![header_json(info, warnings, units)];
        for (d, r) in &found {
            out.push(record_json(d, *r, &include));
        }
        return Ok(Json(J::Array(out)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let metrics = state.metrics.clone();
    tokio::task::spawn_blocking(move || {
        let sent = encode_retrieve(
            &info,
            &warnings,
            units.as_ref(),
            &found,
            &include,
            &mut |chunk| {
                metrics.add_bytes_out(chunk.len() as u64);
                tx.blocking_send(Ok(Bytes::from(chunk))).is_ok()
            },
        );
        if let Err(e) = sent {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        crate::result::body(rx),
    )
        .into_response())
}

/// Encodes a retrieve answer (`[header, record, ...]`) as a pickle, handing `send` chunks
/// of about 4 MiB as they are made; stops early (without error) when `send` returns false.
pub fn encode_retrieve(
    info: &str,
    warnings: &[String],
    units: Option<&J>,
    found: &[(Arc<Dataset>, u32)],
    include: &[&str],
    send: &mut dyn FnMut(Vec<u8>) -> bool,
) -> meridian_spectra::Result<()> {
    let mut enc = Encoder::new();
    enc.push(&header_pickle(info, warnings, units))?;
    for (d, r) in found {
        enc.push(&record_pickle(d, *r, include))?;
        if enc.buffer_len() >= 4 << 20 && !send(enc.take()) {
            return Ok(()); // the client went away
        }
    }
    send(enc.finish());
    Ok(())
}

/// The fields `include` names (SPARCL's `include`: names, `DEFAULT` or `ALL`), after
/// `sparcl_id` and `specid`.
pub fn include_fields(asked: &str) -> std::result::Result<Vec<&'static str>, Error> {
    let mut include: Vec<&'static str> = vec!["sparcl_id", "specid"];
    for name in asked.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let names: Vec<&'static str> = match name {
            "DEFAULT" | "None" => FIELDS
                .iter()
                .filter(|f| f.default)
                .map(|f| f.name)
                .collect(),
            "ALL" => FIELDS.iter().filter(|f| f.all).map(|f| f.name).collect(),
            n => vec![
                store::field(n)
                    .ok_or_else(|| Error::Sparcl {
                        code: "UNKFIELD",
                        message: format!("unknown field '{n}' in include"),
                    })?
                    .name,
            ],
        };
        for n in names {
            if !include.contains(&n) {
                include.push(n);
            }
        }
    }
    Ok(include)
}

fn record_json(d: &Dataset, r: u32, include: &[&str]) -> J {
    let mut m = serde_json::Map::new();
    m.insert("_dr".into(), J::String(d.name().to_string()));
    let a = d.arrays(r);
    for &f in include {
        let v = match f {
            "flux" => json!(a.flux),
            "ivar" => json!(a.ivar),
            "mask" => json!(a.mask),
            "wavelength" => json!(a.wavelength_aa),
            "model" => a.model.map_or(J::Null, |m| json!(m)),
            _ => cv_json(d.value(f, r).unwrap_or(Cv::Null)),
        };
        m.insert(f.to_string(), v);
    }
    J::Object(m)
}

fn cv_pickle(v: Cv<'_>) -> Pv<'_> {
    match v {
        Cv::Null => Pv::None,
        Cv::Int(i) => Pv::Int(i),
        Cv::Float(x) => Pv::Float(x),
        Cv::Str(s) => Pv::Str(s),
    }
}

fn record_pickle<'a>(d: &'a Dataset, r: u32, include: &[&'a str]) -> Pv<'a> {
    let a = d.arrays(r);
    let mut items = Vec::with_capacity(include.len() + 1);
    items.push(("_dr", Pv::Str(d.name())));
    for &f in include {
        let v = match f {
            "flux" => Pv::F32(a.flux),
            "ivar" => Pv::F32(a.ivar),
            "mask" => Pv::U32(a.mask),
            // Spectra of a dataset mostly share their grid: it is sent once.
            "wavelength" => Pv::SharedF64(a.wavelength_aa),
            "model" => a.model.map_or(Pv::None, Pv::F32),
            _ => cv_pickle(d.value(f, r).unwrap_or(Cv::Null)),
        };
        items.push((f, v));
    }
    Pv::Dict(items)
}

fn json_pickle(v: &J) -> Pv<'_> {
    match v {
        J::Null => Pv::None,
        J::Bool(b) => Pv::Bool(*b),
        J::Number(n) => n
            .as_i64()
            .map(Pv::Int)
            .unwrap_or_else(|| Pv::Float(n.as_f64().unwrap_or(f64::NAN))),
        J::String(s) => Pv::Str(s),
        J::Array(a) => Pv::List(a.iter().map(json_pickle).collect()),
        J::Object(m) => Pv::Dict(
            m.iter()
                .map(|(k, v)| (k.as_str(), json_pickle(v)))
                .collect(),
        ),
    }
}

fn header_pickle<'a>(info: &'a str, warnings: &'a [String], units: Option<&'a J>) -> Pv<'a> {
    let status = Pv::Dict(vec![
        ("success", Pv::Bool(true)),
        ("info", Pv::List(vec![Pv::Str(info)])),
        (
            "warnings",
            Pv::List(warnings.iter().map(|w| Pv::Str(w)).collect()),
        ),
    ]);
    let mut items = vec![("status", status)];
    if let Some(u) = units {
        items.push(("UNITS", json_pickle(u)));
    }
    Pv::Dict(items)
}

fn missing_among(
    state: &AppState,
    headers: &HeaderMap,
    q: &Option<String>,
    body: &Bytes,
    by_specid: bool,
) -> Result<Response> {
    let pairs = query_pairs(q);
    let who = caller(state, headers)?;
    let ids = ids_of(body)?;
    if ids.len() > MAX_MISSING {
        return Err(bad(
            "BADQUERY",
            format!("{} ids; one call checks at most {MAX_MISSING}", ids.len()),
        ));
    }
    let datasets = datasets_for(state, who.as_ref(), list_param(&pairs, "dataset_list"))?;
    let refs: Vec<&Arc<Dataset>> = datasets.iter().collect();
    let missing: Vec<J> = ids
        .into_iter()
        .filter(|id| {
            if by_specid {
                let n = match id {
                    J::Number(n) => n.as_i64(),
                    J::String(s) => s.trim().parse().ok(),
                    _ => None,
                };
                n.is_none_or(|n| datasets.iter().all(|d| d.rows_of_specid(n).is_empty()))
            } else {
                id.as_str()
                    .is_none_or(|s| state.spectra.library.locate(&refs, s).is_none())
            }
        })
        .collect();
    Ok(Json(J::Array(missing)).into_response())
}

/// `POST missing/?dataset_list=`: the sparcl_ids not in those datasets, as sent.
pub async fn missing(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response> {
    missing_among(&state, &headers, &q, &body, false)
}

/// `POST missing_specids/?dataset_list=`: the specids not in those datasets, as sent.
pub async fn missing_specids(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response> {
    missing_among(&state, &headers, &q, &body, true)
}

/// The SPARCL routes, each with and without its trailing slash. Request bodies (lists of
/// ids, constraints) are held to 16 MiB.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    let mut r = axum::Router::new();
    for (path, get_or_post) in [
        ("announcement", 0),
        ("version", 1),
        ("datafields", 2),
        ("auth_status", 3),
        ("get_token", 10),
        ("renew_token", 11),
        ("find", 12),
        ("spectras", 13),
        ("missing", 14),
        ("missing_specids", 15),
    ] {
        for p in [
            format!("/sparcl/api/{path}"),
            format!("/sparcl/api/{path}/"),
        ] {
            r = match get_or_post {
                0 => r.route(&p, get(announcement)),
                1 => r.route(&p, get(version)),
                2 => r.route(&p, get(datafields)),
                3 => r.route(&p, get(auth_status)),
                10 => r.route(&p, post(get_token)),
                11 => r.route(&p, post(renew_token)),
                12 => r.route(&p, post(find)),
                13 => r.route(&p, post(spectras)),
                14 => r.route(&p, post(missing)),
                _ => r.route(&p, post(missing_specids)),
            };
        }
    }
    r.layer(axum::extract::DefaultBodyLimit::max(16 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwt_carries_the_meridian_token_and_an_expiry() {
        let t = jwt("erin", "erin.1001.1001.$1$abc$def", 1_900_000_000_123);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: J = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["exp"], 1_900_000_000);
        assert_eq!(claims["sub"], "erin");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, t.parse().unwrap());
        assert_eq!(token_in(&h).as_deref(), Some("erin.1001.1001.$1$abc$def"));
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(token_in(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "not-a-jwt".parse().unwrap());
        assert_eq!(token_in(&h), None);
    }

    #[test]
    fn include_expands_default_and_all_and_refuses_unknown_fields() {
        let d = include_fields("DEFAULT").unwrap();
        assert_eq!(d[..2], ["sparcl_id", "specid"]);
        assert!(d.contains(&"flux") && d.contains(&"wavelength") && !d.contains(&"ivar"));
        let a = include_fields("ALL").unwrap();
        assert!(a.contains(&"ivar") && a.contains(&"redshift"));
        assert!(include_fields("flux,nope").is_err());
    }
}
