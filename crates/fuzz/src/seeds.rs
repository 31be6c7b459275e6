//! Seed inputs of each target: valid inputs that reach deep into the code, from
//! ../shared/data (tables, images, alerts), ../shared/corpora/lyonetia (ADQL), files that
//! Meridian's own writers make, and requests written here; and libFuzzer dictionaries.
//! Seeds from the shared directories are read where they are, never copied into the
//! repository; without them a target still has the seeds written here.

use std::path::{Path, PathBuf};

use crate::Target;
use crate::targets::{RUBIN_SCHEMA_ID, VOSPACE_CALLS, shared_data};
use crate::world::TABLE;

/// A named seed.
pub type Seed = (String, Vec<u8>);

/// The seeds of `target`.
pub fn seeds(target: Target) -> Vec<Seed> {
    let mut out = match target {
        Target::Adql => adql(),
        Target::Sql => texts("sql", SQL),
        Target::Stcs => texts("stcs", STCS),
        Target::Votable => votable(),
        Target::Fits => fits(),
        Target::Csv => csv(),
        Target::Parquet => written(&[(WriteAs::Parquet, "fuzz.parquet")]),
        Target::Avro => avro(),
        Target::Http => http(),
        Target::Vospace => vospace(),
    };
    out.retain(|(_, d)| d.len() <= target.max_len());
    out
}

/// The words of a libFuzzer dictionary for `target` (none for binary formats, whose seeds
/// carry their structure).
pub fn dictionary(target: Target) -> Vec<String> {
    let words: &[&str] = match target {
        Target::Adql | Target::Sql => &[
            "SELECT",
            "TOP",
            "DISTINCT",
            "FROM",
            "WHERE",
            "JOIN",
            "LEFT",
            "OUTER",
            "ON",
            "USING",
            "GROUP BY",
            "HAVING",
            "ORDER BY",
            "ASC",
            "DESC",
            "OFFSET",
            "LIMIT",
            "UNION",
            "EXCEPT",
            "INTERSECT",
            "WITH",
            "AS",
            "AND",
            "OR",
            "NOT",
            "IN",
            "BETWEEN",
            "LIKE",
            "ILIKE",
            "IS NULL",
            "CASE",
            "WHEN",
            "THEN",
            "ELSE",
            "END",
            "CAST",
            "COALESCE",
            "COUNT(*)",
            "AVG",
            "MIN",
            "MAX",
            "SUM",
            "CONTAINS",
            "INTERSECTS",
            "POINT",
            "CIRCLE",
            "BOX",
            "POLYGON",
            "REGION",
            "DISTANCE",
            "AREA",
            "COORD1",
            "COORD2",
            "COORDSYS",
            "CENTROID",
            "'ICRS'",
            "ivo_healpix_index",
            "ivo_hasword",
            "gavo_specconv",
            "SQRT",
            "LOG10",
            "POWER",
            "MOD",
            "ROUND",
            "TRUNCATE",
            "UPPER",
            "LOWER",
            "TRIM",
            "SUBSTRING",
            "||",
            "fuzz",
            "source_id",
            "ra",
            "dec",
            "phot_g_mean_mag",
            "name",
            "variable",
            "mjd",
            "TAP_SCHEMA.tables",
            "TAP_SCHEMA.columns",
            "generate_series",
            "unnest",
            "EXPLAIN",
            "1e308",
            "-0.0",
            "'NaN'",
            "9223372036854775807",
        ],
        Target::Stcs => &[
            "Circle",
            "Box",
            "Polygon",
            "Position",
            "Union",
            "Intersection",
            "Not",
            "ICRS",
            "FK5",
            "J2000",
            "GALACTIC",
            "BARYCENTER",
            "GEOCENTER",
            "TOPOCENTER",
            "SPHERICAL2",
            "NaN",
            "inf",
            "-90",
            "90",
            "360",
            "1e-12",
            "180.0000001",
        ],
        Target::Votable => &[
            "<VOTABLE",
            "</VOTABLE>",
            "<RESOURCE",
            "<TABLE",
            "<FIELD",
            "<PARAM",
            "<DATA>",
            "<TABLEDATA>",
            "<TR>",
            "<TD>",
            "<BINARY>",
            "<BINARY2>",
            "<STREAM encoding=\"base64\">",
            "<FITS",
            "<GROUP",
            "<INFO",
            "<COOSYS",
            "datatype=\"double\"",
            "datatype=\"char\"",
            "datatype=\"unicodeChar\"",
            "datatype=\"boolean\"",
            "datatype=\"bit\"",
            "datatype=\"floatComplex\"",
            "arraysize=\"*\"",
            "arraysize=\"3x*\"",
            "arraysize=\"10\"",
            "<VALUES null=\"",
            "ucd=\"pos.eq.ra;meta.main\"",
            "unit=\"deg\"",
            "xmlns=",
            "<![CDATA[",
            "&amp;",
            "&#x1F600;",
        ],
        Target::Csv => &[
            ",", "\t", "\"", "\r\n", "NaN", "inf", "null", "true", "1e400", "#",
        ],
        Target::Http | Target::Vospace => &[
            "GET ",
            "POST ",
            "PUT ",
            "DELETE ",
            "HEAD ",
            "/tap/sync",
            "/tap/async",
            "/query",
            "/storage/",
            "/vospace/nodes/",
            "/api/",
            "/sia/query",
            "/datalink",
            "/soda/sync",
            "Authorization: Bearer $TOKEN",
            "X-DL-AuthToken: $TOKEN",
            "$ADMIN",
            "Content-Type: application/x-www-form-urlencoded",
            "Content-Type: multipart/form-data; boundary=XB",
            "--XB",
            "--XB--",
            "Content-Disposition: form-data; name=\"",
            "filename=\"",
            "REQUEST=doQuery",
            "LANG=ADQL",
            "QUERY=",
            "UPLOAD=",
            "MAXREC=",
            "FORMAT=",
            "POS=",
            "CIRCLE",
            "RANGE",
            "POLYGON",
            "%00",
            "%ZZ",
            "vos://meridian!vospace/",
            "<vos:node",
            "<vos:transfer",
            "<vos:direction>",
            "<vos:property uri=\"",
            "xsi:type=\"vos:",
            "ContainerNode",
            "DataNode",
            "LinkNode",
            "pullToVoSpace",
            "pushToVoSpace",
            "pullFromVoSpace",
            "pushFromVoSpace",
            "ivo://ivoa.net/vospace/core#httpget",
            "<vos:target>",
        ],
        Target::Fits | Target::Parquet | Target::Avro => &[],
    };
    words.iter().map(|w| w.to_string()).collect()
}

