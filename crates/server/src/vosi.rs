//! VOSI: availability, capabilities (with TAPRegExt) and the table set.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use meridian_formats::write::xml_escape;

use crate::AppState;
use crate::error::{Error, Result};
use crate::metadata::TableMeta;
use crate::params::DaliRequest;

/// An XML document response.
pub(crate) fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

/// The service's base URL as the client reached it (`http://host:port`).
pub fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &state.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// `/tap/availability`.
pub async fn availability() -> Response {
    xml("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <vosi:availability xmlns:vosi=\"http://www.ivoa.net/xml/VOSIAvailability/v1.0\">\n\
         <vosi:available>true</vosi:available>\n\
         <vosi:note>Meridian TAP service is accepting queries</vosi:note>\n\
         </vosi:availability>\n"
        .to_string())
}

/// `/tap/capabilities`: VOSI capabilities and TAPRegExt (languages, formats, limits). The
/// TAP interface declares anonymous access (a `securityMethod` without standardID) and the
/// login cookie, so that pyvo's `AuthSession` sends the cookie; a Bearer token works too,
/// but SSO 2.0 defines no identifier for it.
pub async fn capabilities(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = xml_escape(&base_url(&state, &headers)).into_owned();
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <vosi:capabilities xmlns:vosi=\"http://www.ivoa.net/xml/VOSICapabilities/v1.0\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:vr=\"http://www.ivoa.net/xml/VOResource/v1.0\" \
         xmlns:vs=\"http://www.ivoa.net/xml/VODataService/v1.1\" \
         xmlns:tr=\"http://www.ivoa.net/xml/TAPRegExt/v1.0\">\n",
    );
    for (standard, path) in [
        ("ivo://ivoa.net/std/VOSI#capabilities", "capabilities"),
        ("ivo://ivoa.net/std/VOSI#availability", "availability"),
        ("ivo://ivoa.net/std/VOSI#tables-1.1", "tables"),
        ("ivo://ivoa.net/std/DALI#examples", "examples"),
    ] {
        out.push_str(&format!(
            "<capability standardID=\"{standard}\">\n\
             <interface xsi:type=\"vs:ParamHTTP\" version=\"1.1\">\n\
             <accessURL use=\"full\">{base}/tap/{path}</accessURL>\n\
             </interface>\n</capability>\n"
        ));
    }
    out.push_str(&format!(
        "<capability standardID=\"ivo://ivoa.net/std/TAP\" xsi:type=\"tr:TableAccess\">\n\
         <interface role=\"std\" xsi:type=\"vs:ParamHTTP\" version=\"1.1\">\n\
         <accessURL use=\"base\">{base}/tap</accessURL>\n\
         <securityMethod/>\n\
         <securityMethod standardID=\"ivo://ivoa.net/sso#cookie\"/>\n\
         </interface>\n\
         <language>\n<name>ADQL</name>\n\
         <version ivo-id=\"ivo://ivoa.net/std/ADQL#v2.0\">2.0</version>\n\
         <version ivo-id=\"ivo://ivoa.net/std/ADQL#v2.1\">2.1</version>\n\
         <description>ADQL 2.1 with HEALPix-pruned geometry and cross-match joins</description>\n"
    ));
    out.push_str("<languageFeatures type=\"ivo://ivoa.net/std/TAPRegExt#features-adqlgeo\">\n");
    for f in [
        "POINT",
        "CIRCLE",
        "BOX",
        "POLYGON",
        "REGION",
        "CONTAINS",
        "INTERSECTS",
        "AREA",
        "CENTROID",
        "COORD1",
        "COORD2",
        "COORDSYS",
        "DISTANCE",
    ] {
        out.push_str(&format!("<feature><form>{f}</form></feature>\n"));
    }
    out.push_str("</languageFeatures>\n");
    out.push_str("<languageFeatures type=\"ivo://ivoa.net/std/TAPRegExt#features-udf\">\n");
    for (form, what) in [
        (
            "ivo_healpix_index(order INTEGER, ra DOUBLE, dec DOUBLE) -> BIGINT",
            "HEALPix NESTED index of a position",
        ),
        (
            "healpix_parent(index BIGINT, order INTEGER) -> BIGINT",
            "the order-k parent of an order-29 HEALPix index",
        ),
        (
            "q3c_dist(ra1 DOUBLE, dec1 DOUBLE, ra2 DOUBLE, dec2 DOUBLE) -> DOUBLE",
            "angular distance in degrees",
        ),
        (
            "q3c_radial_query(ra DOUBLE, dec DOUBLE, ra0 DOUBLE, dec0 DOUBLE, radius DOUBLE) -> INTEGER",
            "1 within radius degrees of (ra0, dec0)",
        ),
        (
            "q3c_join(ra1 DOUBLE, dec1 DOUBLE, ra2 DOUBLE, dec2 DOUBLE, radius DOUBLE) -> INTEGER",
            "1 when the positions are within radius degrees; joins run as a cross-match",
        ),
    ] {
        out.push_str(&format!(
            "<feature><form>{}</form><description>{}</description></feature>\n",
            xml_escape(form),
            xml_escape(what)
        ));
    }
    out.push_str("</languageFeatures>\n");
    out.push_str(
        "<languageFeatures type=\"ivo://ivoa.net/std/TAPRegExt#features-adql-unit\">\n\
         <feature><form>IN_UNIT</form></feature>\n</languageFeatures>\n",
    );
    out.push_str("</language>\n");
    for (names, f) in crate::tap::FORMATS {
        out.push_str(&format!(
            "<outputFormat><mime>{}</mime>{}</outputFormat>\n",
            xml_escape(f.media_type),
            names
                .iter()
                .filter(|n| !n.contains('/'))
                .map(|n| format!("<alias>{n}</alias>"))
                .collect::<String>()
        ));
    }
    out.push_str("<uploadMethod ivo-id=\"ivo://ivoa.net/std/TAPRegExt#upload-inline\"/>\n");
    if state.limits.allow_url_uploads {
        out.push_str(
            "<uploadMethod ivo-id=\"ivo://ivoa.net/std/TAPRegExt#upload-http\"/>\n\
             <uploadMethod ivo-id=\"ivo://ivoa.net/std/TAPRegExt#upload-https\"/>\n",
        );
    }
    let l = &state.limits;
    let j = state.jobs.config();
    // TAPRegExt order: retentionPeriod, executionDuration, outputLimit, uploadLimit.
    out.push_str(&format!(
        "<retentionPeriod>\n<default>{}</default>\n<hard>{}</hard>\n</retentionPeriod>\n\
         <executionDuration>\n<default>{}</default>\n<hard>{}</hard>\n</executionDuration>\n\
         <outputLimit>\n<default unit=\"row\">{}</default>\n<hard unit=\"row\">{}</hard>\n</outputLimit>\n\
         <uploadLimit>\n<default unit=\"byte\">{}</default>\n<hard unit=\"byte\">{}</hard>\n</uploadLimit>\n",
        j.default_lifetime_s,
        j.max_lifetime_s,
        j.default_execution_duration_s,
        j.max_execution_duration_s,
        l.default_maxrec,
        l.max_maxrec,
        l.upload_max_bytes,
        l.upload_max_bytes,
    ));
    out.push_str("</capability>\n</vosi:capabilities>\n");
    xml(out)
}

