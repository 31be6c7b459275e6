//! The short fuzz run of every `cargo test`: each target over its seeds, over every input
//! kept in `crates/fuzz/regressions/<target>/` (findings of the long runs, each fixed), and
//! over a fixed number of seeded mutations of its seeds. A panic, an HTTP 500 or a hang
//! fails the test. The long runs are `scripts/fuzz.sh` (docs/fuzzing.md).

use std::path::PathBuf;

use meridian_fuzz::{Outcome, Target, mutate::Mutator, run, seeds};

fn regressions(target: Target) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target.name());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("a regression input"))
        })
        .collect();
    out.sort();
    out
}

/// Runs `target` over its seeds (at least `accepted` of which must be accepted: the
/// harness reaches the code it means to), its regressions and `mutations` mutations.
fn short(target: Target, accepted: usize, mutations: usize) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(meridian_formats::contain::install_hook);
    let seeds = seeds::seeds(target);
    assert!(!seeds.is_empty(), "{}: no seeds", target.name());
    let mut ok = 0;
    for (name, data) in &seeds {
        match run(target, data) {
            Outcome::Accepted => ok += 1,
            Outcome::Refused => println!("{}: seed {name} refused", target.name()),
        }
    }
    println!("{}: {ok} of {} seeds accepted", target.name(), seeds.len());
    assert!(
        ok >= accepted,
        "{}: {ok} of {} seeds accepted, expected at least {accepted}",
        target.name(),
        seeds.len()
    );
    for (name, data) in regressions(target) {
        println!("{}: regression {name}", target.name());
        run(target, &data);
    }
    let seed = target
        .name()
        .bytes()
        .fold(0u64, |h, b| h * 31 + u64::from(b));
    let mut m = Mutator::new(seed, &seeds::dictionary(target), target.max_len());
    let mut refused = 0;
    for i in 0..mutations {
        let (_, input) = &seeds[i % seeds.len()];
        let (_, other) = &seeds[(i * 7 + 3) % seeds.len()];
        let data = m.mutate(input, other);
        match std::panic::catch_unwind(|| run(target, &data)) {
            Ok(outcome) => refused += usize::from(outcome == Outcome::Refused),
            Err(panic) => {
                // Kept for a regression test (crates/fuzz/regressions/<target>/).
                let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings");
                std::fs::create_dir_all(&dir).expect("a findings directory");
                let path = dir.join(format!("{}-{i}", target.name()));
                std::fs::write(&path, &data).expect("writing a finding");
                eprintln!(
                    "{}: mutation {i} failed; its input is {}",
                    target.name(),
                    path.display()
                );
                std::panic::resume_unwind(panic);
            }
        }
    }
    println!(
        "{}: {refused} of {mutations} mutations refused",
        target.name()
    );
}

/// Whether ../shared/data is here (the seeds of the file formats come from it).
fn shared_data() -> bool {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/README.md")
        .exists()
}

#[test]
fn adql() {
    short(Target::Adql, 16, 3_000);
}

#[test]
fn sql() {
    short(Target::Sql, 10, 2_000);
}

#[test]
fn stcs() {
    short(Target::Stcs, 10, 20_000);
}

#[test]
fn votable() {
    short(Target::Votable, if shared_data() { 12 } else { 3 }, 2_000);
}

#[test]
fn fits() {
    short(Target::Fits, if shared_data() { 12 } else { 1 }, 1_000);
}

#[test]
fn csv() {
    short(Target::Csv, 7, 5_000);
}

#[test]
fn parquet() {
    short(Target::Parquet, 1, 2_000);
}

#[test]
fn avro() {
    if !shared_data() {
        return;
    }
    short(Target::Avro, 9, 500);
}

#[test]
fn http() {
    short(Target::Http, 24, 4_000);
}

#[test]
fn vospace() {
    short(Target::Vospace, 8, 2_000);
}