fn texts(kind: &str, texts: &[&str]) -> Vec<Seed> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("{kind}-{i}"), t.as_bytes().to_vec()))
        .collect()
}

/// Queries over the fuzz catalog, then the valid and invalid queries of the IVOA corpus.
fn adql() -> Vec<Seed> {
    let mut out = texts("adql", ADQL);
    let dir = shared_data().join("../corpora/lyonetia/adql");
    for file in files_under(&dir, "xml") {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned());
        let stem = stem.unwrap_or_default();
        for (i, q) in cdata_of_adql(&text).into_iter().enumerate() {
            out.push((format!("lyonetia-{stem}-{i}"), q.into_bytes()));
        }
    }
    out
}

/// The texts of the `<adql>` elements of a lyonetia file (inside CDATA sections).
fn cdata_of_adql(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<adql") {
        rest = &rest[start..];
        let Some(end) = rest.find("</adql>") else {
            break;
        };
        let element = &rest[..end];
        if let (Some(a), Some(b)) = (element.find("<![CDATA["), element.rfind("]]>"))
            && a + 9 <= b
        {
            out.push(element[a + 9..b].trim().to_string());
        }
        rest = &rest[end..];
    }
    out
}

fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(files_under(&p, ext));
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
    out
}

/// The files of a shared data directory whose names end with one of `suffixes`.
fn shared_files(sub: &str, suffixes: &[&str]) -> Vec<Seed> {
    let dir = shared_data().join(sub);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| {
            let n = p.to_string_lossy();
            suffixes.iter().any(|s| n.ends_with(s))
        })
        .filter_map(|p| {
            let data = std::fs::read(&p).ok()?;
            Some((p.file_name()?.to_string_lossy().into_owned(), data))
        })
        .collect()
}

