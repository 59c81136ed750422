//! The built `stptf` binary: `synth` writes a dataset, `inspect` reads it back.

use std::process::Command;

fn stptf() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stptf"));
    command.env("RUST_LOG", "warn").env_remove("RUST_BACKTRACE");
    command
}

#[test]
fn data_cli_synth_then_inspect() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("synthetic");
    let synth = stptf()
        .args(["synth", "--out"])
        .arg(&out)
        .args([
            "--scans",
            "24",
            "--regions",
            "8",
            "--length",
            "50",
            "--classes",
            "3",
            "--seed",
            "5",
        ])
        .output()
        .unwrap();
    assert!(
        synth.status.success(),
        "synth failed: {}",
        String::from_utf8_lossy(&synth.stderr)
    );

    let inspect = stptf()
        .args(["inspect", "--dataset"])
        .arg(out.join("dataset.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    for expected in [
        "scans     24 (of 24 files found)",
        "regions   8",
        "length    min 50, median 50, max 50 frames",
        "classes   0 class0 8 (33.3%), 1 class1 8 (33.3%), 2 class2 8 (33.3%)",
        "sites     4: site1 6, site2 6, site3 6, site4 6",
        "excluded  0",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    // A second synth into the same folder refuses, with a one-line error and no backtrace.
    let again = stptf().args(["synth", "--out"]).arg(&out).output().unwrap();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already exists; refusing to overwrite it"),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");

    // --data replaces the data directory; a missing one is an error naming it.
    let missing = stptf()
        .args(["inspect", "--dataset"])
        .arg(out.join("dataset.toml"))
        .arg("--data")
        .arg(root.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("nowhere: data directory does not exist"),
        "{stderr}"
    );
}

#[test]
fn data_cli_help_lists_the_data_subcommands() {
    let help = stptf().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("inspect") && text.contains("synth"), "{text}");
    let synth_help = stptf().args(["synth", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&synth_help.stdout);
    assert!(
        text.contains("--difficulty") && text.contains("--out"),
        "{text}"
    );
}

/// Issue 10 item 10: an absurd size is a one-line error naming the setting to
/// lower, never an abort on a failed allocation, and nothing is written.
#[test]
fn data_cli_synth_refuses_a_dataset_larger_than_memory() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("huge");
    // 10^6 scans of 10^7 frames: far beyond any machine's memory.
    let synth = stptf()
        .args(["synth", "--out"])
        .arg(&out)
        .args(["--length", "10000000", "--scans", "1000000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&synth.stderr);
    assert_eq!(synth.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("invalid synthetic-data setting: --length 10000000 makes the dataset")
            && stderr.trim_end().ends_with("; lower --length"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}
