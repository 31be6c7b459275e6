//! `/lightcurve?ID=...`: the time series of one object, in any TAP output format
//! (`RESPONSEFORMAT`), ordered by time.
//!
//! | `SURVEY` | tables | object id | rows |
//! |---|---|---|---|
//! | `rubin` | `dia_source`, `dia_forced_source` (alerts) | `diaObjectId` | detections, forced photometry |
//! | `synthetic` | `source`, `forced_source` (`meridian generate`) | `objectId` | detections, forced photometry |
//! | `ztf` | `ztf_candidate`, `ztf_upper_limit` (alerts) | `objectId` (ZTF name) | detections, upper limits |
//!
//! Without `SURVEY`, a ZTF name means `ztf`, a number `rubin` when the alert tables are
//! served, else `synthetic`. `PREFIX` names tables ingested under a prefix (`PREFIX=demo_`:
//! `demo_source`, `demo_forced_source`: the demo serves the first); a synthetic survey
//! whose `source` is not served but `demo_source` is takes `demo_` by itself. Rubin and synthetic rows carry `kind` (`detection` or
//! `forced`), `measurement_id`, `mjd` (TAI), `band`, `psf_flux` and `psf_flux_err` (nJy),
//! `ra`, `dec`; ZTF rows carry `kind` (`detection` or `upper_limit`), `measurement_id`,
//! `mjd` (from `jd`), `band` (g, r, i from `fid`), `mag` and `mag_err` (`magpsf`,
//! `sigmapsf`) or `limiting_mag` (`diffmaglim`), `ra`, `dec`. The same rows come from
//! TAP with `SELECT ... FROM dia_source WHERE diaObjectId = ...` (and the other tables).

use axum::extract::State;
use axum::response::Response;

use crate::AppState;
use crate::error::{Error, Result};
use crate::params::{DaliRequest, Params};
use crate::tap::{QuerySpec, run_streaming};

/// The tables and columns of one survey's light curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Survey {
    Rubin,
    Synthetic,
    Ztf,
}

impl Survey {
    fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rubin" | "lsst" => Ok(Self::Rubin),
            "synthetic" => Ok(Self::Synthetic),
            "ztf" => Ok(Self::Ztf),
            other => Err(Error::Usage(format!(
                "SURVEY '{other}' is not known; use rubin, ztf or synthetic"
            ))),
        }
    }

    /// (measurements, second table) with their id columns.
    fn tables(self) -> [(&'static str, &'static str); 2] {
        match self {
            Self::Rubin => [
                ("dia_source", "diaSourceId"),
                ("dia_forced_source", "diaForcedSourceId"),
            ],
            Self::Synthetic => [("source", "sourceId"), ("forced_source", "forcedSourceId")],
            Self::Ztf => [
                ("ztf_candidate", "candid"),
                ("ztf_upper_limit", "upperLimitId"),
            ],
        }
    }
}

/// Whether `id` is a ZTF object name (`ZTF` then letters and digits).
fn ztf_name(id: &str) -> bool {
    id.len() <= 32 && id.starts_with("ZTF") && id.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Whether `prefix` may start a table name (letters, digits, underscores).
fn table_prefix(prefix: &str) -> Result<&str> {
    if prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(prefix)
    } else {
        Err(Error::Usage(format!(
            "PREFIX '{prefix}' is not the start of a table name (letters, digits, _)"
        )))
    }
}