/// Formats [`written`] writes the fuzz catalog in.
#[derive(Clone, Copy)]
enum WriteAs {
    Parquet,
    Fits,
    VoTable(meridian_formats::write::Serialization),
}

/// The fuzz catalog written by Meridian's own writers, as each named file.
fn written(how: &[(WriteAs, &str)]) -> Vec<Seed> {
    use meridian_formats::write::{OutputFormat, ResultWriter};
    let csv = crate::world::scratch("seed-catalog.csv");
    std::fs::write(&csv, crate::world::catalog_csv()).expect("writing a scratch file");
    let reader = meridian_formats::open(&csv, &Default::default()).expect("the fuzz catalog");
    let schema = reader.schema();
    let batches: Vec<_> = reader.map(|b| b.expect("the fuzz catalog")).collect();
    let mut out = Vec::new();
    for &(format, name) in how {
        let format = match format {
            WriteAs::Parquet => OutputFormat::Parquet,
            WriteAs::Fits => OutputFormat::Fits,
            WriteAs::VoTable(s) => OutputFormat::VoTable(s),
        };
        let path = crate::world::scratch(name);
        let mut w = ResultWriter::create(format, &path, &schema).expect("a writer");
        for b in &batches {
            w.write(b).expect("writing a seed");
        }
        w.finish().expect("writing a seed");
        out.push((
            name.to_string(),
            std::fs::read(&path).expect("a written seed"),
        ));
    }
    out
}

fn votable() -> Vec<Seed> {
    use meridian_formats::write::Serialization;
    let mut out = written(&[
        (WriteAs::VoTable(Serialization::TableData), "tabledata.vot"),
        (WriteAs::VoTable(Serialization::Binary), "binary.vot"),
        (WriteAs::VoTable(Serialization::Binary2), "binary2.vot"),
    ]);
    out.extend(shared_files("votable", &[".xml", ".vot"]));
    out
}

fn fits() -> Vec<Seed> {
    let mut out = written(&[(WriteAs::Fits, "table.fits")]);
    out.extend(shared_files("images", &[".fits", ".fit.gz", ".fits.gz"]));
    out
}

fn csv() -> Vec<Seed> {
    let mut out = texts("csv", CSV);
    out.push((
        "catalog.csv".into(),
        crate::world::catalog_csv().into_bytes(),
    ));
    // The head of a real catalog.
    let gaia = shared_data().join("catalogs/gaia_dr3_bright.csv.gz");
    if let Ok(f) = std::fs::File::open(gaia) {
        use std::io::BufRead;
        let lines = std::io::BufReader::new(flate2::read::GzDecoder::new(f)).lines();
        let head: Vec<String> = lines.take(60).map_while(|l| l.ok()).collect();
        out.push((
            "gaia_head.csv".into(),
            (head.join("\n") + "\n").into_bytes(),
        ));
    }
    out
}

fn avro() -> Vec<Seed> {
    use meridian_alerts::avro::{single_record_container, single_records};
    let mut out = Vec::new();
    for (name, data) in shared_files("alerts", &[".avro"]) {
        let Ok(records) = single_records(&name, &data) else {
            continue;
        };
        // The first alert as a container of its own (as ZTF publishes on Kafka).
        if let Some(first) = records.first()
            && let Ok(one) = single_record_container(&name, &data, first)
        {
            out.push((format!("{name}-container"), one));
        }
        // Rubin's alerts as Confluent-framed messages (schema id, then the datum).
        if name.starts_with("rubin") {
            for (i, r) in records.iter().enumerate() {
                let mut m = vec![0u8];
                m.extend_from_slice(&RUBIN_SCHEMA_ID.to_be_bytes());
                m.extend_from_slice(r);
                out.push((format!("{name}-message-{i}"), m));
            }
        }
    }
    out
}

