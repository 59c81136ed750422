//! Run directories and checkpoints through the CLI, each case of the
//! reliability issue with its exact message or behaviour: resuming a
//! finished run, resuming with another config or other data, a pretrain that
//! fails before it starts, and checkpoint errors that name the right thing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stptf::model::params::{encode_safetensors, read_safetensors};

fn stptf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stptf"))
        .env_remove("STPTF_FAULT")
        .args(args)
        .output()
        .expect("run stptf")
}

fn ok(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stptf failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The error line; asserts a clean failure.
fn fails(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure; stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn tiny_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/configs/tiny.toml")
        .display()
        .to_string()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// 16 scans × 6 regions × 36 frames in `dir`; returns the dataset.toml.
fn synth(dir: &Path) -> PathBuf {
    synth_n(dir, 16)
}

fn synth_n(dir: &Path, scans: usize) -> PathBuf {
    ok(&stptf(&[
        "synth",
        "--out",
        p(dir),
        "--scans",
        &scans.to_string(),
        "--regions",
        "6",
        "--length",
        "36",
        "--seed",
        "1",
        "--difficulty",
        "0.1",
    ]));
    dir.join("dataset.toml")
}

fn pretrain(ds: &Path, out: &Path, extra: &[&str]) -> Output {
    let config = tiny_config();
    let mut args = vec![
        "pretrain",
        "--config",
        &config,
        "--dataset",
        p(ds),
        "--out",
        p(out),
        "--quiet",
        "--set",
        "pretrain.batch=8",
    ];
    args.extend_from_slice(extra);
    stptf(&args)
}

/// summary.json without the wall-clock fields, and the files beside it.
fn outcome(run: &Path) -> (serde_json::Value, String, String, Vec<u8>) {
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    summary["seconds"] = serde_json::Value::Null;
    summary["scans_per_s"] = serde_json::Value::Null;
    let metrics: String = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["elapsed_s"] = serde_json::Value::Null;
            v["scans_per_s"] = serde_json::Value::Null;
            v.to_string() + "\n"
        })
        .collect();
    (
        summary,
        std::fs::read_to_string(run.join("loss_pretrain.svg")).unwrap(),
        metrics,
        std::fs::read(run.join("checkpoint-pretrain/weights.safetensors")).unwrap(),
    )
}

#[test]
fn resuming_a_finished_or_stopped_run_gives_the_uninterrupted_runs_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(&tmp.path().join("data"));
    let whole = tmp.path().join("whole");
    ok(&pretrain(&ds, &whole, &["--set", "pretrain.epochs=3"]));
    let reference = outcome(&whole);
    assert_eq!(reference.0["steps"], 6);
    assert_eq!(reference.0["losses"].as_array().unwrap().len(), 6);

    // A finished run: --resume rewrites the same summary, not 0 steps.
    ok(&stptf(&["pretrain", "--resume", p(&whole), "--quiet"]));
    assert_eq!(outcome(&whole), reference);

    // Stopped after one epoch, resumed twice (once more after it finished).
    let parts = tmp.path().join("parts");
    ok(&pretrain(
        &ds,
        &parts,
        &["--set", "pretrain.epochs=3", "--stop-after-epochs", "1"],
    ));
    let partial: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(parts.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(partial["steps"], 2, "stopped after one epoch");
    ok(&stptf(&["pretrain", "--resume", p(&parts), "--quiet"]));
    assert_eq!(outcome(&parts), reference);
    ok(&stptf(&["pretrain", "--resume", p(&parts), "--quiet"]));
    assert_eq!(outcome(&parts), reference);
}

