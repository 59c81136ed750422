//! Issue 10: every training command (pretrain, finetune, evaluate, evaluate
//! --fold) that fails before its first step leaves `--out` as it found it,
//! so the same `--out` works next time (`RunDir::attempt`).

use std::path::Path;
use std::process::{Command, Output};

fn stptf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stptf"))
        .args(args)
        .output()
        .expect("run stptf")
}

fn ok(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stptf failed: {stderr}");
}

fn fails(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// 32 scans of 6 regions and 36 frames.
fn synth(dir: &Path) -> String {
    ok(&stptf(&[
        "synth",
        "--out",
        p(dir),
        "--scans",
        "32",
        "--regions",
        "6",
        "--length",
        "36",
        "--seed",
        "1",
        "--difficulty",
        "0.1",
    ]));
    dir.join("dataset.toml").display().to_string()
}

fn run(cmd: &str, ds: &str, out: &Path, extra: &[&str]) -> Output {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs/tiny.toml");
    let mut args = vec![
        cmd,
        "--config",
        p(&config),
        "--dataset",
        ds,
        "--out",
        p(out),
        "--quiet",
        "--set",
        "pretrain.epochs=1",
        "--set",
        "finetune.epochs=1",
        "--set",
        "pretrain.batch=8",
        "--set",
        "finetune.batch=8",
    ];
    args.extend_from_slice(extra);
    stptf(&args)
}

/// Names and contents of the files under `dir`, sorted.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_finetune_that_fails_before_it_starts_leaves_out_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(&tmp.path().join("data"));
    let out = tmp.path().join("run");
    // A bad --from is found after the run directory is made.
    let e = fails(&run(
        "finetune",
        &ds,
        &out,
        &["--from", p(&tmp.path().join("missing"))],
    ));
    assert!(
        e.contains("loading the pretrained checkpoint --from"),
        "{e}"
    );
    assert!(!out.exists(), "the failed finetune left {}", out.display());
    // A model too large for the GPU, into a folder the user made: it stays, empty.
    std::fs::create_dir(&out).unwrap();
    let e = fails(&run(
        "finetune",
        &ds,
        &out,
        &["--set", "model.width=100000"],
    ));
    assert!(e.contains("lower model.width"), "{e}");
    assert!(listing(&out).is_empty());
    // The same --out works.
    ok(&run("finetune", &ds, &out, &[]));
    assert!(out.join("config.toml").exists() && out.join("checkpoint-finetune").exists());
}

#[test]
fn an_evaluate_that_fails_before_it_starts_leaves_out_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(&tmp.path().join("data"));
    let out = tmp.path().join("a/run");
    // Each fold pretrains on 16 scans: a batch of 24 cannot be formed, which
    // the first fold finds after writing config.toml, folds.json, fold-1/.
    let big = ["--set", "pretrain.batch=24"];
    let e = fails(&run("evaluate", &ds, &out, &big));
    assert!(
        e.contains("pretraining needs at least one full batch"),
        "{e}"
    );
    assert!(
        !tmp.path().join("a").exists(),
        "the failed evaluate left {}",
        out.display()
    );

    // One fold job into a shared directory that already holds a file: only
    // what the job added goes.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let before = listing(&out);
    let mut fold: Vec<&str> = big.to_vec();
    fold.extend(["--fold", "1"]);
    let e = fails(&run("evaluate", &ds, &out, &fold));
    assert!(
        e.contains("pretraining needs at least one full batch"),
        "{e}"
    );
    assert_eq!(listing(&out), before);
    // The same --out works, for the fold job and (emptied) for a full evaluate.
    ok(&run("evaluate", &ds, &out, &["--fold", "1"]));
    assert!(out.join("fold-1/metrics.json").exists() && out.join("notes.txt").exists());
    std::fs::remove_dir_all(&out).unwrap();
    ok(&run("evaluate", &ds, &out, &[]));
    assert!(out.join("summary.json").exists());
}
