//! `/tap/examples`: the DALI examples document (XHTML with RDFa), written for the tables
//! this service actually serves so that every example runs as shown.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use meridian_formats::write::xml_escape;

use crate::AppState;
use crate::metadata::{CATALOG_SCHEMA, TableMeta};

/// The position columns of a catalog (its first two indexed, regular-named columns).
fn position(t: &TableMeta) -> (Option<&str>, Option<&str>) {
    let mut indexed = t
        .columns
        .iter()
        .filter(|c| c.indexed && !c.name.starts_with('"'))
        .map(|c| c.name.as_str());
    (indexed.next(), indexed.next())
}

/// (id, title, explanation, query) of each example.
fn examples(catalogs: &[&TableMeta]) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    if let Some(t) = catalogs.first()
        && let (Some(ra), Some(dec)) = position(t)
    {
        let name = &t.name;
        out.push((
            "cone".into(),
            format!("Cone search in {name}"),
            "Sources within 0.5 degrees of a position, nearest first. The HEALPix layout of the \
             catalog means only the partitions that touch the circle are read."
                .into(),
            format!(
                "SELECT TOP 100 *, DISTANCE(POINT('ICRS', {ra}, {dec}), POINT('ICRS', 56.75, 24.12)) AS dist\n\
                 FROM {name}\n\
                 WHERE 1 = CONTAINS(POINT('ICRS', {ra}, {dec}), CIRCLE('ICRS', 56.75, 24.12, 0.5))\n\
                 ORDER BY dist"
            ),
        ));
        out.push((
            "healpix-density".into(),
            format!("Source density of {name} on the sky"),
            "Counts per order-5 HEALPix cell (about 3.4 square degrees each), with \
             ivo_healpix_index."
                .into(),
            format!(
                "SELECT ivo_healpix_index(5, {ra}, {dec}) AS cell, COUNT(*) AS n\n\
                 FROM {name}\n\
                 GROUP BY cell\n\
                 ORDER BY n DESC"
            ),
        ));
        if let Some(u) = catalogs.get(1)
            && let (Some(ura), Some(udec)) = position(u)
        {
            let other = &u.name;
            out.push((
                "crossmatch".into(),
                format!("Cross-match of {name} with {other}"),
                "Pairs closer than 1 arcsecond, run as a HEALPix-partitioned cross-match \
                 rather than a nested loop."
                    .into(),
                format!(
                    "SELECT TOP 1000 a.{ra} AS ra_a, a.{dec} AS dec_a, b.{ura} AS ra_b, b.{udec} AS dec_b,\n\
                     DISTANCE(POINT('ICRS', a.{ra}, a.{dec}), POINT('ICRS', b.{ura}, b.{udec})) * 3600 AS sep_arcsec\n\
                     FROM {name} AS a JOIN {other} AS b\n\
                     ON 1 = CONTAINS(POINT('ICRS', a.{ra}, a.{dec}), CIRCLE('ICRS', b.{ura}, b.{udec}, 1.0 / 3600))"
                ),
            ));
        }
    }
    out.push((
        "tables".into(),
        "The tables of this service".into(),
        "TAP_SCHEMA describes every table and column, with units, UCDs and descriptions.".into(),
        "SELECT t.table_name, t.description, COUNT(*) AS columns\n\
         FROM TAP_SCHEMA.tables AS t JOIN TAP_SCHEMA.columns AS c ON c.table_name = t.table_name\n\
         GROUP BY t.table_name, t.description"
            .into(),
    ));
    out
}

/// `/tap/examples`.
pub async fn examples_document(State(state): State<AppState>) -> Response {
    let catalogs: Vec<&TableMeta> = state
        .model
        .iter()
        .filter(|s| s.name == CATALOG_SCHEMA)
        .flat_map(|s| &s.tables)
        .collect();
    let mut o = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE html>\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\">\n\
         <head><title>Meridian TAP examples</title></head>\n\
         <body vocab=\"http://www.ivoa.net/rdf/examples#\">\n\
         <h1>Example queries</h1>\n",
    );
    for (id, title, about, query) in examples(&catalogs) {
        o += &format!(
            "<div typeof=\"example\" id=\"{id}\" resource=\"#{id}\">\n\
             <h2 property=\"name\">{}</h2>\n\
             <p>{}</p>\n\
             <pre class=\"dali-example\" property=\"query\">{}</pre>\n\
             </div>\n",
            xml_escape(&title),
            xml_escape(&about),
            xml_escape(&query)
        );
    }
    o += "</body>\n</html>\n";
    (
        [(header::CONTENT_TYPE, "application/xhtml+xml; charset=utf-8")],
        o,
    )
        .into_response()
}
