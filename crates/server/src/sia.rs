//! SIA 2.0: `/sia/query` over every registered image, and `/sia/<collection>/query` over
//! one collection (as Data Lab publishes one service per collection), with their VOSI
//! capabilities and availability. Answers are ObsCore rows, the same as `ivoa.obscore`
//! holds, with a DataLink service descriptor so that clients find each image's links.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use meridian_formats::write::{ResultWriter, xml_escape};
use meridian_images::sia::SiaQuery;

use crate::error::{Error, Result};
use crate::params::DaliRequest;
use crate::result::{BodySink, write_stream};
use crate::vosi::{base_url, xml};
use crate::{AppState, tap};

/// Rows per batch handed to the writer.
const BATCH_ROWS: usize = 8192;

fn check_collection(state: &AppState, name: &str) -> Result<()> {
    if state.images.index.has_collection(name) {
        Ok(())
    } else {
        Err(Error::NotFound(format!("no image collection '{name}'")))
    }
}

/// The DataLink service descriptor of SIA and ObsCore results: DataLink's links of a row
/// come from `{base}/datalink` with the row's `obs_publisher_did` as ID.
pub fn datalink_descriptor(base: &str) -> String {
    format!(
        "<RESOURCE type=\"meta\" utype=\"adhoc:service\" ID=\"datalink\">\n\
         <PARAM name=\"standardID\" datatype=\"char\" arraysize=\"*\" \
         value=\"ivo://ivoa.net/std/DataLink#links-1.1\"/>\n\
         <PARAM name=\"accessURL\" datatype=\"char\" arraysize=\"*\" value=\"{}/datalink\"/>\n\
         <GROUP name=\"inputParams\">\n\
         <PARAM name=\"ID\" datatype=\"char\" arraysize=\"*\" value=\"\" \
         ref=\"obs_publisher_did\" ucd=\"meta.id;meta.main\"/>\n\
         </GROUP>\n</RESOURCE>\n",
        xml_escape(base)
    )
}

