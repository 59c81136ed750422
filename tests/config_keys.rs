//! No setting that does nothing: every key of assets/default.toml (and the
//! optional `data.dataset`) is changed, one at a time, from a small base
//! experiment, and what runs must change. "What runs" is observed through the
//! library's own protocol (`train::protocol::cross_validate`, the code behind
//! `stptf evaluate`) on a tiny on-disk synthetic dataset: every fold's
//! per-step loss and learning rate (metrics.jsonl), its scan counts and
//! metrics (metrics.json), its test-scan probabilities (predictions.csv), and
//! the connectivity baseline's probabilities on the same folds (`stptf
//! baseline`, the only user of `baseline.*`). Timings are left out; the base run is
//! done twice and must repeat exactly, so a difference is the key's doing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stptf::check::gpu;
use stptf::config::Config;
use stptf::data::synth::{write_dataset, SynthConfig};
use stptf::train::protocol::{baseline_folds, cross_validate, load_dataset, run_baseline};
use stptf::train::rundir::RunDir;

/// The base experiment: small enough for about a second per evaluation.
const BASE: &str = r#"
seed = 1

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
epochs = 1
batch = 4

[finetune]
epochs = 1
batch = 4
eval_crops = 2

[evaluate]
folds = 2
"#;

/// Each key with a value that must change what runs (sizes that still fit,
/// rates far enough from the base to show in f32 losses). `DATASET_B` and
/// the synthetic site names (site1 … site4) refer to the test's datasets.
const CHANGES: &[(&str, &str)] = &[
    ("seed", "2"),
    ("data.dataset", "DATASET_B"),
    ("data.pretrain_sites", r#"["site1", "site2"]"#),
    ("data.finetune_sites", r#"["site1", "site2", "site3"]"#),
    ("model.crop", "32"),
    ("model.node_channels", "6"),
    ("model.width", "12"),
    ("model.embed_dim", "6"),
    ("model.window", "12"),
    ("model.stride", "6"),
    ("model.segment", "4"),
    ("model.qk_dim", "6"),
    ("model.proj_dim", "12"),
    ("model.norm", "layer"),
    ("model.residual", "input"),
    ("model.encoder", "gcn-only"),
    ("model.head_norm", "batch"),
    ("model.node_features", "pearson"),
    ("finetune.diagnostic_scans", "3"),
    ("augment.kind", "random"),
    ("augment.sca", "false"),
    ("augment.tca", "false"),
    ("augment.p_scale", "0.5"),
    ("augment.p_max", "0.05"),
    ("pretrain.epochs", "2"),
    ("pretrain.batch", "6"),
    ("pretrain.lr", "1e-2"),
    ("pretrain.lr_min", "1e-4"),
    ("pretrain.warmup_fraction", "0.5"),
    ("pretrain.weight_decay", "10"),
    ("pretrain.fgco", "fine"),
    ("pretrain.lambda_offdiag", "0.5"),
    ("finetune.epochs", "2"),
    ("finetune.batch", "6"),
    ("finetune.lr", "1e-2"),
    ("finetune.lr_min", "1e-5"),
    ("finetune.warmup_fraction", "0.5"),
    ("finetune.weight_decay", "10"),
    ("finetune.freeze_encoder", "true"),
    ("finetune.label_fraction", "0.5"),
    ("finetune.eval_crops", "3"),
    ("finetune.validation_fraction", "0.25"),
    ("finetune.head_lr_multiplier", "100"),
    ("finetune.dropout", "0.5"),
    ("evaluate.folds", "3"),
    ("evaluate.split", "leave-site-out"),
    ("evaluate.include_test_unlabeled", "true"),
    ("baseline.c_reg", "0.01"),
    ("baseline.features", "partial"),
    ("explain.in_evaluate", "true"),
];

/// Keys that act only together with others: (key, value, the context both
/// the reference and the changed run get). Early stopping needs a
/// validation split, and epochs for the validation loss to rise in (a high
/// lr makes it bumpy on the tiny data).
/// Assignments (key, value) that set up a context.
type Context = &'static [(&'static str, &'static str)];

const IN_CONTEXT: &[(&str, &str, Context)] = &[
    (
        "finetune.early_stopping_patience",
        "1",
        &[
            ("finetune.validation_fraction", "0.25"),
            ("finetune.epochs", "6"),
            ("finetune.lr", "0.05"),
        ],
    ),
    // Profile normalization acts on connectivity profiles.
    (
        "model.profile_norm",
        "standardize",
        &[("model.node_features", "pearson")],
    ),
    // The explanation's settings act where evaluate explains its folds.
    ("explain.max_scans", "3", EXPLAINED),
    ("explain.heatmap", "false", EXPLAINED),
    ("explain.perturbation", "zero", EXPLAINED),
    ("explain.draws", "2", EXPLAINED),
];

const EXPLAINED: Context = &[("explain.in_evaluate", "true")];

/// Every dotted key below a TOML table.
fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => keys(t, &key, out),
            _ => out.push(key),
        }
    }
}

/// The keys of assets/default.toml, plus the commented-out optional ones.
fn default_toml_keys() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default.toml");
    let table: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    keys(&table, "", &mut out);
    out.push("data.dataset".to_string());
    out.sort();
    out
}

