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
    predict_protects_existing_files_and_inputs(tmp.path(), &pre, &ft, &ds, &csv);
}

/// Issue 10 items 1 and 3, on the runs of the test above.
fn predict_protects_existing_files_and_inputs(
    tmp: &Path,
    pre: &Path,
    ft: &Path,
    ds: &str,
    csv: &Path,
) {
    let predict = |model: &Path, out: Option<&Path>, force: bool| {
        let mut args = vec!["predict", "--model", path(model), "--dataset", ds];
        if let Some(out) = out {
            args.extend(["--out", path(out)]);
        }
        if force {
            args.push("--force");
        }
        stptf(&args)
    };
    // An existing file is kept unless --force.
    std::fs::write(csv, "keep me").unwrap();
    fails_with(
        &predict(ft, Some(csv), false),
        "already exists; pass --force to replace it",
    );
    assert_eq!(std::fs::read_to_string(csv).unwrap(), "keep me");
    ok(&predict(ft, Some(csv), true));
    assert!(std::fs::read_to_string(csv)
        .unwrap()
        .starts_with("id,predicted"));
    // Never into the checkpoint or the input data, even with --force.
    let weights = ft.join("checkpoint-finetune/weights.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let result = predict(ft, Some(&weights), true);
    fails_with(&result, "refusing to write");
    fails_with(&result, "inside the checkpoint directory");
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    let data_dir = Path::new(ds).parent().unwrap();
    let labels = data_dir.join("labels.csv");
    let before = std::fs::read(&labels).unwrap();
    fails_with(
        &predict(ft, Some(&labels), true),
        "inside the data directory",
    );
    fails_with(
        &predict(ft, Some(&data_dir.join("new.csv")), false),
        "inside the data directory",
    );
    assert_eq!(std::fs::read(&labels).unwrap(), before);
    assert!(!data_dir.join("new.csv").exists());
    // The default output is the run directory's predictions.csv, also when
    // --model names the checkpoint directory itself.
    ok(&predict(ft, None, false));
    assert!(ft.join("predictions.csv").exists());
    fails_with(
        &predict(&ft.join("checkpoint-finetune"), None, false),
        &format!("{} already exists", ft.join("predictions.csv").display()),
    );
    assert!(!ft.join("checkpoint-finetune/predictions.csv").exists());
    // A pretraining checkpoint has no trained head.
    let out = tmp.join("from-pre.csv");
    for model in [pre.to_path_buf(), pre.join("checkpoint-pretrain")] {
        fails_with(
            &predict(&model, Some(&out), false),
            "is a pretraining checkpoint: its classification head was never trained",
        );
    }
    assert!(!out.exists());
    // A head with NaN weights.
    let bad = tmp.join("ft-nan");
    std::fs::create_dir_all(bad.join("checkpoint-finetune")).unwrap();
    for f in ["checkpoint.json", "optimizer.safetensors"] {
        let from = ft.join("checkpoint-finetune").join(f);
        if from.exists() {
            std::fs::copy(&from, bad.join("checkpoint-finetune").join(f)).unwrap();
        }
    }
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let mut data = view.data().to_vec();
            if name == "head.weight" {
                data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            (name, view.shape().to_vec(), data)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    std::fs::write(
        bad.join("checkpoint-finetune/weights.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let out = tmp.join("nan.csv");
    let result = predict(&bad, Some(&out), false);
    fails_with(&result, "has non-finite weights");
    fails_with(&result, "`head.weight`");
    assert!(!out.exists());
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

/// Issue 10 items 4 and 5: runs that would train nothing, or a batch that
/// cannot standardize, are refused before anything is written.
#[test]
fn zero_epochs_and_batches_of_one_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(tmp.path(), 8);
    let run = |cmd: &str, out: &Path, extra: &[&str]| {
        let mut args = vec![
            cmd,
            "--config",
            tiny_config().leak(),
            "--dataset",
            ds.as_str(),
            "--out",
            path(out),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        stptf(&args)
    };
    let out = tmp.path().join("run");
    let result = run("pretrain", &out, &["--set", "pretrain.epochs=0"]);
    fails_with(
        &result,
        "pretrain.epochs is 0: `pretrain` would train nothing and write no checkpoint",
    );
    assert!(!String::from_utf8_lossy(&result.stdout).contains("checkpoint:"));
    fails_with(
        &run("finetune", &out, &["--set", "finetune.epochs=0"]),
        "finetune.epochs is 0: `finetune` would train nothing",
    );
    fails_with(
        &run("pretrain", &out, &["--stop-after-epochs", "0"]),
        "--stop-after-epochs",
    );
    fails_with(
        &run(
            "evaluate",
            &out,
            &["--set", "pretrain.epochs=0", "--set", "finetune.epochs=0"],
        ),
        "pretrain.epochs and finetune.epochs are both 0; evaluate would report the metrics of an untrained head",
    );
    let result = run("pretrain", &out, &["--set", "pretrain.batch=1"]);
    fails_with(
        &result,
        "config key \"pretrain.batch\" = 1: expected an integer >= 2",
    );
    fails_with(&result, "a batch of one has no variance");
    fails_with(
        &run("pretrain", &out, &["--set", "pretrain.epochs=-1"]),
        "-1 is out of range: this key takes an integer from 0 to",
    );
    assert!(!out.exists(), "a refused run left {} behind", out.display());
}

/// Issue 10 item 15: `--config` is an experiment config and `--dataset` a
/// dataset description in every subcommand, and a swap is named as such.
#[test]
fn config_and_dataset_flags_mean_one_thing_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let synth_dir = tmp.path().join("s");
    let printed = ok(&stptf(&[
        "synth",
        "--out",
        path(&synth_dir),
        "--scans",
        "12",
        "--regions",
        "4",
        "--length",
        "40",
    ]));
    let ds = synth_dir.join("dataset.toml");
    assert!(
        printed.contains(&format!("load it with --dataset {}", ds.display())),
        "{printed}"
    );
    // The hint works: inspect and baseline take --dataset.
    assert!(ok(&stptf(&["inspect", "--dataset", path(&ds)])).contains("scans     12"));
    let base = tmp.path().join("base");
    ok(&stptf(&[
        "baseline",
        "--dataset",
        path(&ds),
        "--out",
        path(&base),
        "--set",
        "evaluate.folds=2",
    ]));
    assert!(base.join("summary.json").exists());
    let recorded = std::fs::read_to_string(base.join("config.toml")).unwrap();
    assert!(recorded.contains("folds = 2"), "{recorded}");
    // A dataset description passed as --config, in every command that takes one.
    for cmd in ["pretrain", "finetune", "evaluate", "baseline"] {
        let mut args = vec![cmd, "--config", path(&ds), "--out"];
        let out = tmp.path().join(format!("swap-{cmd}"));
        args.push(path(&out));
        if cmd == "baseline" {
            args.extend(["--dataset", path(&ds)]);
        }
        fails_with(
            &stptf(&args),
            "this is a dataset description; pass it with --dataset",
        );
        assert!(!out.exists(), "{cmd}");
    }
    // And an experiment config passed as --dataset.
    for cmd in ["pretrain", "inspect", "baseline"] {
        let mut args = vec![cmd, "--dataset", tiny_config().leak()];
        if cmd == "pretrain" {
            args.extend(["--config", tiny_config().leak(), "--quiet"]);
            args.extend(["--out", path(&tmp.path().join("swap2")).to_string().leak()]);
        }
        fails_with(
            &stptf(&args),
            "this is an experiment config; pass it with --config",
        );
    }
    assert!(!tmp.path().join("swap2").exists());
}