async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    req: &DaliRequest,
    collection: Option<&str>,
) -> Result<Response> {
    let p = &req.params;
    if let Some(r) = p.get("REQUEST")
        && !r.eq_ignore_ascii_case("query")
    {
        return Err(Error::Usage(format!(
            "REQUEST: '{r}' is not supported; use query"
        )));
    }
    let mut q = {
        // Parsing checks polygons, whose cost grows with their vertices: off the runtime.
        let pairs = p.pairs().to_vec();
        tokio::task::spawn_blocking(move || {
            SiaQuery::from_params(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        })
        .await
        .map_err(|e| Error::Internal(format!("SIA query: {e}")))??
    };
    if let Some(c) = collection {
        check_collection(state, c)?;
        q.within = Some(c.to_string());
    }
    let format = tap::format(p.get("RESPONSEFORMAT"))?;
    let maxrec = tap::maxrec(p, &state.limits)?;
    let base = base_url(state, headers);
    let descriptor = datalink_descriptor(&base);
    let images = state.images.clone();
    let (schema, batches) = tokio::task::spawn_blocking(move || -> Result<_> {
        let hits = images.index.search(&q, maxrec.saturating_add(1) as usize);
        let mut out = Vec::new();
        for chunk in hits.chunks(BATCH_ROWS) {
            out.push(images.index.batch(chunk, &base)?);
        }
        Ok((meridian_images::obscore::schema(), out))
    })
    .await
    .map_err(|e| Error::Internal(format!("SIA query: {e}")))??;
    tracing::info!(
        rows = batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        maxrec,
        "SIA query"
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(4);
    let sink = BodySink::new(tx.clone(), state.metrics.clone());
    let mut writer = ResultWriter::new(format.output, Box::new(sink.clone()), &schema)?;
    writer.set_maxrec(maxrec);
    writer.set_votable_resources(descriptor);
    tokio::spawn(async move {
        let stream = futures::stream::iter(batches.into_iter().map(Ok::<_, Error>));
        match write_stream(writer, stream).await {
            Ok(_) => sink.send_rest().await,
            Err(e) => {
                tracing::error!(error = %e, "SIA result failed");
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, format.media_type)],
        crate::result::body(rx),
    )
        .into_response())
}

/// `/sia/query`: every collection.
pub async fn query(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    answer(&state, &headers, &req, None).await
}

/// `/sia/{collection}/query`: one collection.
pub async fn collection_query(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    answer(&state, &headers, &req, Some(&collection)).await
}

fn capabilities_xml(base: &str, path: &str) -> String {
    let base = xml_escape(base);
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <vosi:capabilities xmlns:vosi=\"http://www.ivoa.net/xml/VOSICapabilities/v1.0\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:vr=\"http://www.ivoa.net/xml/VOResource/v1.0\" \
         xmlns:vs=\"http://www.ivoa.net/xml/VODataService/v1.1\">\n",
    );
    for (standard, leaf) in [
        ("ivo://ivoa.net/std/VOSI#capabilities", "capabilities"),
        ("ivo://ivoa.net/std/VOSI#availability", "availability"),
    ] {
        out.push_str(&format!(
            "<capability standardID=\"{standard}\">\n\
             <interface xsi:type=\"vs:ParamHTTP\" version=\"1.1\">\n\
             <accessURL use=\"full\">{base}{path}/{leaf}</accessURL>\n\
             </interface>\n</capability>\n"
        ));
    }
    out.push_str(&format!(
        "<capability standardID=\"ivo://ivoa.net/std/SIA#query-2.0\">\n\
         <interface xsi:type=\"vs:ParamHTTP\" role=\"std\" version=\"2.0\">\n\
         <accessURL use=\"full\">{base}{path}/query</accessURL>\n\
         <securityMethod/>\n\
         </interface>\n</capability>\n\
         <capability standardID=\"ivo://ivoa.net/std/DataLink#links-1.1\">\n\
         <interface xsi:type=\"vs:ParamHTTP\" role=\"std\" version=\"1.1\">\n\
         <accessURL use=\"full\">{base}/datalink</accessURL>\n\
         </interface>\n</capability>\n\
         <capability standardID=\"ivo://ivoa.net/std/SODA#sync-1.0\">\n\
         <interface xsi:type=\"vs:ParamHTTP\" role=\"std\" version=\"1.0\">\n\
         <accessURL use=\"full\">{base}/soda/sync</accessURL>\n\
         </interface>\n</capability>\n\
         <capability standardID=\"ivo://ivoa.net/std/SODA#async-1.0\">\n\
         <interface xsi:type=\"vs:ParamHTTP\" role=\"std\" version=\"1.0\">\n\
         <accessURL use=\"full\">{base}/soda/async</accessURL>\n\
         </interface>\n</capability>\n"
    ));
    out.push_str("</vosi:capabilities>\n");
    out
}

/// `/sia/capabilities`.
pub async fn capabilities(State(state): State<AppState>, headers: HeaderMap) -> Response {
    xml(capabilities_xml(&base_url(&state, &headers), "/sia"))
}

/// `/sia/{collection}/capabilities`.
pub async fn collection_capabilities(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    check_collection(&state, &collection)?;
    Ok(xml(capabilities_xml(
        &base_url(&state, &headers),
        &format!("/sia/{collection}"),
    )))
}

fn availability_xml(note: &str) -> Response {
    xml(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <vosi:availability xmlns:vosi=\"http://www.ivoa.net/xml/VOSIAvailability/v1.0\">\n\
         <vosi:available>true</vosi:available>\n\
         <vosi:note>{}</vosi:note>\n\
         </vosi:availability>\n",
        xml_escape(note)
    ))
}

/// `/sia/availability`.
pub async fn availability(State(state): State<AppState>) -> Response {
    availability_xml(&format!(
        "Meridian SIA service: {} images",
        state.images.index.len()
    ))
}

/// `/sia/{collection}/availability`.
pub async fn collection_availability(
    State(state): State<AppState>,
    Path(collection): Path<String>,
) -> Result<Response> {
    check_collection(&state, &collection)?;
    Ok(availability_xml(&format!(
        "Meridian SIA service of collection {collection}"
    )))
}
