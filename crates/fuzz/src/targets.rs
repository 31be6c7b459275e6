//! The targets' bodies (see [`crate::Target`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, Uri};
use futures::StreamExt;
use tower::ServiceExt;

use crate::Outcome;
use crate::world;

/// Checks that a refusal says something: an error without a message is a finding.
fn refused(message: impl std::fmt::Display) -> Outcome {
    let text = message.to_string();
    if std::env::var_os("MERIDIAN_FUZZ_DEBUG").is_some() {
        eprintln!("refused: {text}");
    }
    assert!(!text.trim().is_empty(), "an error without a message");
    Outcome::Refused
}

/// How long a query may run before the target stops reading its rows (the service has
/// the same kind of limit); the input is not a finding for that.
const QUERY_BUDGET: Duration = Duration::from_secs(2);

/// Rows read from a query's result at most.
const QUERY_ROWS: usize = 100_000;

pub(crate) fn query(data: &[u8], lang: meridian_engine::Lang) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::Refused;
    };
    let q = world::queries();
    q.rt.block_on(async {
        let df = match q.engine.query(text, lang).await {
            Ok(df) => df,
            Err(e) => return refused(e),
        };
        let plan = match q.engine.physical_plan(df).await {
            Ok(p) => p,
            Err(e) => return refused(e),
        };
        let mut stream = match meridian_engine::execute(plan, &q.engine) {
            Ok(s) => s,
            Err(e) => return refused(e),
        };
        let read = async {
            let mut rows = 0;
            while let Some(batch) = stream.next().await {
                match batch {
                    Ok(b) => rows += b.num_rows(),
                    Err(e) => return refused(e),
                }
                if rows > QUERY_ROWS {
                    break;
                }
            }
            Outcome::Accepted
        };
        tokio::time::timeout(QUERY_BUDGET, read)
            .await
            .unwrap_or(Outcome::Refused)
    })
}

pub(crate) fn stcs(data: &[u8]) -> Outcome {
    use meridian_sky::stcs::{Shape, parse_stcs};
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::Refused;
    };
    match parse_stcs(text) {
        Err(e) => refused(e),
        Ok(Shape::Point(p)) => {
            assert!(
                p.dec_deg().abs() <= 90.0,
                "a position off the sphere: {p:?}"
            );
            Outcome::Accepted
        }
        Ok(Shape::Region(r)) => {
            let area = r.area_deg2();
            assert!(
                (0.0..=41_253.0).contains(&area) || area.is_nan(),
                "area {area} deg² of {text:?}"
            );
            let c = r.centroid();
            let _ = r.contains(&c);
            let _ = r.bounding_cap();
            if let Err(e) = r.coverage(8) {
                refused(e);
            }
            if let Err(e) = r.hpx29_ranges(8) {
                refused(e);
            }
            Outcome::Accepted
        }
    }
}

/// Reads every batch of a table file named `name` (its extension picks the reader).
fn read_table(path: &Path) -> Outcome {
    let options = meridian_formats::ReadOptions {
        limits: meridian_formats::InputLimits {
            max_data_bytes: Some(64 << 20),
            ..Default::default()
        },
        ..Default::default()
    };
    let reader = match meridian_formats::open(path, &options) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    let schema = reader.schema();
    for batch in reader {
        match batch {
            Ok(b) => assert_eq!(b.schema().fields().len(), schema.fields().len()),
            Err(e) => return refused(e),
        }
    }
    Outcome::Accepted
}

pub(crate) fn table(data: &[u8], name: &str) -> Outcome {
    let path = world::scratch(name);
    std::fs::write(&path, data).expect("writing a scratch file");
    read_table(&path)
}

pub(crate) fn fits(data: &[u8]) -> Outcome {
    let path = world::scratch("input.fits");
    std::fs::write(&path, data).expect("writing a scratch file");
    // Image headers and their WCS, as image collections and cutouts read them.
    match meridian_formats::read_fits_headers(&path) {
        Err(e) => {
            refused(e);
        }
        Ok(hdus) => {
            for hdu in &hdus {
                if let Ok(wcs) = meridian_images::wcs::Wcs::from_header(&hdu.header)
                    && let Some((lon, lat)) = wcs.pixel_to_world([1.0, 1.0])
                {
                    let _ = wcs.world_to_pixel(lon, lat);
                }
            }
        }
    }
    let images = match meridian_images::collection::datasets_of(&path, "fuzz") {
        Ok(d) if !d.is_empty() => Outcome::Accepted,
        Ok(_) => Outcome::Refused,
        Err(e) => refused(e),
    };
    // Tables.
    match read_table(&path) {
        Outcome::Accepted => Outcome::Accepted,
        Outcome::Refused => images,
    }
}

/// The shared data directory (alert samples for the Avro target's schema).
pub(crate) fn shared_data() -> std::path::PathBuf {
    std::env::var_os("MERIDIAN_SHARED_DATA")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}

/// The Rubin sample's schema, which Confluent-framed messages name by id 1.
pub(crate) const RUBIN_SCHEMA_ID: u32 = 1;