#[test]
fn resume_refuses_another_config_or_other_data_naming_the_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(&tmp.path().join("data"));
    let run = tmp.path().join("run");
    ok(&pretrain(
        &ds,
        &run,
        &["--set", "pretrain.epochs=2", "--stop-after-epochs", "1"],
    ));
    let resume = |extra: &[&str]| {
        let mut args = vec!["pretrain", "--resume", p(&run), "--quiet"];
        args.extend_from_slice(extra);
        stptf(&args)
    };
    let e = fails(&resume(&["--set", "model.width=8"]));
    assert!(
        e.contains(&format!("cannot resume {}: the config differs from the one the run started with (config key model.width: checkpoint 16, now 8)", run.display())),
        "{e}"
    );
    let e = fails(&resume(&["--out", p(&tmp.path().join("elsewhere"))]));
    assert!(
        e.contains("'--resume <RESUME>' cannot be used with '--out <OUT>'"),
        "{e}"
    );
    let e = fails(&resume(&["--set", "pretrain.epochs=5"]));
    assert!(
        e.contains("config key pretrain.epochs: checkpoint 2, now 5"),
        "{e}"
    );
    let e = fails(&resume(&["--config", &tiny_config()]));
    assert!(
        e.contains("config key pretrain.batch: checkpoint 8, now 16")
            && !e.contains("pretrain.epochs"),
        "{e}"
    );
    // An edited RUN/config.toml.
    let recorded = run.join("config.toml");
    let original = std::fs::read_to_string(&recorded).unwrap();
    assert!(original.contains("width = 16"), "{original}");
    std::fs::write(&recorded, original.replace("width = 16", "width = 32")).unwrap();
    let e = fails(&resume(&[]));
    assert!(
        e.contains("config key model.width: checkpoint 16, now 32"),
        "{e}"
    );
    std::fs::write(&recorded, &original).unwrap();

    // The same dataset with one scan's values changed, passed by --dataset.
    let copy = tmp.path().join("changed");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(ds.parent().unwrap()).unwrap().flatten() {
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let scan = copy.join("scan_0005.npy");
    let mut bytes = std::fs::read(&scan).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x10;
    std::fs::write(&scan, bytes).unwrap();
    let e = fails(&resume(&["--dataset", p(&copy.join("dataset.toml"))]));
    assert!(
        e.contains(
            "the data differs from what the run trained on (scan values changed: scan_0005)"
        ),
        "{e}"
    );
    // Another dataset altogether.
    let other = synth_n(&tmp.path().join("other-data"), 18);
    let e = fails(&resume(&["--dataset", p(&other)]));
    assert!(e.contains("scans added: scan_0016, scan_0017"), "{e}");

    // Nothing was changed by the refusals: the same data (moved) resumes.
    let moved = tmp.path().join("moved");
    std::fs::rename(ds.parent().unwrap(), &moved).unwrap();
    ok(&resume(&["--dataset", p(&moved.join("dataset.toml"))]));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 4);
}

#[test]
fn a_pretrain_that_fails_before_it_starts_leaves_out_reusable() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(&tmp.path().join("data"));
    let out = tmp.path().join("run");
    let e = fails(&pretrain(&ds, &out, &["--set", "pretrain.batch=32"]));
    assert!(
        e.contains("pretraining needs at least one full batch"),
        "{e}"
    );
    assert!(!out.exists(), "the failed run left {}", out.display());
    let e = fails(&pretrain(&tmp.path().join("none.toml"), &out, &[]));
    assert!(e.contains("none.toml"), "{e}");
    assert!(!out.exists());
    // A folder the user made stays, empty.
    std::fs::create_dir(&out).unwrap();
    fails(&pretrain(&ds, &out, &["--set", "pretrain.batch=32"]));
    assert!(out.is_dir() && std::fs::read_dir(&out).unwrap().next().is_none());
    // And the same --out is accepted.
    ok(&pretrain(&ds, &out, &["--set", "pretrain.epochs=1"]));
    assert!(out.join("config.toml").exists());
}

