//! DataLink 1.1 `{links}` at `/datalink?ID=...` (several IDs at once): for each image its
//! file (`#this`), a SODA cutout service (`#cutout`, with a service descriptor whose
//! parameter limits are the image's own), a PNG preview (`#preview`), its FITS header
//! (`#auxiliary`) and its coverage as a MOC (`#coverage`). An unknown ID gets an error row.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use meridian_formats::write::xml_escape;
use meridian_images::obscore::encode;
use meridian_images::sia::Entry;

use crate::AppState;
use crate::error::{Error, Result};
use crate::params::DaliRequest;
use crate::vosi::base_url;

/// Most IDs one request may name.
const MAX_IDS: usize = 1000;

/// Media type of a DataLink document.
pub const DATALINK_TYPE: &str = "application/x-votable+xml;content=datalink";

/// One row of the links table.
#[derive(Default)]
struct Link {
    id: String,
    access_url: Option<String>,
    service_def: Option<String>,
    error_message: Option<String>,
    semantics: &'static str,
    description: String,
    content_type: Option<&'static str>,
    content_length: Option<u64>,
    content_qualifier: Option<&'static str>,
}

const FIELDS: &str = "<FIELD name=\"ID\" ID=\"ID\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.id;meta.main\"/>\n\
<FIELD name=\"access_url\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.ref.url\"/>\n\
<FIELD name=\"service_def\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.ref\"/>\n\
<FIELD name=\"error_message\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.code.error\"/>\n\
<FIELD name=\"semantics\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.code\"/>\n\
<FIELD name=\"description\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.note\"/>\n\
<FIELD name=\"content_type\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.code.mime\"/>\n\
<FIELD name=\"content_length\" datatype=\"long\" unit=\"byte\" ucd=\"phys.size;meta.file\"><VALUES null=\"-1\"/></FIELD>\n\
<FIELD name=\"content_qualifier\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.code.class\"/>\n\
<FIELD name=\"local_semantics\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.code\"/>\n\
<FIELD name=\"link_auth\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.code\"/>\n\
<FIELD name=\"link_authorized\" datatype=\"boolean\" ucd=\"meta.code\"/>\n";

fn cell(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => {
            out.push_str("<TD>");
            out.push_str(&xml_escape(v));
            out.push_str("</TD>");
        }
        None => out.push_str("<TD/>"),
    }
}

/// The SODA service descriptor of one image: its ID fixed, CIRCLE and POLYGON limited to
/// the image's footprint, PIXELS to its size.
fn soda_descriptor(xml_id: &str, base: &str, e: &Entry) -> String {
    let d = &e.dataset;
    let polygon: Vec<String> = d
        .corners_deg
        .iter()
        .flat_map(|(ra, dec)| [format!("{ra}"), format!("{dec}")])
        .collect();
    format!(
        "<RESOURCE type=\"meta\" utype=\"adhoc:service\" ID=\"{xml_id}\">\n\
         <PARAM name=\"standardID\" datatype=\"char\" arraysize=\"*\" \
         value=\"ivo://ivoa.net/std/SODA#sync-1.0\"/>\n\
         <PARAM name=\"accessURL\" datatype=\"char\" arraysize=\"*\" value=\"{base}/soda/sync\"/>\n\
         <GROUP name=\"inputParams\">\n\
         <PARAM name=\"ID\" datatype=\"char\" arraysize=\"*\" ucd=\"meta.id;meta.dataset\" \
         value=\"{id}\"/>\n\
         <PARAM name=\"CIRCLE\" datatype=\"double\" arraysize=\"3\" xtype=\"circle\" unit=\"deg\" \
         ucd=\"phys.angArea;obs\" value=\"\">\
         <DESCRIPTION>The circle to cut out: ra dec radius (ICRS)</DESCRIPTION>\
         <VALUES><MAX value=\"{ra} {dec} {r}\"/></VALUES></PARAM>\n\
         <PARAM name=\"POLYGON\" datatype=\"double\" arraysize=\"*\" xtype=\"polygon\" unit=\"deg\" \
         ucd=\"pos.outline;obs\" value=\"\">\
         <DESCRIPTION>The polygon to cut out: ra dec of each vertex (ICRS)</DESCRIPTION>\
         <VALUES><MAX value=\"{polygon}\"/></VALUES></PARAM>\n\
         <PARAM name=\"POS\" datatype=\"char\" arraysize=\"*\" ucd=\"pos.outline;obs\" value=\"\">\
         <DESCRIPTION>The region to cut out: CIRCLE, RANGE or POLYGON, as SIA's POS</DESCRIPTION>\
         </PARAM>\n\
         <PARAM name=\"PIXELS\" datatype=\"char\" arraysize=\"*\" ucd=\"pos.cartesian;instr.pixel\" \
         value=\"\"><DESCRIPTION>Pixels to cut out: x1:x2,y1:y2 (1-based, inclusive) within \
         1:{w},1:{h}</DESCRIPTION></PARAM>\n\
         </GROUP>\n</RESOURCE>\n",
        base = xml_escape(base),
        id = xml_escape(&e.did),
        ra = d.ra_deg,
        dec = d.dec_deg,
        r = d.fov_deg / 2.0,
        polygon = polygon.join(" "),
        w = d.width,
        h = d.height,
    )
}