fn http() -> Vec<Seed> {
    let mut out = texts("http", HTTP);
    // Uploads: the fuzz catalog as an inline VOTable with a TAP query, and a file put.
    let vot = votable()
        .into_iter()
        .find(|(n, _)| n == "tabledata.vot")
        .map(|(_, d)| d)
        .unwrap_or_default();
    let mut tap = format!(
        "POST /tap/sync\nContent-Type: multipart/form-data; boundary=XB\n\n\
         --XB\r\nContent-Disposition: form-data; name=\"REQUEST\"\r\n\r\ndoQuery\r\n\
         --XB\r\nContent-Disposition: form-data; name=\"LANG\"\r\n\r\nADQL\r\n\
         --XB\r\nContent-Disposition: form-data; name=\"QUERY\"\r\n\r\n\
         SELECT u.source_id, f.name FROM TAP_UPLOAD.mine AS u JOIN {TABLE} AS f \
         ON u.source_id = f.source_id\r\n\
         --XB\r\nContent-Disposition: form-data; name=\"UPLOAD\"\r\n\r\nmine,param:t\r\n\
         --XB\r\nContent-Disposition: form-data; name=\"t\"; filename=\"t.vot\"\r\n\
         Content-Type: application/x-votable+xml\r\n\r\n"
    )
    .into_bytes();
    tap.extend_from_slice(&vot);
    tap.extend_from_slice(b"\r\n--XB--\r\n");
    out.push(("http-upload".into(), tap));
    let mut put = "POST /storage/xfer\nX-DL-AuthToken: $TOKEN\nX-DL-FileName: t.vot\n\
                   X-DL-InitXfer: True\nContent-Type: application/octet-stream\n\n"
        .as_bytes()
        .to_vec();
    put.extend_from_slice(&vot);
    out.push(("http-storage-put".into(), put));
    out
}

fn vospace() -> Vec<Seed> {
    let root = "vos://meridian!vospace";
    let vos = "http://www.ivoa.net/xml/VOSpace/v2.0";
    let xsi = "http://www.w3.org/2001/XMLSchema-instance";
    let node = |kind: &str, path: &str, extra: &str| {
        format!(
            "<vos:node xmlns:vos=\"{vos}\" xmlns:xsi=\"{xsi}\" xsi:type=\"vos:{kind}\" \
             uri=\"{root}/{path}\"><vos:properties><vos:property \
             uri=\"ivo://ivoa.net/vospace/core#description\">notes</vos:property>\
             </vos:properties>{extra}</vos:node>"
        )
    };
    let transfer = |target: &str, direction: &str, protocol: &str| {
        format!(
            "<vos:transfer xmlns:vos=\"{vos}\" version=\"2.1\"><vos:target>{root}/{target}\
             </vos:target><vos:direction>{direction}</vos:direction><vos:protocol \
             uri=\"{protocol}\"/><vos:keepBytes>false</vos:keepBytes></vos:transfer>"
        )
    };
    let get = "ivo://ivoa.net/vospace/core#httpget";
    let put = "ivo://ivoa.net/vospace/core#httpput";
    let docs: Vec<(usize, String)> = vec![
        (0, node("ContainerNode", "fuzzer/a", "")),
        (1, node("DataNode", "fuzzer/a/b", "")),
        (2, node("ContainerNode", "fuzzer/a", "")),
        (3, transfer("fuzzer/a/b", "pushToVoSpace", put)),
        (3, transfer("fuzzer/a/b", &format!("{root}/fuzzer/c"), get)),
        (4, transfer("fuzzer/a/b", "pullFromVoSpace", get)),
        (4, transfer("fuzzer/a", "pushToVoSpace", put)),
        (
            5,
            node(
                "LinkNode",
                "fuzzer/l",
                &format!("<vos:target>{root}/fuzzer/a</vos:target>"),
            ),
        ),
    ];
    docs.into_iter()
        .enumerate()
        .map(|(i, (call, doc))| {
            assert!(call < VOSPACE_CALLS.len());
            let mut data = vec![call as u8];
            data.extend_from_slice(doc.as_bytes());
            (format!("vospace-{i}"), data)
        })
        .collect()
}

