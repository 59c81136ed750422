//! Fold-level jobs: `evaluate --fold K` for every fold into one shared run
//! directory, then `evaluate --collect`, give the summary.json, roc.svg and
//! predictions of a full `evaluate`; `--collect` names missing folds, and a
//! fold is never run twice into the same folder. Tiny synthetic data.

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
    assert!(!stderr.contains("panicked"), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// summary.json without what differs between any two runs: the timings.
fn summary_without_timings(run: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&read(&run.join("summary.json"))).unwrap();
    v.as_object_mut().unwrap().remove("wall_seconds").unwrap();
    for fold in v["folds"].as_array_mut().unwrap() {
        let f = fold.as_object_mut().unwrap();
        for key in ["pretrain_seconds", "finetune_seconds", "eval_seconds"] {
            f.remove(key).unwrap();
        }
    }
    v
}

#[test]
fn folds_run_one_by_one_then_collected_equal_a_full_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let synth = tmp.path().join("synth");
    ok(&stptf(&[
        "synth",
        "--out",
        synth.to_str().unwrap(),
        "--scans",
        "24",
        "--regions",
        "4",
        "--length",
        "40",
        "--seed",
        "2",
        "--difficulty",
        "0.1",
    ]));
    let dataset = synth.join("dataset.toml");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs/tiny.toml");
    let common = |out: &Path| -> Vec<String> {
        [
            "--config",
            config.to_str().unwrap(),
            "--dataset",
            dataset.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--set",
            "pretrain.epochs=1",
            "--set",
            "finetune.epochs=1",
            "--set",
            "evaluate.folds=3",
        ]
        .map(String::from)
        .to_vec()
    };
    let run_with = |extra: &[&str], out: &Path| -> Output {
        let mut args: Vec<String> = vec!["evaluate".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(common(out));
        stptf(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let full = tmp.path().join("full");
    ok(&run_with(&[], &full));

    let jobs = tmp.path().join("jobs");
    let jobs_s = jobs.to_str().unwrap();
    // Out of order, as a scheduler may run them; fold 2 by its position.
    ok(&run_with(&["--fold", "3"], &jobs));
    let early = stptf(&["evaluate", "--collect", jobs_s]);
    fails_with(&early, "1 of 3 folds finished; missing: 1, 2");
    assert!(!jobs.join("summary.json").exists(), "nothing merged early");
    ok(&run_with(&["--fold", "1"], &jobs));
    // A finished fold is not run again over itself.
    fails_with(&run_with(&["--fold", "1"], &jobs), "is finished already");
    fails_with(
        &run_with(&["--fold", "4"], &jobs),
        "no fold \"4\": the folds are 1, 2, 3",
    );
    // A job with another seed does not join the run.
    let mut other = vec![
        "evaluate".to_string(),
        "--fold".into(),
        "2".into(),
        "--seed".into(),
        "9".into(),
    ];
    other.extend(common(&jobs));
    fails_with(
        &stptf(&other.iter().map(String::as_str).collect::<Vec<_>>()),
        "config.toml: another config",
    );
    ok(&run_with(&["--fold", "2"], &jobs));
    let table = ok(&stptf(&["evaluate", "--collect", jobs_s]));
    assert!(table.contains("AUC"), "{table}");

    assert_eq!(
        summary_without_timings(&jobs),
        summary_without_timings(&full)
    );
    assert_eq!(read(&jobs.join("roc.svg")), read(&full.join("roc.svg")));
    assert_eq!(
        read(&jobs.join("config.toml")),
        read(&full.join("config.toml"))
    );
    for fold in ["1", "2", "3"] {
        let f = format!("fold-{fold}/predictions.csv");
        assert_eq!(read(&jobs.join(&f)), read(&full.join(&f)), "{f}");
    }
    fails_with(
        &stptf(&["evaluate", "--collect", synth.to_str().unwrap()]),
        "not an evaluate run directory",
    );
    fails_with(&stptf(&["evaluate", "--fold", "1"]), "--out");
}