#[test]
fn checkpoint_errors_name_the_right_thing() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(&tmp.path().join("data"));
    let pre = tmp.path().join("pre");
    ok(&pretrain(&ds, &pre, &["--set", "pretrain.epochs=1"]));
    let config = tiny_config();
    let finetune = |from: &Path, out: &str| {
        stptf(&[
            "finetune",
            "--config",
            &config,
            "--dataset",
            p(&ds),
            "--from",
            p(from),
            "--out",
            p(&tmp.path().join(out)),
            "--quiet",
            "--set",
            "finetune.epochs=1",
        ])
    };
    ok(&finetune(&pre, "ft"));
    let ft = tmp.path().join("ft");

    let nowhere = tmp.path().join("nonexistent");
    let e = fails(&finetune(&nowhere, "x1"));
    assert!(
        e.contains(&format!("{}: does not exist", nowhere.display())),
        "{e}"
    );
    assert!(!e.contains("checkpoint.json not found"), "{e}");

    let e = fails(&finetune(&ft, "x2"));
    assert!(
        e.contains(&format!("{}: this is a fine-tuning run (it holds checkpoint-finetune/); a pretraining run or its checkpoint-pretrain/ folder is needed here", ft.display())),
        "{e}"
    );
    let e = fails(&stptf(&[
        "predict",
        "--model",
        p(&pre),
        "--dataset",
        p(&ds),
        "--out",
        p(&tmp.path().join("pred.csv")),
    ]));
    assert!(
        e.contains(&format!("{} holds only checkpoint-pretrain, which is a pretraining checkpoint: its classification head was never trained", pre.display())),
        "{e}"
    );
    assert!(!tmp.path().join("pred.csv").exists());

    let ckpt = pre.join("checkpoint-pretrain");
    let weights_path = ckpt.join("weights.safetensors");
    let original = std::fs::read(&weights_path).unwrap();
    let weights = read_safetensors(&weights_path).unwrap();

    // A tensor missing from weights.safetensors: named, not an optimizer mismatch.
    let without: Vec<_> = weights
        .iter()
        .filter(|t| t.name != "head.bias")
        .cloned()
        .collect();
    std::fs::write(&weights_path, encode_safetensors(&without, None).unwrap()).unwrap();
    let e = fails(&finetune(&pre, "x3"));
    assert!(
        e.contains(&format!(
            "{}: tensor `head.bias` is missing",
            weights_path.display()
        )),
        "{e}"
    );
    assert!(
        !e.contains("optimizer has") && !e.contains("matches no parameter"),
        "{e}"
    );

    // A NaN weight: the checkpoint has non-finite weights.
    let mut nan = weights.clone();
    nan[0].data[0] = f32::NAN;
    std::fs::write(&weights_path, encode_safetensors(&nan, None).unwrap()).unwrap();
    let e = fails(&finetune(&pre, "x4"));
    assert!(
        e.contains(&format!(
            "{}: tensor `{}` holds 1 non-finite values (NaN or Inf): the checkpoint has non-finite weights and cannot be used",
            weights_path.display(),
            nan[0].name
        )),
        "{e}"
    );
    assert!(!e.contains("learning rate"), "{e}");
    std::fs::write(&weights_path, &original).unwrap();

    // An edited checkpoint.json: said so, not a dataset mismatch.
    let meta = ckpt.join("checkpoint.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, text.replace("\"seed\": 3", "\"seed\": 4")).unwrap();
    for out in [
        finetune(&pre, "x5"),
        stptf(&["pretrain", "--resume", p(&pre), "--quiet"]),
    ] {
        let e = fails(&out);
        assert!(
            e.contains(&format!(
                "{}: was edited or damaged after it was written",
                meta.display()
            )),
            "{e}"
        );
        assert!(
            !e.contains("different data") && !e.contains("dataset"),
            "{e}"
        );
    }
    // A deleted optimizer file is named (checkpoint.json lists it).
    std::fs::write(&meta, &text).unwrap();
    let optimizer = ckpt.join("optimizer.safetensors");
    let moments = std::fs::read(&optimizer).unwrap();
    std::fs::remove_file(&optimizer).unwrap();
    let e = fails(&stptf(&["pretrain", "--resume", p(&pre), "--quiet"]));
    assert!(
        e.contains(&format!(
            "{}: cannot read: No such file or directory (os error 2)",
            optimizer.display()
        )),
        "{e}"
    );
    assert_eq!(e.matches("os error 2").count(), 1, "{e}");
    std::fs::write(&optimizer, moments).unwrap();
    // A damaged safetensors header: the cause is said once.
    std::fs::write(&meta, &text).unwrap();
    std::fs::write(&weights_path, b"\xff\xff\xff\xff\xff\xff\xff\xff{}").unwrap();
    let e = fails(&finetune(&pre, "x6"));
    assert!(e.contains("header too large"), "{e}");
    assert_eq!(e.matches("header too large").count(), 1, "{e}");
}