const ADQL: &[&str] = &[
    "SELECT TOP 5 source_id, ra, dec FROM fuzz ORDER BY phot_g_mean_mag",
    "SELECT * FROM fuzz WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 37.3, -80.75, 10))",
    "SELECT COUNT(*), AVG(phot_g_mean_mag), MIN(mjd) FROM fuzz WHERE phot_g_mean_mag IS NOT NULL GROUP BY variable HAVING COUNT(*) > 1",
    "SELECT a.source_id, b.source_id, DISTANCE(POINT('ICRS', a.ra, a.dec), POINT('ICRS', b.ra, b.dec)) AS d FROM fuzz AS a JOIN fuzz AS b ON 1 = CONTAINS(POINT('ICRS', a.ra, a.dec), CIRCLE('ICRS', b.ra, b.dec, 30))",
    "SELECT name FROM fuzz WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), POLYGON('ICRS', 0, 0, 40, 0, 40, 40)) AND name LIKE 'star 1%'",
    "SELECT TOP 3 source_id, ivo_healpix_index(10, ra, dec) FROM fuzz WHERE 1 = CONTAINS(POINT(ra, dec), BOX(180, 0, 120, 60))",
    "SELECT DISTINCT variable, CASE WHEN phot_g_mean_mag < 12 THEN 'bright' ELSE 'faint' END AS k FROM fuzz",
    "SELECT source_id FROM fuzz WHERE dec BETWEEN -30 AND 30 UNION SELECT source_id FROM fuzz WHERE ra < 10 ORDER BY 1 OFFSET 2",
    "WITH b AS (SELECT * FROM fuzz WHERE phot_g_mean_mag < 14) SELECT COUNT(*) FROM b",
    "SELECT table_name, column_name, datatype FROM TAP_SCHEMA.columns WHERE table_name = 'fuzz'",
    "SELECT ROUND(ra, 2), TRUNCATE(dec, 1), SQRT(ABS(dec)), LOG10(ra + 1), POWER(2, 10), MOD(source_id, 7), CAST(mjd AS INTEGER) FROM fuzz",
    "SELECT COORD1(CENTROID(CIRCLE('ICRS', ra, dec, 1))), AREA(CIRCLE(ra, dec, 2)) FROM fuzz WHERE source_id IN (1001, 1002, 1003)",
    "SELECT UPPER(name) || '!', LOWER(name) FROM fuzz WHERE name LIKE 'star 2%'",
    "SELECT * FROM fuzz WHERE source_id = (SELECT MAX(source_id) FROM fuzz)",
];

const SQL: &[&str] = &[
    "SELECT source_id, ra, dec FROM fuzz ORDER BY phot_g_mean_mag LIMIT 5",
    "SELECT variable, count(*), avg(phot_g_mean_mag) FROM fuzz GROUP BY variable",
    "SELECT * FROM fuzz WHERE q3c_radial_query(ra, dec, 37.3, -80.75, 10)",
    "SELECT a.source_id, b.source_id FROM fuzz a JOIN fuzz b ON a.source_id < b.source_id WHERE abs(a.dec - b.dec) < 5",
    "WITH t AS (SELECT source_id, mjd FROM fuzz) SELECT max(mjd) - min(mjd) FROM t",
    "SELECT name, row_number() OVER (PARTITION BY variable ORDER BY mjd) FROM fuzz",
    "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v(x, y)",
    "SELECT to_timestamp(mjd) FROM fuzz LIMIT 1",
    "EXPLAIN SELECT * FROM fuzz WHERE ra > 100",
    "SELECT * FROM fuzz WHERE name ~ '^star [0-9]+$' AND ra::int > 3",
];

