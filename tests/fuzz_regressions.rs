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

/// The seeds load (those named `error_*` are refused on purpose), so the
/// fuzzers start from inputs that reach past the first check.
#[test]
fn seeds_parse() {
    let mut failed = Vec::new();
    for &(name, target) in TARGETS {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        for path in inputs(name).iter().filter(|p| p.starts_with(&root)) {
            let expect_error = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("error_"));
            let outcome = replay(target, path);
            if outcome.is_ok() == expect_error {
                failed.push(format!("{}: {outcome:?}", path.display()));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
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

fn fixture(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Found by the npy target (timeouts, over 10 s each): npyz's header parser
/// takes time exponential in the bracket nesting (about 3x per `{`).
/// Refused up front, with the depth found and allowed.
#[test]
fn npy_header_nested_brackets_is_refused_quickly() {
    let cases = [
        ("timeout-3f17a6ba0470", 15), // 15 x `{`
        ("timeout-7885bcbcfd62", 14), // a tab, 14 x `{`
        ("timeout-19941e1e15be", 30), // 30 x `[` and junk
        ("timeout-c320da31bd1b", 28),
        ("timeout-98a1a982c656", 31),
    ];
    for (name, depth) in cases {
        let started = std::time::Instant::now();
        let outcome = fuzzing::npy(&fixture("npy", name));
        assert_eq!(
            outcome,
            Err(format!(
                "scan.npy: not a valid .npy file: its header nests brackets {depth} deep; \
                 a .npy header is a dict of 'descr', 'fortran_order' and 'shape', at most 4 deep"
            )),
            "{name}"
        );
        assert!(
            started.elapsed().as_secs_f64() < 1.0,
            "{name}: {:?}",
            started.elapsed()
        );
    }
}

/// Found by the npy target in its 30-minute rerun on the fixed code (a
/// crash: npyz's element count overflowed): a shape whose size overflows
/// 64 bits is refused naming it.
#[test]
fn npy_shape_whose_size_overflows_is_refused() {
    let outcome = fuzzing::npy(&fixture("npy", "crash-b6f19c470819"));
    assert_eq!(
        outcome,
        Err(
            "scan.npy: not a valid .npy file: its shape [4715491176541352389, 6] holds more \
             bytes than a file can"
                .to_string()
        )
    );
}

/// The same header inside a .npz member is refused the same way, and a
/// header 4 deep (the most allowed) still gets npyz's own verdict quickly.
#[test]
fn npy_nesting_limit_applies_in_npz_and_allows_four() {
    let header = |text: &[u8]| {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((text.len() as u16).to_le_bytes());
        bytes.extend(text);
        bytes
    };
    let started = std::time::Instant::now();
    let mut input = vec![0u8];
    input.extend(header(b"{{{{"));
    let outcome = fuzzing::npy(&input);
    assert!(
        outcome
            .as_ref()
            .is_err_and(|e| !e.contains("nests brackets")),
        "{outcome:?}"
    );
    assert!(started.elapsed().as_secs_f64() < 1.0);
    let mut input = vec![0u8];
    input.extend(header(b"{{{{{"));
    assert!(fuzzing::npy(&input)
        .unwrap_err()
        .contains("its header nests brackets 5 deep"));
    // A .npz holding x.npy whose header is 20 x `{` (tests/fixtures/fuzz/npy).
    assert_eq!(
        fuzzing::npy(&fixture("npy", "npz_nested_header")),
        Err(
            "scan.npz: not a valid .npy file: its header nests brackets 20 deep; \
             a .npy header is a dict of 'descr', 'fortran_order' and 'shape', at most 4 deep"
                .to_string()
        )
    );
    assert!(started.elapsed().as_secs_f64() < 1.0);
}

/// Found by the mat target (620 panics in its first 15 minutes, at two
/// sites in matfile 0.5: the padding of an element of 0xFFFFFFF9+ bytes,
/// and the product of an array's dimensions, both overflowing). Refused
/// before matfile parses, naming the element or array and its byte offset.
#[test]
fn mat_sizes_that_overflow_are_refused() {
    let prefix = "scan.mat: cannot read MATLAB file: a damaged MATLAB v5/v7 MAT-file: ";
    let cases = [
        (
            "crash-big_element-00e09b1a4503",
            "the data element at byte 128 declares 4294967295 bytes but only 124 follow",
        ),
        (
            "crash-other-016cf059aae0",
            "the data element at byte 152 declares 4294967295 bytes but only 91 follow",
        ),
        (
            "crash-matrix-006c2a05f50e",
            "the array at byte 136 has dimensions [197120, -65536]; \
             expected non-negative sizes whose product fits in 2^31 - 1 elements",
        ),
    ];
    for (name, message) in cases {
        assert_eq!(
            fuzzing::mat(&fixture("mat", name)),
            Err(format!("{prefix}{message}")),
            "{name}"
        );
    }
}