fn without_timing(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(map) = v.as_object_mut() {
        map.retain(|k, _| !k.ends_with("seconds") && k != "scans_per_s" && k != "elapsed_s");
        for value in map.values_mut() {
            *value = without_timing(value.take());
        }
    } else if let Some(list) = v.as_array_mut() {
        for value in list.iter_mut() {
            *value = without_timing(value.take());
        }
    }
    v
}

/// What a config makes run, as text (one entry per file of each fold).
fn observe(cfg: &Config, scratch: &Path) -> BTreeMap<String, String> {
    let gpu = gpu();
    let dataset = load_dataset(cfg, None, true).unwrap();
    let root = tempfile::tempdir_in(scratch).unwrap();
    let run = RunDir::create(&root.path().join("run")).unwrap();
    cross_validate(gpu, &dataset, cfg, &run, true).unwrap();
    let mut seen = BTreeMap::new();
    let mut folds: Vec<PathBuf> = std::fs::read_dir(run.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    folds.sort();
    assert!(!folds.is_empty(), "cross_validate wrote no fold");
    for fold in &folds {
        let name = fold.file_name().unwrap().to_string_lossy().into_owned();
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fold.join("metrics.json")).unwrap())
                .unwrap();
        seen.insert(
            format!("{name}/metrics.json"),
            without_timing(metrics).to_string(),
        );
        let steps: Vec<String> = std::fs::read_to_string(fold.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| without_timing(serde_json::from_str(l).unwrap()).to_string())
            .collect();
        assert!(!steps.is_empty(), "{name}: no step was logged");
        seen.insert(format!("{name}/metrics.jsonl"), steps.join("\n"));
        seen.insert(
            format!("{name}/predictions.csv"),
            std::fs::read_to_string(fold.join("predictions.csv")).unwrap(),
        );
        // The explanation's files, when evaluate explains the fold.
        for entry in std::fs::read_dir(fold).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            if file.starts_with("importance") {
                seen.insert(
                    format!("{name}/{file}"),
                    std::fs::read_to_string(&path).unwrap(),
                );
            }
        }
    }
    let folds = baseline_folds(&dataset, cfg).unwrap();
    let baseline = run_baseline(&dataset, cfg, &folds).unwrap().results;
    let probabilities: Vec<String> = baseline
        .iter()
        .flat_map(|r| r.probabilities.iter().map(|p| format!("{p:.9}")))
        .collect();
    seen.insert("baseline".to_string(), probabilities.join(","));
    seen
}

fn synth(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let out = dir.join(name);
    write_dataset(
        &out,
        &SynthConfig {
            scans: 24,
            regions: 6,
            length: 40,
            classes: 2,
            seed,
            difficulty: 0.2,
        },
    )
    .unwrap();
    out.join("dataset.toml")
}

#[test]
fn every_config_key_changes_what_runs() {
    let listed: Vec<String> = {
        let mut v: Vec<String> = CHANGES
            .iter()
            .map(|(k, _)| k.to_string())
            .chain(IN_CONTEXT.iter().map(|(k, ..)| k.to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        listed,
        default_toml_keys(),
        "CHANGES and IN_CONTEXT must list exactly the keys of assets/default.toml"
    );

    let tmp = tempfile::tempdir().unwrap();
    let dataset_a = synth(tmp.path(), "a", 1);
    let dataset_b = synth(tmp.path(), "b", 2);
    let mut base = Config::from_toml_str(BASE, Path::new("base.toml")).unwrap();
    base.data.dataset = Some(dataset_a);
    let reference = observe(&base, tmp.path());
    assert_eq!(
        reference,
        observe(&base, tmp.path()),
        "the base run does not repeat; differences would prove nothing"
    );

    let mut inert = Vec::new();
    let runs = CHANGES
        .iter()
        .map(|&(key, value)| (key, value, &[][..]))
        .chain(IN_CONTEXT.iter().copied());
    for (key, value, context) in runs {
        let value = value.replace("DATASET_B", &dataset_b.display().to_string());
        let (context_base, context_reference);
        let (start, reference) = if context.is_empty() {
            (&base, &reference)
        } else {
            let mut c = base.clone();
            for (k, v) in context {
                c.apply_override(k, v)
                    .unwrap_or_else(|e| panic!("{key}'s context {k} = {v}: {e}"));
            }
            context_reference = observe(&c, tmp.path());
            context_base = c;
            (&context_base, &context_reference)
        };
        let mut cfg = start.clone();
        cfg.apply_override(key, &value)
            .unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
        assert_ne!(&cfg, start, "{key} = {value} did not change the config");
        let seen = observe(&cfg, tmp.path());
        let changed: Vec<&String> = reference
            .iter()
            .filter(|(file, text)| seen.get(*file) != Some(*text))
            .map(|(file, _)| file)
            .chain(seen.keys().filter(|f| !reference.contains_key(*f)))
            .collect();
        eprintln!("{key} = {value}: changes {changed:?}");
        if changed.is_empty() {
            inert.push(key);
        }
    }
    assert!(
        inert.is_empty(),
        "these keys change nothing that runs: {inert:?}"
    );
}
