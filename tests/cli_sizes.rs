//! Issue 10: absurd sizes are refused before anything is allocated, naming
//! the config key to lower: never an abort on a failed allocation, never an
//! internal launch error, and `--out` is left as it was. The exact messages
//! (with fixed limits) are in `model::sizes`'s unit tests; here the parts
//! that do not depend on the adapter's limits and name.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

fn stptf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stptf"))
        .args(args)
        .output()
        .expect("run stptf")
}

/// The command's stderr, after checking it failed cleanly (exit 1, no panic).
fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// `stptf <cmd>` on the built-in quick experiment (in-memory synthetic data)
/// with `--set key=value`, into `out`: its stderr, and that it left no `out`.
fn refused_with(cmd: &str, set: &[&str], out: &Path) -> String {
    let mut args = vec![cmd, "--quiet", "--out", out.to_str().unwrap()];
    for s in set {
        args.extend(["--set", s]);
    }
    let t0 = Instant::now();
    let stderr = refused(&stptf(&args));
    // Refused before any GPU work (opening the adapter takes the most).
    assert!(
        t0.elapsed().as_secs() < 10,
        "{cmd} {set:?} took {:?}",
        t0.elapsed()
    );
    assert!(!out.exists(), "{cmd} {set:?} left {}", out.display());
    stderr
}

/// The error is one line: `start`, then the limit and the adapter's name
/// (which vary by machine), then `end`.
fn assert_message(stderr: &str, start: &str, end: &str) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("expected a line starting {start:?} in: {stderr}"));
    assert!(
        line.ends_with(end),
        "expected {end:?} at the end of: {line}"
    );
    assert_eq!(stderr.trim_end(), line, "one line of error");
}

#[test]
fn a_wide_model_is_refused_naming_model_width() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    for cmd in ["pretrain", "finetune", "evaluate"] {
        let e = refused_with(cmd, &["model.width=100000"], &out);
        assert!(e.contains("-byte storage binding limit of "), "{e}");
        assert_message(
            &e,
            "error: parameter calib.v.weight [100000, 100000, 3] would take 120000000000 bytes, over the ",
            "(a weight is bound whole by the kernels that use it); lower model.width",
        );
    }
}

#[test]
fn a_wide_projector_is_refused_naming_model_proj_dim() {
    let tmp = tempfile::tempdir().unwrap();
    let e = refused_with(
        "pretrain",
        &["model.proj_dim=200000"],
        &tmp.path().join("run"),
    );
    assert_message(
        &e,
        "error: parameter proj.fc2.weight [200000, 200000] would take 160000000000 bytes, over the ",
        "(a weight is bound whole by the kernels that use it); lower model.proj_dim",
    );
}

#[test]
fn a_long_crop_is_refused_naming_model_crop_and_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let e = refused_with("pretrain", &["model.crop=200000"], &out);
    assert_message(
        &e,
        "error: activation the calibration maps CCM, TAW, CAM [32, 200000, 200000] would take 5120000000000 bytes, over the ",
        "(a tensor is one buffer; launches are split, buffers are not); lower model.crop or pretrain.batch",
    );
    let e = refused_with("finetune", &["model.crop=200000", "finetune.batch=4"], &out);
    assert_message(
        &e,
        "error: activation the calibration maps CCM, TAW, CAM [4, 200000, 200000] would take 640000000000 bytes",
        "lower model.crop or finetune.batch",
    );
}

#[test]
fn sizes_past_32_bits_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    // Past a TOML integer (i64): out of range, not "invalid type: string".
    let e = refused_with(
        "pretrain",
        &["model.node_channels=18446744073709551615"],
        &tmp.path().join("run"),
    );
    assert_eq!(
        e.trim_end(),
        "error: config key \"model.node_channels\" = 18446744073709551615: expected an integer: \
         18446744073709551615 is out of range: this key takes an integer from 0 to 9223372036854775807"
    );
    let e = refused_with(
        "pretrain",
        &["model.node_channels=5000000000"],
        &tmp.path().join("run"),
    );
    assert_message(
        &e,
        "error: model.node_channels = 5000000000 is above 4294967295, the largest size the kernels index with 32-bit integers",
        "; lower model.node_channels",
    );
}
