//! Where writer schemas come from: Rubin's published schema tree (the layout of the
//! `lsst-alert-packet` package, `<major>/<minor>/lsst.v<major>_<minor>.*.avsc`, one named
//! record per file), a Confluent schema registry (`GET /schemas/ids/{id}`, as Rubin's
//! alert stream uses), or one file per id. Every schema is brought to the form
//! `arrow-avro` reads: each referenced record defined inline at its first use, and full
//! names (`lsst.v11_1.diaSource`) split into `name` and `namespace`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::{Error, Result};

fn bad(what: impl std::fmt::Display, why: impl std::fmt::Display) -> Error {
    Error::Avro(format!("{what}: {why}"))
}

/// Splits dotted full names of named types into `name` and `namespace` (the form
/// `arrow-avro` resolves references in), everywhere in `schema`.
pub fn normalize(schema: &str) -> Result<String> {
    let mut v: Value =
        serde_json::from_str(schema).map_err(|e| bad("writer schema", format!("not JSON: {e}")))?;
    split_names(&mut v);
    Ok(v.to_string())
}

fn is_named(o: &Map<String, Value>) -> bool {
    matches!(
        o.get("type").and_then(Value::as_str),
        Some("record" | "enum" | "fixed" | "error")
    )
}

fn split_names(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if is_named(o)
                && let Some(full) = o.get("name").and_then(Value::as_str).map(str::to_string)
                && let Some((ns, name)) = full.rsplit_once('.')
            {
                o.insert("name".into(), Value::String(name.into()));
                o.insert("namespace".into(), Value::String(ns.into()));
            }
            for (_, child) in o.iter_mut() {
                split_names(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(split_names),
        _ => {}
    }
}

/// The registry id Rubin gives schema `lsst.v<major>_<minor>`: the major number then the
/// minor one in two digits (v7_4 is 704, v11_1 is 1101).
pub fn lsst_schema_id(major: u32, minor: u32) -> u32 {
    major * 100 + minor
}

/// Every alert schema under `root` laid out as Rubin publishes them
/// (`<major>/<minor>/lsst.v<major>_<minor>.alert.avsc` beside the records it names), each
/// resolved into one document and keyed by its registry id, in id order.
pub fn lsst_schema_tree(root: &Path) -> Result<Vec<(u32, String)>> {
    let read_dir = |p: &Path| std::fs::read_dir(p).map_err(|e| bad(p.display(), e));
    let mut out = Vec::new();
    for major in read_dir(root)? {
        let major = major.map_err(|e| bad(root.display(), e))?.path();
        let Some(m) = number(&major) else { continue };
        if !major.is_dir() {
            continue;
        }
        for minor in read_dir(&major)? {
            let minor = minor.map_err(|e| bad(major.display(), e))?.path();
            let Some(n) = number(&minor) else { continue };
            let top = minor.join(format!("lsst.v{m}_{n}.alert.avsc"));
            if top.is_file() {
                out.push((lsst_schema_id(m, n), resolve_dir(&minor, &top)?));
            }
        }
    }
    if out.is_empty() {
        return Err(bad(
            root.display(),
            "no alert schema here (expected <major>/<minor>/lsst.v<major>_<minor>.alert.avsc, \
             the layout of lsst-alert-packet's schema directory)",
        ));
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

fn number(p: &Path) -> Option<u32> {
    p.file_name()?.to_str()?.parse().ok()
}

/// Schema `top` with the named records of the other `.avsc` files in `dir` defined inline
/// at their first use.
fn resolve_dir(dir: &Path, top: &Path) -> Result<String> {
    let mut named: HashMap<String, Value> = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| bad(dir.display(), e))? {
        let p = entry.map_err(|e| bad(dir.display(), e))?.path();
        if p.extension().is_some_and(|e| e == "avsc") && p != top {
            let v = read_json(&p)?;
            if let Some(full) = full_name(&v, None) {
                named.insert(full, v);
            }
        }
    }
    let mut root = read_json(top)?;
    let mut defined = HashSet::new();
    inline(&mut root, None, &named, &mut defined);
    split_names(&mut root);
    Ok(root.to_string())
}

fn read_json(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).map_err(|e| bad(p.display(), e))?;
    serde_json::from_str(&text).map_err(|e| bad(p.display(), format!("not JSON: {e}")))
}

/// The full name of named type `v` (its namespace, else the enclosing one, then its name).
fn full_name(v: &Value, enclosing: Option<&str>) -> Option<String> {
    let name = v.get("name")?.as_str()?;
    if name.contains('.') {
        return Some(name.to_string());
    }
    match v.get("namespace").and_then(Value::as_str).or(enclosing) {
        Some(ns) if !ns.is_empty() => Some(format!("{ns}.{name}")),
        _ => Some(name.to_string()),
    }
}

/// Replaces the first reference to each record of `named` by its definition (later ones
/// stay references, as Avro requires), recursively.
fn inline(
    v: &mut Value,
    ns: Option<&str>,
    named: &HashMap<String, Value>,
    defined: &mut HashSet<String>,
) {
    match v {
        Value::String(s) => {
            let full = if s.contains('.') {
                s.clone()
            } else {
                ns.map_or_else(|| s.clone(), |n| format!("{n}.{s}"))
            };
            if let Some(def) = named.get(&full)
                && defined.insert(full.clone())
            {
                let mut def = def.clone();
                inline(&mut def, None, named, defined);
                *v = def;
            }
        }
        Value::Object(o) => {
            // Records, enums and fixed types have names; fields, arrays and maps do not.
            let own = if is_named(o) {
                full_name(&Value::Object(o.clone()), ns)
            } else {
                None
            };
            if let Some(full) = &own {
                defined.insert(full.clone());
            }
            let inner = own
                .as_deref()
                .and_then(|f| f.rsplit_once('.').map(|(n, _)| n.to_string()))
                .or_else(|| ns.map(str::to_string));
            for key in ["type", "items", "values", "fields"] {
                if let Some(child) = o.get_mut(key) {
                    inline(child, inner.as_deref(), named, defined);
                }
            }
        }
        Value::Array(a) => {
            for child in a {
                inline(child, ns, named, defined);
            }
        }
        _ => {}
    }
}

/// How long an id the registry did not serve is not asked for again.
const RETRY_UNKNOWN: Duration = Duration::from_secs(60);

/// A Confluent schema registry (`GET {url}/schemas/ids/{id}`, answering
/// `{"schema": "..."}`), asked once per id.
#[derive(Debug)]
pub struct Registry {
    url: String,
    agent: ureq::Agent,
    /// Ids it could not serve, and when it was asked.
    refused: HashMap<u32, (Instant, String)>,
}

impl Registry {
    /// A registry at `url` (`http(s)://host:port[/prefix]`).
    pub fn new(url: &str) -> Result<Self> {
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|e| bad(format!("schema registry {url}"), e))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(bad(
                format!("schema registry {url}"),
                "not an http(s) URL with a host",
            ));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            agent,
            refused: HashMap::new(),
        })
    }

    /// The writer schema with registry id `id`, normalized.
    pub fn fetch(&mut self, id: u32) -> Result<String> {
        if let Some((when, why)) = self.refused.get(&id)
            && when.elapsed() < RETRY_UNKNOWN
        {
            return Err(Error::Avro(why.clone()));
        }
        let result = self.ask(id);
        match &result {
            Err(e) => {
                self.refused.insert(id, (Instant::now(), e.to_string()));
            }
            Ok(_) => {
                self.refused.remove(&id);
            }
        }
        result
    }

    fn ask(&self, id: u32) -> Result<String> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        let what = format!("schema id {id} from the registry ({url})");
        let mut resp = self.agent.get(&url).call().map_err(|e| bad(&what, e))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| bad(&what, e))?;
        if !status.is_success() {
            let detail: String = body.chars().take(200).collect();
            return Err(bad(&what, format!("HTTP {status}: {detail}")));
        }
        let doc: Map<String, Value> =
            serde_json::from_str(&body).map_err(|e| bad(&what, format!("not JSON: {e}")))?;
        let schema = doc
            .get("schema")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&what, "the answer has no \"schema\" string"))?;
        normalize(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_inlined_once_and_names_split() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("7").join("4");
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(
            v.join("lsst.v7_4.alert.avsc"),
            r#"{"namespace":"lsst.v7_4","type":"record","name":"alert","fields":[
                {"name":"alertId","type":"long"},
                {"name":"diaSource","type":"lsst.v7_4.diaSource"},
                {"name":"prv","type":["null",{"type":"array","items":"lsst.v7_4.diaSource"}]}]}"#,
        )
        .unwrap();
        std::fs::write(
            v.join("lsst.v7_4.diaSource.avsc"),
            r#"{"namespace":"lsst.v7_4","type":"record","name":"diaSource",
                "fields":[{"name":"ra","type":"double"}]}"#,
        )
        .unwrap();
        let got = lsst_schema_tree(dir.path()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 704);
        let doc: Value = serde_json::from_str(&got[0].1).unwrap();
        assert_eq!(doc["fields"][1]["type"]["name"], "diaSource");
        assert_eq!(doc["fields"][1]["type"]["fields"][0]["name"], "ra");
        assert_eq!(doc["fields"][2]["type"][1]["items"], "lsst.v7_4.diaSource");
        assert!(lsst_schema_tree(&v).is_err());

        let n = normalize(r#"{"type":"record","name":"a.b.c","fields":[]}"#).unwrap();
        let doc: Value = serde_json::from_str(&n).unwrap();
        assert_eq!(
            (doc["name"].as_str(), doc["namespace"].as_str()),
            (Some("c"), Some("a.b"))
        );
        assert!(Registry::new("ftp://x").is_err());
    }
}