/// The content of a table element: name, description and (unless `min`) columns.
fn table_xml(t: &TableMeta, min: bool, out: &mut String) {
    out.push_str(&format!("<name>{}</name>\n", xml_escape(&t.name)));
    if let Some(d) = &t.description {
        out.push_str(&format!("<description>{}</description>\n", xml_escape(d)));
    }
    if min {
        return;
    }
    for c in &t.columns {
        out.push_str(&format!(
            "<column std=\"{}\">\n<name>{}</name>\n",
            c.std,
            xml_escape(&c.name)
        ));
        if let Some(d) = &c.description {
            out.push_str(&format!("<description>{}</description>\n", xml_escape(d)));
        }
        if let Some(u) = &c.unit {
            out.push_str(&format!("<unit>{}</unit>\n", xml_escape(u)));
        }
        if let Some(u) = &c.ucd {
            out.push_str(&format!("<ucd>{}</ucd>\n", xml_escape(u)));
        }
        if let Some(u) = &c.utype {
            out.push_str(&format!("<utype>{}</utype>\n", xml_escape(u)));
        }
        out.push_str(&format!(
            "<dataType xsi:type=\"vs:VOTableType\"{}{}>{}</dataType>\n",
            c.arraysize
                .as_ref()
                .map(|a| format!(" arraysize=\"{a}\""))
                .unwrap_or_default(),
            c.xtype
                .as_ref()
                .map(|x| format!(" extendedType=\"{}\"", xml_escape(x)))
                .unwrap_or_default(),
            c.datatype
        ));
        if c.indexed {
            out.push_str("<flag>indexed</flag>\n");
        }
        if c.principal {
            out.push_str("<flag>principal</flag>\n");
        }
        out.push_str("</column>\n");
    }
    for k in &t.foreign_keys {
        out.push_str(&format!(
            "<foreignKey>\n<targetTable>{}</targetTable>\n",
            xml_escape(&k.target_table)
        ));
        for (from, target) in &k.columns {
            out.push_str(&format!(
                "<fkColumn>\n<fromColumn>{}</fromColumn>\n<targetColumn>{}</targetColumn>\n</fkColumn>\n",
                xml_escape(from),
                xml_escape(target)
            ));
        }
        out.push_str("</foreignKey>\n");
    }
}