const STCS: &[&str] = &[
    "Circle ICRS 10.5 -30.25 0.5",
    "CIRCLE 0 90 180",
    "Box ICRS 180 0 10 20",
    "Box FK5 J2000 359.9 -89.9 1 1",
    "Polygon ICRS 10 10 20 10 20 20 10 20",
    "Polygon ICRS BARYCENTER 0 0 120 0 240 0",
    "Polygon 1 1 2 1 1.5 1.0000001",
    "Position ICRS 83.63 22.01",
    "Position GEOCENTER 0 -90",
    "Union ICRS (Circle 1 1 1 Circle 2 2 1)",
    "Circle ICRS TOPOCENTER SPHERICAL2 1 2 3",
];

const CSV: &[&str] = &[
    "ra,dec,name\n10.1,-5.2,a\n11.2,-6.3,b\n",
    "id\tra\tdec\n1\t0.0\t0.0\n2\t359.999\t89.9\n",
    "\"a,b\",\"c\"\"d\"\n1,\"x\ny\"\n",
    "x,y\n1,\n,2\nNaN,inf\n1e400,-0\n",
    "# comment\na;b\n1;2\n",
    "when,flag\n2024-01-01T00:00:00,true\n2024-02-30,false\n",
];

const HTTP: &[&str] = &[
    "GET /tap/sync?REQUEST=doQuery&LANG=ADQL&QUERY=SELECT%20TOP%205%20*%20FROM%20fuzz\n\n",
    "POST /tap/sync\nContent-Type: application/x-www-form-urlencoded\n\nREQUEST=doQuery&LANG=ADQL&FORMAT=csv&MAXREC=3&QUERY=SELECT+ra,dec+FROM+fuzz",
    "POST /tap/async\nAuthorization: Bearer $TOKEN\nContent-Type: application/x-www-form-urlencoded\n\nLANG=ADQL&QUERY=SELECT+COUNT(*)+FROM+fuzz&PHASE=RUN",
    "GET /tap/async\nAuthorization: Bearer $TOKEN\n\n",
    "GET /tap/tables\n\n",
    "GET /tap/capabilities\nHost: localhost:8080\n\n",
    "GET /query/query?sql=SELECT%20*%20FROM%20fuzz%20LIMIT%202&ofmt=csv\nX-DL-AuthToken: $TOKEN\n\n",
    "GET /query/query?sql=SELECT+ra+FROM+fuzz&out=mydb://mine&ofmt=csv\nX-DL-AuthToken: $TOKEN\n\n",
    "GET /query/list\nX-DL-AuthToken: $TOKEN\n\n",
    "GET /storage/ls?name=vos://\nX-DL-AuthToken: $TOKEN\n\n",
    "GET /storage/mkdir?dir=vos://data\nX-DL-AuthToken: $TOKEN\n\n",
    "GET /storage/get?file=vos://t.vot\nX-DL-AuthToken: $TOKEN\n\n",
    "GET /sia/query?POS=CIRCLE%2010%2020%201&BAND=500e-9\n\n",
    "GET /datalink?ID=ivo://meridian/fuzz?1\n\n",
    "GET /soda/sync?ID=ivo://meridian/x&CIRCLE=10%2020%200.1\n\n",
    "GET /ssa?REQUEST=queryData&POS=10,20&SIZE=1\n\n",
    "GET /lightcurve?ID=1001\n\n",
    "GET /moc/fuzz?order=3\n\n",
    "GET /hips/list\n\n",
    "GET /api/auth/whoami\nAuthorization: Bearer $TOKEN\n\n",
    "POST /api/auth/login\nContent-Type: application/x-www-form-urlencoded\n\nusername=fuzzer&password=fuzz-password-1",
    "POST /api/groups\nAuthorization: Bearer $TOKEN\nContent-Type: application/x-www-form-urlencoded\n\nname=team",
    "GET /metrics\nAuthorization: Bearer $ADMIN\n\n",
    "GET /vospace/nodes/fuzzer?detail=max\nAuthorization: Bearer $TOKEN\n\n",
    "DELETE /vospace/nodes/fuzzer/a\nAuthorization: Bearer $TOKEN\n\n",
];
