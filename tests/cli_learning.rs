//! The learning test: `stptf evaluate` on planted synthetic data (two
//! balanced classes, the in-memory default dataset) reaches at least 80 %
//! mean accuracy over 3 subject-level folds. About a minute on lavapipe
//! (measured 46 s on 2 cores: 92.2 % accuracy).

use std::path::Path;
use std::process::Command;

#[test]
fn evaluate_learns_planted_synthetic_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs/learning.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_stptf"))
        .args([
            "evaluate",
            "--quiet",
            "--config",
            config.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ])
        .output()
        .expect("run stptf");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let accuracy = summary["accuracy"]["mean"].as_f64().unwrap();
    eprintln!(
        "synthetic evaluate: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        accuracy >= 80.0,
        "mean accuracy {accuracy:.1} % < 80 %; folds {:?}",
        summary["accuracy"]["folds"]
    );
}