fn confluent_decoder() -> Option<&'static std::sync::Mutex<meridian_alerts::avro::ConfluentDecoder>>
{
    static D: std::sync::OnceLock<
        Option<std::sync::Mutex<meridian_alerts::avro::ConfluentDecoder>>,
    > = std::sync::OnceLock::new();
    D.get_or_init(|| {
        let sample = shared_data().join("alerts/rubin_fink_sample_7alerts.avro");
        let schema = meridian_alerts::avro::file_schema(&sample).ok()?;
        let mut d = meridian_alerts::avro::ConfluentDecoder::new();
        d.register(RUBIN_SCHEMA_ID, &schema).ok()?;
        Some(std::sync::Mutex::new(d))
    })
    .as_ref()
}

fn alerts_into_tables(batch: &arrow::record_batch::RecordBatch) -> Outcome {
    if let Err(e) = meridian_alerts::dia::bad_positions(batch) {
        return refused(e);
    }
    match meridian_alerts::dia::split(batch) {
        Ok(_) => Outcome::Accepted,
        Err(e) => refused(e),
    }
}

pub(crate) fn avro(data: &[u8]) -> Outcome {
    if meridian_alerts::avro::is_container(data) {
        let (_, batches) = match meridian_alerts::avro::read_container("fuzz.avro", data) {
            Ok(b) => b,
            Err(e) => return refused(e),
        };
        let mut outcome = Outcome::Accepted;
        for b in &batches {
            if alerts_into_tables(b) == Outcome::Refused {
                outcome = Outcome::Refused;
            }
        }
        return outcome;
    }
    let Some(decoder) = confluent_decoder() else {
        return Outcome::Refused;
    };
    let mut decoder = decoder.lock().unwrap_or_else(|e| e.into_inner());
    // One message, then the same message twice as a batch (the consumer's path).
    if let Err(e) = decoder.decode(data) {
        return refused(e);
    }
    match decoder.decode_all(&[data, data]) {
        Ok(batch) => alerts_into_tables(&batch),
        Err(e) => refused(e),
    }
}

/// The request an HTTP input describes: a request line (`METHOD /path?query`), header lines
/// (`Name: value`), an empty line and the body; `$TOKEN` and `$ADMIN` in a header value
/// stand for the fuzz user's and the administrator's tokens. `None` when the text is not
/// such a request (the input is then of no interest).
fn request_of(data: &[u8], site: &world::Site) -> Option<Request<Body>> {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let (method, target) = lines.next()?.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let uri: Uri = target.trim().parse().ok()?;
    if !uri.path().starts_with('/') || uri.scheme().is_some() {
        return None;
    }
    let mut builder = Request::builder().method(method).uri(uri);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value
            .trim()
            .replace("$TOKEN", &site.token)
            .replace("$ADMIN", &site.admin_token);
        builder = builder.header(name.trim(), value);
    }
    if !body.is_empty() {
        builder = builder.header("content-length", body.len());
    }
    let mut req = builder.body(Body::from(body.to_vec())).ok()?;
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
    Some(req)
}

/// How long one request may take before the target stops waiting (the service's own time
/// limit for synchronous queries is shorter).
const REQUEST_BUDGET: Duration = Duration::from_secs(20);

fn send(site: &world::Site, req: Request<Body>) -> Outcome {
    let what = format!("{} {}", req.method(), req.uri());
    site.rt.block_on(async {
        let answer = async {
            let response = site
                .router
                .clone()
                .oneshot(req)
                .await
                .expect("the router never fails");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 256 << 20).await;
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                let text = body.map(|b| String::from_utf8_lossy(&b).into_owned());
                panic!("HTTP 500 for {what}: {text:?}");
            }
            if std::env::var_os("MERIDIAN_FUZZ_DEBUG").is_some()
                && !(status.is_success() || status.is_redirection())
            {
                eprintln!(
                    "{what}: {status} {:?}",
                    body.as_ref()
                        .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned())
                );
            }
            if (status.is_success() || status.is_redirection()) && body.is_ok() {
                Outcome::Accepted
            } else {
                Outcome::Refused
            }
        };
        match tokio::time::timeout(REQUEST_BUDGET, answer).await {
            Ok(o) => o,
            Err(_) => panic!("no answer to {what} in {REQUEST_BUDGET:?}"),
        }
    })
}

pub(crate) fn http(data: &[u8]) -> Outcome {
    world::with_site(|site| match request_of(data, site) {
        Some(req) => send(site, req),
        None => Outcome::Refused,
    })
}

/// The VOSpace calls a [`crate::Target::Vospace`] input's first byte picks; the rest of
/// the input is the XML document sent.
pub(crate) const VOSPACE_CALLS: [(&str, &str); 6] = [
    ("PUT", "/vospace/nodes/fuzzer/a"),
    ("PUT", "/vospace/nodes/fuzzer/a/b"),
    ("POST", "/vospace/nodes/fuzzer/a"),
    ("POST", "/vospace/transfers"),
    ("POST", "/vospace/synctrans"),
    ("PUT", "/vospace/nodes/fuzzer/l"),
];

pub(crate) fn vospace(data: &[u8]) -> Outcome {
    let Some((&pick, body)) = data.split_first() else {
        return Outcome::Refused;
    };
    let (method, path) = VOSPACE_CALLS[pick as usize % VOSPACE_CALLS.len()];
    world::with_site(|site| {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", site.token))
            .header("content-type", "text/xml")
            .header("content-length", body.len())
            .body(Body::from(body.to_vec()))
            .map(|mut r| {
                r.extensions_mut()
                    .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
                r
            })
            .expect("a well-formed request");
        send(site, req)
    })
}