const TABLESET_OPEN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <vosi:tableset xmlns:vosi=\"http://www.ivoa.net/xml/VOSITables/v1.0\" \
    xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
    xmlns:vs=\"http://www.ivoa.net/xml/VODataService/v1.1\">\n";

fn detail_min(req: &DaliRequest) -> Result<bool> {
    match req
        .params
        .get("detail")
        .map(|d| d.trim().to_ascii_lowercase())
    {
        None => Ok(false),
        Some(d) if d == "max" => Ok(false),
        Some(d) if d == "min" => Ok(true),
        Some(d) => Err(Error::Usage(format!("detail '{d}' is not min or max"))),
    }
}

/// `/tap/tables`: every schema and table, with columns unless `detail=min`.
pub async fn tables(State(state): State<AppState>, req: DaliRequest) -> Result<Response> {
    let min = detail_min(&req)?;
    let mut out = String::from(TABLESET_OPEN);
    for s in state.model.iter() {
        out.push_str(&format!(
            "<schema>\n<name>{}</name>\n<description>{}</description>\n",
            xml_escape(&s.name),
            xml_escape(&s.description)
        ));
        for t in &s.tables {
            out.push_str("<table type=\"table\">\n");
            table_xml(t, min, &mut out);
            out.push_str("</table>\n");
        }
        out.push_str("</schema>\n");
    }
    out.push_str("</vosi:tableset>\n");
    Ok(xml(out))
}

/// `/tap/tables/{name}`: one table's document (`gaia`, `public.gaia`, `TAP_SCHEMA.tables`).
pub async fn table(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    let t = state
        .model
        .iter()
        .flat_map(|s| &s.tables)
        .find(|t| {
            t.name.eq_ignore_ascii_case(&name)
                || format!("{}.{}", t.schema, t.name).eq_ignore_ascii_case(&name)
        })
        .ok_or_else(|| Error::NotFound(format!("no table '{name}'")))?;
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vosi:table xmlns:vosi=\"http://www.ivoa.net/xml/VOSITables/v1.0\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:vs=\"http://www.ivoa.net/xml/VODataService/v1.1\" type=\"table\">\n",
    );
    // The per-table document's root is the table element itself.
    table_xml(t, false, &mut out);
    out.push_str("</vosi:table>\n");
    Ok(xml(out))
}
