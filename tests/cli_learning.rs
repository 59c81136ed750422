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

/// The tiny experiment of the diagnostics tests (about a second a fold).
const TINY: &str = r#"
seed = 3

[model]
crop = 24
node_channels = 4
width = 8
embed_dim = 4
window = 8
stride = 4
segment = 8
qk_dim = 4
proj_dim = 8

[pretrain]
epochs = 0

[finetune]
epochs = 2
batch = 4
eval_crops = 2
validation_fraction = 0.25

[evaluate]
folds = 2
"#;

fn tiny_config() -> stptf::config::Config {
    stptf::config::Config::from_toml_str(TINY, Path::new("tiny.toml")).unwrap()
}

fn synthetic(scans: usize, seed: u64) -> (Vec<ndarray::Array2<f32>>, Vec<u32>) {
    stptf::data::synth::generate(&stptf::data::synth::SynthConfig {
        scans,
        regions: 6,
        length: 40,
        classes: 2,
        seed,
        difficulty: 0.2,
    })
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every fine-tuning epoch writes one diagnostics row (training and
/// validation loss and accuracy, spreads, gradient norms per group) and the
/// three diagnostics plots; the validation scans are held out of training.
#[test]
fn every_finetuning_epoch_logs_its_diagnostics() {
    let (arrays, labels) = synthetic(24, 7);
    let dataset = std::sync::Arc::new(
        stptf::data::Dataset::from_arrays(arrays, labels, vec!["a".into(), "b".into()], 24)
            .unwrap(),
    );
    let cfg = tiny_config();
    let tmp = tempfile::tempdir().unwrap();
    let run = stptf::train::rundir::RunDir::create(&tmp.path().join("run")).unwrap();
    let plans = stptf::train::protocol::plan_folds(&dataset, &cfg).unwrap();
    for plan in &plans {
        assert!(!plan.validation.is_empty(), "fold {}", plan.name);
        assert!(
            plan.validation
                .iter()
                .all(|s| !plan.finetune.contains(s) && !plan.test.contains(s)),
            "fold {}: validation scans are neither trained on nor tested",
            plan.name
        );
    }
    stptf::train::protocol::cross_validate(stptf::check::gpu(), &dataset, &cfg, &run, true)
        .unwrap();
    for plan in &plans {
        let fold = run.path().join(format!("fold-{}", plan.name));
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(fold.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &serde_json::Value| r["phase"] == "finetune-epoch")
            .collect();
        assert_eq!(rows.len(), 2, "fold {}: one row per epoch", plan.name);
        for row in &rows {
            let d = &row["diagnostics"];
            for split in ["train", "validation"] {
                for key in ["loss", "accuracy", "embedding_spread", "logit_spread"] {
                    let v = d[split][key].as_f64().unwrap_or(f64::NAN);
                    assert!(v.is_finite() && v >= 0.0, "{split}.{key} = {v}");
                }
            }
            assert_eq!(d["train"]["scans"], plan.finetune.len());
            assert_eq!(d["validation"]["scans"], plan.validation.len());
            let groups: Vec<&str> = d["grad_norms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g[0].as_str().unwrap())
                .collect();
            assert!(groups.contains(&"head"), "{groups:?}");
            let head = d["grad_norms"].as_array().unwrap()
                [groups.iter().position(|g| *g == "head").unwrap()][1]
                .as_f64()
                .unwrap();
            assert!(head > 0.0 && head.is_finite(), "head gradient norm {head}");
        }
        for plot in [
            "diagnostics_finetune.svg",
            "spread_finetune.svg",
            "grad_norms_finetune.svg",
        ] {
            assert!(fold.join(plot).is_file(), "fold {}: no {plot}", plan.name);
        }
        let record = read_json(&fold.join("metrics.json"));
        assert_eq!(record["validation_scans"], plan.validation.len());
    }
    assert!(read_json(&run.path().join("summary.json"))["single_class_folds"].is_array());
}

/// Identical scans get identical logits, so every test scan is predicted as
/// the same class: the fold record and summary.json must say so.
#[test]
fn a_fold_predicting_one_class_is_flagged() {
    let (arrays, _) = synthetic(16, 8);
    let same = vec![arrays[0].clone(); 16];
    let labels: Vec<u32> = (0..16).map(|i| i % 2).collect();
    let dataset = std::sync::Arc::new(
        stptf::data::Dataset::from_arrays(same, labels, vec!["a".into(), "b".into()], 24).unwrap(),
    );
    let mut cfg = tiny_config();
    cfg.finetune.epochs = 1;
    cfg.finetune.validation_fraction = 0.0;
    let tmp = tempfile::tempdir().unwrap();
    let run = stptf::train::rundir::RunDir::create(&tmp.path().join("run")).unwrap();
    let evaluation =
        stptf::train::protocol::cross_validate(stptf::check::gpu(), &dataset, &cfg, &run, true)
            .unwrap();
    for fold in &evaluation.folds {
        let class = fold.single_predicted_class.as_deref();
        assert!(
            matches!(class, Some("a" | "b")),
            "fold {}: {class:?}",
            fold.fold
        );
    }
    let summary = read_json(&run.path().join("summary.json"));
    assert_eq!(
        summary["single_class_folds"].as_array().unwrap().len(),
        evaluation.folds.len()
    );
}
