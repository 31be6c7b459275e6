//! The IVOA ADQL test corpus (lyonetia): every query marked valid must parse and validate,
//! every query marked invalid must be rejected. Deliberate exceptions are listed below with
//! their reasons; the test prints the pass rate.

use std::path::{Path, PathBuf};

use meridian_adql::FunctionRegistry;
use meridian_adql::functions::Kind;

struct Case {
    file: String,
    uuid: String,
    valid: bool,
    text: String,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../../../shared/corpora/lyonetia/adql")
}

fn read_cases(path: &Path) -> Vec<Case> {
    use quick_xml::events::Event;
    let text = std::fs::read_to_string(path).unwrap();
    let mut r = quick_xml::Reader::from_str(&text);
    let mut out = Vec::new();
    let (mut uuid, mut valid, mut in_adql, mut buf) = (String::new(), false, false, String::new());
    loop {
        match r.read_event().unwrap() {
            Event::Start(e) if e.local_name().as_ref() == b"query" => {
                uuid = e
                    .attributes()
                    .flatten()
                    .find(|a| a.key.as_ref() == b"uuid")
                    .map(|a| String::from_utf8_lossy(&a.value).to_string())
                    .unwrap_or_default();
            }
            Event::Start(e) if e.local_name().as_ref() == b"adql" => {
                valid = e
                    .attributes()
                    .flatten()
                    .any(|a| a.key.as_ref() == b"valid" && a.value.as_ref() == b"true");
                in_adql = true;
                buf.clear();
            }
            Event::Text(t) if in_adql => buf.push_str(&t.xml_content().unwrap()),
            Event::GeneralRef(g) if in_adql => {
                let name = g.decode().unwrap();
                buf.push_str(match name.as_ref() {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "quot" => "\"",
                    "apos" => "'",
                    other => panic!("unknown entity {other}"),
                });
            }
            Event::CData(t) if in_adql => buf.push_str(&String::from_utf8_lossy(&t)),
            Event::End(e) if e.local_name().as_ref() == b"adql" => {
                in_adql = false;
                out.push(Case {
                    file: path.file_name().unwrap().to_string_lossy().to_string(),
                    uuid: uuid.clone(),
                    valid,
                    text: buf.clone(),
                });
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

/// The user-defined functions the corpus's valid queries call, declared as a TAP service
/// would declare them in its capabilities.
fn registry() -> FunctionRegistry {
    let mut f = FunctionRegistry::adql();
    f.declare("ivo_healpix_index", 2, 3, Kind::Numeric)
        .declare("ivo_getstring", 0, 0, Kind::String)
        .declare("ivo_hasword", 2, 2, Kind::Numeric)
        .declare("ivo_hashlist_has", 2, 2, Kind::Numeric)
        .declare("ivo_nocasematch", 2, 2, Kind::Numeric)
        .declare("ivo_string_agg", 2, 2, Kind::String)
        .declare("ivo_interval_overlaps", 4, 4, Kind::Numeric)
        .declare("gavo_specconv", 2, 3, Kind::Numeric)
        .declare("gavo_transform", 3, 3, Kind::Geometry)
        .declare("gavo_to_jd", 1, 1, Kind::Numeric)
        .declare("gavo_to_mjd", 1, 1, Kind::Numeric)
        // An arbitrary UDF the corpus uses to test how UDF results combine with ||.
        .declare("ivo_foo", 1, 1, Kind::Any)
        // ESO's archive declares these in its ObsCore use cases.
        .declare("eso_intersection", 2, 2, Kind::Numeric)
        .declare("eso_dateadd_sec", 2, 2, Kind::Any);
    f
}

/// Queries whose classification Meridian deliberately does not follow: (file, uuid, reason).
const EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "2_from.xml",
    "d4c3a72c-4458-11e6-96e2-28b2bdcff70b",
    "marks a JOIN without ON/USING invalid, but the ADQL 2.1 BNF makes <join_specification> \
     optional and 13 GAVO corpus queries (one under this same uuid) rely on that; Meridian \
     follows the BNF",
)];

#[test]
fn lyonetia_corpus() {
    let mut files: Vec<PathBuf> = Vec::new();
    for sub in ["ivoa", "gavo", "roe"] {
        for e in std::fs::read_dir(corpus_dir().join(sub)).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    files.sort();
    let functions = registry();
    let (mut passed, mut total, mut excepted) = (0, 0, 0);
    let mut failures = Vec::new();
    for f in &files {
        for case in read_cases(f) {
            total += 1;
            let result = meridian_adql::parse(&case.text, &functions);
            let ok = result.is_ok() == case.valid;
            if let Some((_, _, reason)) = EXCEPTIONS
                .iter()
                .find(|(f, u, _)| *f == case.file && *u == case.uuid)
            {
                assert!(
                    !ok,
                    "{} {} is listed as an exception but now agrees with the corpus",
                    case.file, case.uuid
                );
                println!("exception: {} {}: {reason}", case.file, case.uuid);
                excepted += 1;
                continue;
            }
            if ok {
                passed += 1;
            } else {
                let why = match result {
                    Ok(_) => "accepted, but marked invalid".to_string(),
                    Err(e) => format!("rejected: {e}"),
                };
                failures.push(format!(
                    "{} {} [{}]\n    {}\n    {}",
                    case.file,
                    case.uuid,
                    if case.valid { "valid" } else { "invalid" },
                    case.text.trim().replace('\n', " "),
                    why
                ));
            }
        }
    }
    println!(
        "lyonetia: {passed}/{total} queries classified as the corpus says ({:.1}%), {excepted} deliberate exception(s)",
        100.0 * passed as f64 / total as f64
    );
    for f in &failures {
        println!("{f}");
    }
    assert_eq!(total, 495);
    assert!(
        failures.is_empty(),
        "{} corpus queries misclassified",
        failures.len()
    );
}
