//! The training commands end to end on tiny synthetic data: exit codes, the
//! files each writes, `--help`, bad invocations, and `--resume`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn stptf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stptf"))
        .args(args)
        .output()
        .expect("run stptf")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "stptf failed: {stderr}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure; stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

fn tiny_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/configs/tiny.toml")
        .display()
        .to_string()
}

/// A synthetic dataset on disk: 48 scans, 8 regions, 48 frames.
fn synth(dir: &Path, regions: usize) -> String {
    let out = dir.join(format!("synth{regions}"));
    ok(&stptf(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--scans",
        "48",
        "--regions",
        &regions.to_string(),
        "--length",
        "48",
        "--seed",
        "1",
        "--difficulty",
        "0.1",
    ]));
    out.join("dataset.toml").display().to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_training_subcommand_has_help() {
    for cmd in [
        "pretrain", "finetune", "evaluate", "predict", "bench", "info", "synth", "inspect",
        "baseline",
    ] {
        let text = ok(&stptf(&[cmd, "--help"]));
        assert!(text.contains("Usage"), "{cmd}: {text}");
    }
}

#[test]
fn pretrain_finetune_predict_write_their_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(tmp.path(), 8);
    let pre = tmp.path().join("pre");
    ok(&stptf(&[
        "pretrain",
        "--config",
        &tiny_config(),
        "--dataset",
        &ds,
        "--out",
        path(&pre),
        "--quiet",
    ]));
    for f in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "loss_pretrain.svg",
        "checkpoint-pretrain/weights.safetensors",
        "checkpoint-pretrain/checkpoint.json",
    ] {
        assert!(pre.join(f).exists(), "pretrain did not write {f}");
    }
    let ft = tmp.path().join("ft");
    ok(&stptf(&[
        "finetune",
        "--config",
        &tiny_config(),
        "--dataset",
        &ds,
        "--from",
        path(&pre),
        "--out",
        path(&ft),
        "--quiet",
    ]));
    assert!(ft.join("checkpoint-finetune/weights.safetensors").exists());
    assert!(ft.join("region_importance.svg").exists() && ft.join("region_importance.csv").exists());
    let importance = std::fs::read_to_string(ft.join("region_importance.csv")).unwrap();
    assert_eq!(
        importance.lines().count(),
        9,
        "header + 8 regions: {importance}"
    );
    let csv = tmp.path().join("pred.csv");
    ok(&stptf(&[
        "predict",
        "--model",
        path(&ft),
        "--dataset",
        &ds,
        "--out",
        path(&csv),
    ]));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 49, "header + one row per scan");
    assert!(lines[0].starts_with("id,predicted,p_"), "{}", lines[0]);
    for row in &lines[1..] {
        let cells: Vec<&str> = row.split(',').collect();
        let p: f64 = cells[2..].iter().map(|c| c.parse::<f64>().unwrap()).sum();
        assert!((p - 1.0).abs() < 1e-4, "probabilities sum to {p}: {row}");
    }
}

#[test]
fn evaluate_writes_summary_in_the_papers_form() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(tmp.path(), 8);
    let run = tmp.path().join("eval");
    let stdout = ok(&stptf(&[
        "evaluate",
        "--config",
        &tiny_config(),
        "--dataset",
        &ds,
        "--out",
        path(&run),
        "--quiet",
    ]));
    assert!(
        stdout.contains("Accuracy") && stdout.contains("AUC") && stdout.contains("Recall"),
        "{stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    for key in ["accuracy", "auc", "recall"] {
        let folds = summary[key]["folds"].as_array().unwrap();
        assert_eq!(folds.len(), 2, "{key}");
        assert!(summary[key]["mean"].as_f64().unwrap().is_finite());
    }
    assert!(run.join("roc.svg").exists());
}

#[test]
fn bad_invocations_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(tmp.path(), 8);
    let out = tmp.path().join("x");
    fails_with(
        &stptf(&[
            "pretrain",
            "--config",
            &tiny_config(),
            "--dataset",
            &ds,
            "--out",
            path(&out),
            "--set",
            "pretrain.lrr=1",
        ]),
        "pretrain.lrr",
    );
    fails_with(
        &stptf(&[
            "finetune",
            "--config",
            &tiny_config(),
            "--dataset",
            &ds,
            "--from",
            path(&tmp.path().join("missing")),
            "--quiet",
        ]),
        "missing",
    );
    // A model pretrained on 8 regions used on 12-region data.
    let pre = tmp.path().join("pre8");
    ok(&stptf(&[
        "pretrain",
        "--config",
        &tiny_config(),
        "--dataset",
        &ds,
        "--out",
        path(&pre),
        "--quiet",
        "--set",
        "pretrain.epochs=1",
    ]));
    let ds12 = synth(tmp.path(), 12);
    fails_with(
        &stptf(&[
            "finetune",
            "--config",
            &tiny_config(),
            "--dataset",
            &ds12,
            "--from",
            path(&pre),
            "--out",
            path(&tmp.path().join("ft12")),
            "--quiet",
        ]),
        "does not fit",
    );
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn a_resumed_run_ends_exactly_like_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(tmp.path(), 8);
    let whole: PathBuf = tmp.path().join("whole");
    let parts: PathBuf = tmp.path().join("parts");
    let common = [
        "--config",
        tiny_config().leak(),
        "--dataset",
        ds.clone().leak(),
        "--quiet",
        "--set",
        "pretrain.epochs=4",
    ];
    ok(&stptf(
        &[&["pretrain", "--out", path(&whole)], &common[..]].concat(),
    ));
    ok(&stptf(
        &[
            &[
                "pretrain",
                "--out",
                path(&parts),
                "--stop-after-epochs",
                "2",
            ],
            &common[..],
        ]
        .concat(),
    ));
    ok(&stptf(&[
        "pretrain",
        "--resume",
        path(&parts),
        "--dataset",
        &ds,
        "--quiet",
    ]));
    assert_eq!(
        losses(&whole),
        losses(&parts),
        "per-step losses differ after resuming"
    );
    let a = std::fs::read(whole.join("checkpoint-pretrain/weights.safetensors")).unwrap();
    let b = std::fs::read(parts.join("checkpoint-pretrain/weights.safetensors")).unwrap();
    assert!(a == b, "final weights differ after resuming");
    let a = std::fs::read(whole.join("checkpoint-pretrain/optimizer.safetensors")).unwrap();
    let b = std::fs::read(parts.join("checkpoint-pretrain/optimizer.safetensors")).unwrap();
    assert!(a == b, "final AdamW moments differ after resuming");
}

#[test]
fn a_diverging_run_stops_with_the_step_and_last_finite_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(tmp.path(), 8);
    let out = tmp.path().join("nan");
    let result = stptf(&[
        "pretrain",
        "--config",
        &tiny_config(),
        "--dataset",
        &ds,
        "--out",
        path(&out),
        "--quiet",
        "--set",
        "pretrain.lr=1e30",
        "--set",
        "pretrain.epochs=6",
    ]);
    fails_with(&result, "the loss became");
    fails_with(&result, "last finite loss");
}
