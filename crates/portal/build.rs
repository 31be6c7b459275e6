//! Builds the portal (`web/`, Svelte and Vite) with the machine's node and npm and embeds
//! its files: `npm ci` from the committed lock file when `node_modules` does not match it,
//! then `vite build` into `OUT_DIR`. Text files also get a gzip copy.
//!
//! `MERIDIAN_PORTAL_DIST=DIR` embeds an already built portal instead (a machine without
//! node). Where the build cannot run, the binary gets a page that says why and how to
//! build it, and the build warns; `MERIDIAN_PORTAL_REQUIRED=1` makes that an error.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let web = manifest.join("../../web");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for f in [
        "src",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.js",
        "public",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(f).display());
    }
    for v in [
        "MERIDIAN_PORTAL_DIST",
        "MERIDIAN_PORTAL_REQUIRED",
        "NPM",
        "NODE",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let dist = match std::env::var_os("MERIDIAN_PORTAL_DIST") {
        Some(d) => Ok(PathBuf::from(d)),
        None => build(&web, &out.join("dist")),
    };
    let (dist, built) = match dist {
        Ok(d) => (d, true),
        Err(why) => {
            if std::env::var_os("MERIDIAN_PORTAL_REQUIRED").is_some_and(|v| v != "0") {
                panic!("the portal could not be built: {why}");
            }
            println!("cargo:warning=the web portal was not built ({why}); `/` explains how");
            let d = out.join("placeholder");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("index.html"), placeholder(&why)).unwrap();
            (d, false)
        }
    };
    embed(&dist, &out, built);
}

/// `npm ci` (when needed) and `vite build` into `dist`.
fn build(web: &Path, dist: &Path) -> Result<PathBuf, String> {
    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".into());
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    // Two builds of one clone (a check and a build at once) take turns.
    let lock = std::fs::File::create(std::env::temp_dir().join(format!(
        "meridian-portal-{:x}.lock",
        web.canonicalize()
            .map(|p| fnv(p.to_string_lossy().as_bytes()))
            .unwrap_or(0)
    )))
    .map_err(|e| format!("lock file: {e}"))?;
    lock.lock().map_err(|e| format!("lock: {e}"))?;
    let lock_file = std::fs::read(web.join("package-lock.json"))
        .map_err(|e| format!("{}: {e}", web.join("package-lock.json").display()))?;
    let stamp = web.join("node_modules/.meridian-lock");
    let want = format!("{:x}", fnv(&lock_file));
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        run(
            Command::new(&npm)
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(web),
            "npm ci",
        )?;
        std::fs::write(&stamp, &want).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    run(
        Command::new(&node)
            .arg("node_modules/vite/bin/vite.js")
            .args(["build", "--logLevel", "warn", "--emptyOutDir", "--outDir"])
            .arg(dist)
            .current_dir(web),
        "vite build",
    )?;
    Ok(dist.to_path_buf())
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{what} failed: {}", tail.join(" | ")));
    }
    Ok(())
}

/// 64-bit FNV-1a: a change stamp, not a security hash.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn placeholder(why: &str) -> String {
    let why = why
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Meridian</title>\
         </head><body><h1>Meridian</h1><p>The web portal was not built into this binary: \
         {why}.</p><p>It needs node (20.19 or later) and npm: install them and build again \
         (<code>cargo build --release -p meridian</code>), or build it elsewhere with \
         <code>npm ci &amp;&amp; npm run build</code> in <code>web/</code> and set \
         <code>MERIDIAN_PORTAL_DIST</code> to its <code>dist</code> directory.</p>\
         <p>The services work without it: TAP at <a href=\"tap\">tap</a>.</p></body></html>"
    )
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        "txt" | "" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn files(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, base, out);
        } else {
            let rel = p
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, p));
        }
    }
}

/// Writes `assets.rs`: one `Asset` per file of `dist`, its bytes (and gzip copy) included.
fn embed(dist: &Path, out: &Path, built: bool) {
    let mut list = Vec::new();
    files(dist, dist, &mut list);
    let gz_dir = out.join("gz");
    std::fs::create_dir_all(&gz_dir).unwrap();
    let mut code = format!("/// Whether the portal was built.\npub const BUILT: bool = {built};\n");
    code.push_str("/// The portal's files.\npub static ASSETS: &[Asset] = &[\n");
    for (i, (rel, path)) in list.iter().enumerate() {
        let ct = content_type(rel);
        let bytes = std::fs::read(path).unwrap();
        let compressible = ct.starts_with("text/") || ct.contains("json") || ct.contains("svg");
        let gz = if compressible && bytes.len() > 1024 {
            let gz_path = gz_dir.join(format!("{i}.gz"));
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&bytes).unwrap();
            std::fs::write(&gz_path, e.finish().unwrap()).unwrap();
            format!("Some(include_bytes!({:?}))", gz_path.display().to_string())
        } else {
            "None".to_string()
        };
        writeln!(
            code,
            "    Asset {{ path: {rel:?}, content_type: {ct:?}, body: include_bytes!({:?}), gzip: {gz} }},",
            path.canonicalize().unwrap().display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    std::fs::write(out.join("assets.rs"), code).unwrap();
}
