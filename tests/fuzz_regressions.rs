//! The fuzz targets' inputs, replayed: every seed (`fuzz/corpus/<target>/`)
//! and every input a fuzzer found a problem with (`tests/fixtures/fuzz/<target>/`)
//! goes through the same function the fuzz target calls (`stptf::fuzzing`),
//! and must give `Ok` or an error, never a panic. The fuzzers themselves are
//! run by hand (docs/reliability.md); this test keeps what they found fixed.

use std::path::{Path, PathBuf};

use stptf::fuzzing::{self, Outcome};

type Target = fn(&[u8]) -> Outcome;

const TARGETS: &[(&str, Target)] = &[
    ("text_table", fuzzing::text_table),
    ("npy", fuzzing::npy),
    ("mat", fuzzing::mat),
    ("toml", fuzzing::toml),
    ("checkpoint", fuzzing::checkpoint),
];

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for folder in [
        root.join("fuzz/corpus").join(target),
        root.join("tests/fixtures/fuzz").join(target),
    ] {
        if let Ok(entries) = std::fs::read_dir(&folder) {
            files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    files.sort();
    files
}

/// Runs one input, turning a panic into a failure that names the file.
fn replay(target: Target, path: &Path) -> Outcome {
    let bytes = std::fs::read(path).unwrap();
    std::panic::catch_unwind(|| target(&bytes))
        .unwrap_or_else(|_| panic!("{}: the parser panicked", path.display()))
}

#[test]
fn every_fuzz_input_gives_ok_or_an_error() {
    for &(name, target) in TARGETS {
        let files = inputs(name);
        assert!(!files.is_empty(), "no inputs for the {name} target");
        for path in files {
            if let Err(message) = replay(target, &path) {
                assert!(!message.is_empty(), "{}: an empty error", path.display());
            }
        }
    }
}

/// The seeds load: they reach the code past the first check.
#[test]
fn seeds_parse() {
    for &(name, target) in TARGETS {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
        for path in inputs(name).iter().filter(|p| p.starts_with(&root)) {
            let outcome = replay(target, path);
            assert!(outcome.is_ok(), "{}: {:?}", path.display(), outcome);
        }
    }
}

/// Writes the checkpoint target's seeds from the crate's own `save` (run
/// after a change to the checkpoint format):
/// `cargo test --release --test fuzz_regressions -- --ignored write_checkpoint_seeds`.
#[test]
#[ignore]
fn write_checkpoint_seeds() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/checkpoint");
    std::fs::create_dir_all(&folder).unwrap();
    for (mode, (name, bytes)) in fuzzing::reference_files().into_iter().enumerate() {
        let mut input = vec![mode as u8];
        input.extend(bytes);
        std::fs::write(folder.join(name), input).unwrap();
    }
}