/// The SQL of `survey`'s light curve of `id`, over the tables (their names after
/// `prefix`) `served` says exist.
fn query(survey: Survey, id: &str, prefix: &str, served: impl Fn(&str) -> bool) -> Result<String> {
    let [(first, first_id), (second, second_id)] = survey.tables();
    let (first, second) = (format!("{prefix}{first}"), format!("{prefix}{second}"));
    let (first, second) = (first.as_str(), second.as_str());
    if !served(first) {
        return Err(Error::NotFound(format!(
            "no light curves of {survey:?} objects here: table {first} is not served"
        )));
    }
    let mut parts = Vec::new();
    match survey {
        Survey::Rubin | Survey::Synthetic => {
            let object = if survey == Survey::Rubin {
                "diaObjectId"
            } else {
                "objectId"
            };
            let id: i64 = id
                .parse()
                .map_err(|_| Error::Usage(format!("ID '{id}' is not a {object} (an integer)")))?;
            for (table, key, kind) in [
                (first, first_id, "detection"),
                (second, second_id, "forced"),
            ] {
                if served(table) {
                    parts.push(format!(
                        "SELECT '{kind}' AS kind, \"{key}\" AS measurement_id, \
                         \"midpointMjdTai\" AS mjd, band, \"psfFlux\" AS psf_flux, \
                         \"psfFluxErr\" AS psf_flux_err, ra, dec FROM {table} \
                         WHERE \"{object}\" = {id}"
                    ));
                }
            }
        }
        Survey::Ztf => {
            if !ztf_name(id) {
                return Err(Error::Usage(format!(
                    "ID '{id}' is not a ZTF object name (ZTF then letters and digits)"
                )));
            }
            let band = "CASE fid WHEN 1 THEN 'g' WHEN 2 THEN 'r' WHEN 3 THEN 'i' END";
            parts.push(format!(
                "SELECT 'detection' AS kind, \"{first_id}\" AS measurement_id, \
                 jd - 2400000.5 AS mjd, {band} AS band, magpsf AS mag, sigmapsf AS mag_err, \
                 CAST(NULL AS DOUBLE) AS limiting_mag, ra, dec FROM {first} \
                 WHERE \"objectId\" = '{id}'"
            ));
            if served(second) {
                parts.push(format!(
                    "SELECT 'upper_limit' AS kind, \"{second_id}\" AS measurement_id, \
                     jd - 2400000.5 AS mjd, {band} AS band, CAST(NULL AS DOUBLE) AS mag, \
                     CAST(NULL AS DOUBLE) AS mag_err, diffmaglim AS limiting_mag, ra, dec \
                     FROM {second} WHERE \"objectId\" = '{id}'"
                ));
            }
        }
    }
    Ok(format!(
        "{} ORDER BY mjd, kind, measurement_id",
        parts.join(" UNION ALL ")
    ))
}

/// `GET /lightcurve`: `ID` (required), `SURVEY`, `PREFIX`, and TAP's `RESPONSEFORMAT` and
/// `MAXREC`.
pub async fn lightcurve(
    State(state): State<AppState>,
    axum::extract::Extension(caller): axum::extract::Extension<crate::auth::Caller>,
    req: DaliRequest,
) -> Result<Response> {
    caller.allows(meridian_services::accounts::Scope::ReadCatalogs)?;
    let id = req.params.required("ID")?.trim().to_string();
    let served = |t: &str| state.engine.table(t).is_some();
    let survey = match req.params.get("SURVEY") {
        Some(s) => Survey::parse(s)?,
        None if ztf_name(&id) => Survey::Ztf,
        None if served("dia_source") => Survey::Rubin,
        None => Survey::Synthetic,
    };
    let prefix = match req.params.get("PREFIX") {
        Some(p) => table_prefix(p.trim())?,
        None if survey == Survey::Synthetic && !served("source") && served("demo_source") => {
            "demo_"
        }
        None => "",
    };
    let sql = query(survey, &id, prefix, served)?;
    let mut params = Params::from_pairs(vec![("LANG".into(), "SQL".into()), ("QUERY".into(), sql)]);
    for name in ["RESPONSEFORMAT", "FORMAT", "MAXREC"] {
        if let Some(v) = req.params.get(name) {
            params.push(name, v);
        }
    }
    let spec = QuerySpec::from_params(&params, &state.limits)?;
    tracing::info!(id = %id, survey = ?survey, "light curve");
    let limit = std::time::Duration::from_secs(state.limits.sync_timeout_s);
    let req = DaliRequest {
        params,
        files: Vec::new(),
    };
    run_streaming(&state, &req, caller.user()?, spec, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_any_query() {
        let all = |_: &str| true;
        let e = query(Survey::Rubin, "1 OR 1=1", "", all)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a diaObjectId"), "{e}");
        let e = query(Survey::Ztf, "ZTF1'; DROP", "", all)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a ZTF object name"), "{e}");
        let e = query(Survey::Synthetic, "5", "", |t| t != "source")
            .unwrap_err()
            .to_string();
        assert!(e.contains("table source is not served"), "{e}");
        let q = query(Survey::Rubin, "42", "", |t| t == "dia_source").unwrap();
        assert!(
            q.contains("\"diaObjectId\" = 42") && !q.contains("UNION"),
            "{q}"
        );
        assert!(ztf_name("ZTF24aakjcqm") && !ztf_name("ZTF 1") && !ztf_name("12"));
        let q = query(Survey::Synthetic, "7", "demo_", |t| t.starts_with("demo_")).unwrap();
        assert!(
            q.contains("FROM demo_source WHERE") && q.contains("FROM demo_forced_source WHERE"),
            "{q}"
        );
        let e = table_prefix("x; DROP").unwrap_err().to_string();
        assert!(e.contains("PREFIX 'x; DROP'"), "{e}");
    }
}
