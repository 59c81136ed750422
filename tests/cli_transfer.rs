//! Issue 9, item 6: `stptf evaluate --test-dataset D2` trains on one dataset
//! and scores another (a new site), writing the same summary.json, ROC and
//! per-fold files as a cross-validation with the one fold `transfer`; two
//! datasets that a model cannot bridge are refused before anything is written.

use std::path::Path;
use std::process::{Command, Output};

fn stptf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stptf"))
        .args(args)
        .output()
        .expect("run stptf")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stptf failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn synth(dir: &Path, scans: &str, regions: &str, seed: &str) -> String {
    ok(&stptf(&[
        "synth",
        "--out",
        p(dir),
        "--scans",
        scans,
        "--regions",
        regions,
        "--length",
        "36",
        "--seed",
        seed,
        "--difficulty",
        "0.1",
    ]));
    dir.join("dataset.toml").display().to_string()
}

#[test]
fn evaluate_trains_on_one_dataset_and_scores_another() {
    let tmp = tempfile::tempdir().unwrap();
    let train = synth(&tmp.path().join("a"), "32", "6", "1");
    let test = synth(&tmp.path().join("b"), "20", "6", "2");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs/tiny.toml");
    let run = tmp.path().join("run");
    let printed = ok(&stptf(&[
        "evaluate",
        "--config",
        p(&config),
        "--dataset",
        &train,
        "--test-dataset",
        &test,
        "--out",
        p(&run),
        "--quiet",
        "--set",
        "pretrain.epochs=1",
        "--set",
        "finetune.epochs=1",
    ]));
    assert!(
        printed.contains("trained on 32 scans, tested on the 20 scans of"),
        "{printed}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let folds = summary["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 1);
    let fold = &folds[0];
    assert_eq!(fold["fold"], "transfer");
    // Everything of the first dataset trains; everything of the second is scored.
    assert_eq!(fold["pretrain_scans"], 32);
    assert_eq!(fold["finetune_scans"], 32);
    assert_eq!(fold["test_scans"], 20);
    assert_eq!(summary["accuracy"]["folds"].as_array().unwrap().len(), 1);
    let predictions = std::fs::read_to_string(run.join("fold-transfer/predictions.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 1 + 20);
    assert!(run.join("roc.svg").exists());

    // The test scans are the second dataset's: scoring a third one with other
    // values changes the predictions (and nothing else about training does).
    let other = synth(&tmp.path().join("c"), "20", "6", "3");
    let run2 = tmp.path().join("run2");
    ok(&stptf(&[
        "evaluate",
        "--config",
        p(&config),
        "--dataset",
        &train,
        "--test-dataset",
        &other,
        "--out",
        p(&run2),
        "--quiet",
        "--set",
        "pretrain.epochs=1",
        "--set",
        "finetune.epochs=1",
    ]));
    let predictions2 = std::fs::read_to_string(run2.join("fold-transfer/predictions.csv")).unwrap();
    assert_ne!(predictions, predictions2);
    let loss =
        |dir: &Path| std::fs::read_to_string(dir.join("fold-transfer/metrics.jsonl")).unwrap();
    let strip = |text: String| -> Vec<String> {
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let map = v.as_object_mut().unwrap();
                map.retain(|k, _| k == "phase" || k == "step" || k == "loss");
                v.to_string()
            })
            .filter(|l| l.contains("\"loss\""))
            .collect()
    };
    assert_eq!(
        strip(loss(&run)),
        strip(loss(&run2)),
        "the test dataset changed training"
    );
}

#[test]
fn datasets_a_model_cannot_bridge_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let train = synth(&tmp.path().join("a"), "32", "6", "1");
    let wider = synth(&tmp.path().join("b"), "20", "7", "2");
    let run = tmp.path().join("run");
    let out = stptf(&[
        "evaluate",
        "--dataset",
        &train,
        "--test-dataset",
        &wider,
        "--out",
        p(&run),
        "--quiet",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the test dataset's region count is 7 (")
            && stderr.contains("the training dataset's 6 ("),
        "{stderr}"
    );
    assert!(
        !run.exists(),
        "a refused evaluate created {}",
        run.display()
    );
    let usage = stptf(&["evaluate", "--dataset", &train, "--test-data", "x"]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "--test-data without --test-dataset"
    );
}