fn links_of(e: &Entry, base: &str, soda_id: &str) -> Vec<Link> {
    let d = &e.dataset;
    let q = encode(&e.did);
    let this = Link {
        id: e.did.clone(),
        access_url: Some(format!("{base}/images/file?ID={q}")),
        semantics: "#this",
        description: format!(
            "The image: {} x {} pixels, HDU {} of {}",
            d.width,
            d.height,
            d.hdu,
            d.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        content_type: Some(if d.path.extension().is_some_and(|x| x == "gz") {
            "application/gzip"
        } else {
            "image/fits"
        }),
        content_length: Some(d.file_bytes),
        content_qualifier: Some("#image"),
        ..Link::default()
    };
    vec![
        this,
        Link {
            id: e.did.clone(),
            service_def: Some(soda_id.to_string()),
            semantics: "#cutout",
            description: "Cutouts of the image (SODA): CIRCLE, POLYGON, POS or PIXELS".into(),
            content_type: Some("image/fits"),
            content_qualifier: Some("#image"),
            ..Link::default()
        },
        Link {
            id: e.did.clone(),
            access_url: Some(format!("{base}/preview?ID={q}")),
            semantics: "#preview",
            description: "Quick-look PNG (zscale)".into(),
            content_type: Some("image/png"),
            ..Link::default()
        },
        Link {
            id: e.did.clone(),
            access_url: Some(format!("{base}/images/header?ID={q}")),
            semantics: "#auxiliary",
            description: "The image's FITS header, one card a line".into(),
            content_type: Some("text/plain"),
            ..Link::default()
        },
        Link {
            id: e.did.clone(),
            access_url: Some(format!("{base}/images/coverage?ID={q}")),
            semantics: "#coverage",
            description: "The image's footprint as a HEALPix MOC (JSON)".into(),
            content_type: Some("application/json"),
            ..Link::default()
        },
    ]
}

/// The links of a spectrum: its file as SDM FITS and as SDM VOTable.
fn spectrum_links(id: &str, base: &str) -> Vec<Link> {
    let q = encode(id);
    vec![
        Link {
            id: id.to_string(),
            access_url: Some(format!("{base}/spectra/file?ID={q}&FORMAT=fits")),
            semantics: "#this",
            description: "The spectrum (IVOA Spectral Data Model, FITS table)".into(),
            content_type: Some("application/fits"),
            ..Link::default()
        },
        Link {
            id: id.to_string(),
            access_url: Some(format!("{base}/spectra/file?ID={q}&FORMAT=votable")),
            semantics: "#this",
            description: "The spectrum (IVOA Spectral Data Model, VOTable)".into(),
            content_type: Some("application/x-votable+xml;content=spectrum"),
            ..Link::default()
        },
    ]
}

/// `/datalink?ID=...`, GET or POST.
pub async fn links(
    State(state): State<AppState>,
    axum::extract::Extension(caller): axum::extract::Extension<crate::auth::Caller>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    if let Some(f) = req.params.get("RESPONSEFORMAT")
        && !matches!(
            f.trim(),
            "votable" | "application/x-votable+xml" | DATALINK_TYPE
        )
    {
        return Err(Error::Usage(format!(
            "RESPONSEFORMAT: '{f}' is not supported; DataLink answers as {DATALINK_TYPE}"
        )));
    }
    let ids: Vec<&str> = req.params.all("ID").collect();
    if ids.is_empty() {
        return Err(Error::Usage("missing parameter ID".into()));
    }
    if ids.len() > MAX_IDS {
        return Err(Error::Usage(format!(
            "ID: {} identifiers in one request; at most {MAX_IDS}",
            ids.len()
        )));
    }
    let base = base_url(&state, &headers);
    let who = match &caller {
        crate::auth::Caller::User(id) => Some(id),
        _ => None,
    };
    let spectra = crate::spectra::readable(&state, who)?;
    let mut rows = String::new();
    let mut descriptors = String::new();
    for (n, id) in ids.iter().enumerate() {
        let links = match state.images.index.get(id) {
            Some(e) => {
                let soda_id = format!("soda{}", n + 1);
                descriptors.push_str(&soda_descriptor(&soda_id, &base, e));
                links_of(e, &base, &soda_id)
            }
            None if crate::spectra::ssa::resolve(&spectra, &state.spectra.authority, id)
                .is_some() =>
            {
                spectrum_links(id, &base)
            }
            None => vec![Link {
                id: id.to_string(),
                error_message: Some(format!("NotFoundFault: no dataset '{id}'")),
                semantics: "#this",
                description: "Unknown identifier".into(),
                ..Link::default()
            }],
        };
        for l in links {
            rows.push_str("<TR>");
            cell(&mut rows, Some(&l.id));
            cell(&mut rows, l.access_url.as_deref());
            cell(&mut rows, l.service_def.as_deref());
            cell(&mut rows, l.error_message.as_deref());
            cell(&mut rows, Some(l.semantics));
            cell(&mut rows, Some(&l.description));
            cell(&mut rows, l.content_type);
            rows.push_str(&format!(
                "<TD>{}</TD>",
                l.content_length.map_or(-1, |n| n as i64)
            ));
            cell(&mut rows, l.content_qualifier);
            cell(&mut rows, None);
            cell(&mut rows, None);
            cell(&mut rows, None);
            rows.push_str("</TR>\n");
        }
    }
    let doc = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <VOTABLE version=\"1.4\" xmlns=\"http://www.ivoa.net/xml/VOTable/v1.3\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n\
         <RESOURCE type=\"results\">\n\
         <INFO name=\"QUERY_STATUS\" value=\"OK\"/>\n\
         <TABLE>\n{FIELDS}<DATA><TABLEDATA>\n{rows}</TABLEDATA></DATA>\n</TABLE>\n</RESOURCE>\n\
         {descriptors}</VOTABLE>\n"
    );
    Ok(([(header::CONTENT_TYPE, DATALINK_TYPE)], doc).into_response())
}
