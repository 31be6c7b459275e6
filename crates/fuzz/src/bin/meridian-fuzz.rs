//! The libFuzzer driver of Meridian's fuzz targets, built with coverage instrumentation by
//! `scripts/fuzz.sh` (see docs/fuzzing.md). The target comes from `MERIDIAN_FUZZ_TARGET`;
//! with `MERIDIAN_FUZZ_SEEDS=DIR` the target's seeds are written to `DIR` and its
//! dictionary to `DIR.dict` and its longest input to `DIR.max_len` before fuzzing starts.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meridian_fuzz::Target;

fn target() -> Target {
    static T: OnceLock<Target> = OnceLock::new();
    *T.get_or_init(|| {
        let names: Vec<_> = Target::ALL.iter().map(|t| t.name()).collect();
        let name = std::env::var("MERIDIAN_FUZZ_TARGET").unwrap_or_default();
        Target::from_name(&name).unwrap_or_else(|| {
            eprintln!(
                "MERIDIAN_FUZZ_TARGET='{name}': set it to one of {}",
                names.join(", ")
            );
            std::process::exit(2)
        })
    })
}

/// A dictionary entry in libFuzzer's syntax (a quoted string with `\xNN` escapes).
fn quoted(word: &str) -> String {
    let mut s = String::from("\"");
    for b in word.bytes() {
        match b {
            b'"' | b'\\' => s.push_str(&format!("\\{}", b as char)),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02X}")),
        }
    }
    s.push('"');
    s
}

fn write_seeds(dir: &std::path::Path, t: Target) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, data) in meridian_fuzz::seeds::seeds(t) {
        std::fs::write(dir.join(name), data)?;
    }
    let dict: Vec<String> = meridian_fuzz::seeds::dictionary(t)
        .iter()
        .map(|w| quoted(w))
        .collect();
    let beside = |ext: &str| {
        let mut path = dir.as_os_str().to_owned();
        path.push(ext);
        path
    };
    std::fs::write(beside(".max_len"), t.max_len().to_string())?;
    std::fs::write(beside(".dict"), dict.join("\n") + "\n")
}

fuzz_target!(
    init: {
        // Panics of dependencies that Meridian contains as errors are not findings.
        meridian_formats::contain::install_hook();
        let t = target();
        if let Some(dir) = std::env::var_os("MERIDIAN_FUZZ_SEEDS") {
            if let Err(e) = write_seeds(std::path::Path::new(&dir), t) {
                eprintln!("writing the seeds of {}: {e}", t.name());
                std::process::exit(2);
            }
        }
    },
    |data: &[u8]| {
        meridian_fuzz::run(target(), data);
    }
);
