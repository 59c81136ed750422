//! Issue 9's fine-tuning switches, each against what it promises:
//! - `model.head_norm = "batch"`: training updates the running statistics
//!   (and only the forward does: they are not parameters), evaluation uses
//!   them, so a scan's logits alone equal its logits within a batch, and the
//!   checkpointed weights carry them;
//! - `model.head_norm = "batch-precise"`: after fine-tuning, the statistics
//!   are exactly Z_st's moments over the evaluation crops of the training
//!   scans with the final weights, whatever they held before, and evaluation
//!   then standardizes those crops to mean 0, variance 1; `batch` is not;
//! - `finetune.head_lr_multiplier`: only the head's update changes, by the
//!   multiplier;
//! - `finetune.early_stopping_patience`: the fold ends with the weights of
//!   the epoch of lowest validation loss and stops `patience` epochs after it;
//! - `finetune.dropout`: the mask is the generator's draw per (scan,
//!   feature), the same at every frame and scaled by 1/(1 − p); in a
//!   fine-tuning step a feature dropped in every scan of the batch gives its
//!   fusion.proj row no gradient; evaluation never drops.

use std::path::Path;
use std::sync::Arc;

use stptf::autograd::optim::AdamWState;
use stptf::autograd::Tape;
use stptf::check::gpu;
use stptf::config::{Config, HeadNorm, ModelConfig};
use stptf::data::batch::Batcher;
use stptf::data::dataset::Dataset;
use stptf::data::synth::{generate, SynthConfig};
use stptf::gpu::{Gpu, Tensor};
use stptf::model::augment::{rng_key, STREAM_DROPOUT};
use stptf::model::params::{HEAD_NORM_MEAN, HEAD_NORM_VAR};
use stptf::model::{feature_dropout_mask, DataDims, Dropout, HostTensor, Model};
use stptf::ops::adamw::AdamW;
use stptf::ops::random::{reference as rng_reference, ProbLayout};
use stptf::train::step::{record_finetune_step, FinetuneObjective};

const CROP: usize = 16;
const REGIONS: usize = 6;

fn model_config(head_norm: HeadNorm) -> ModelConfig {
    ModelConfig {
        crop: CROP,
        node_channels: 4,
        width: 8,
        embed_dim: 4,
        window: 8,
        stride: 4,
        segment: 8,
        qk_dim: 4,
        proj_dim: 8,
        head_norm,
        ..ModelConfig::default()
    }
}

fn dims() -> DataDims {
    DataDims {
        n_regions: REGIONS,
        n_classes: 2,
    }
}

fn dataset(scans: usize, seed: u64) -> Dataset {
    let (arrays, labels) = generate(&SynthConfig {
        scans,
        regions: REGIONS,
        length: 24,
        classes: 2,
        seed,
        difficulty: 0.2,
    });
    Dataset::from_arrays(arrays, labels, vec!["a".into(), "b".into()], scans).unwrap()
}

/// One batch of the first `b` scans: x [B, N, T], valid [B, T], labels [B].
fn batch(gpu: &Gpu, data: &Dataset, b: usize, epoch: u64) -> (Tensor, Tensor, Tensor) {
    let batcher = Batcher {
        batch_size: b,
        crop_length: CROP,
        seed: 5,
        drop_last: true,
        eval_crops: 1,
    };
    let scans: Vec<usize> = (0..b).collect();
    let hb = batcher.epoch(data, &scans, epoch).next().unwrap();
    let x = gpu.upload(&hb.x, &[hb.b, hb.n, hb.t]).unwrap();
    let valid = gpu.upload(&hb.valid, &[hb.b, hb.t]).unwrap();
    let labels: Vec<f32> = hb.labels.iter().map(|&l| l as f32).collect();
    let labels = gpu.upload(&labels, &[hb.b]).unwrap();
    (x, valid, labels)
}

/// Evaluation-mode logits [B, C] of x.
fn eval_logits(gpu: &Gpu, model: &Model, x: &Tensor, valid: &Tensor) -> Vec<f32> {
    let mut tape = Tape::new(gpu);
    let enc = model.encode(&mut tape, x, valid).unwrap();
    let logits = model.head(&mut tape, enc.z_st).unwrap();
    gpu.read(tape.value(logits)).unwrap()
}

fn host(tensors: &[HostTensor], name: &str) -> Vec<f32> {
    tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .data
        .clone()
}

#[test]
fn batch_head_norm_evaluates_with_running_statistics() {
    let gpu = gpu();
    let data = dataset(8, 3);
    let model = Model::new(gpu, model_config(HeadNorm::Batch), dims(), 7).unwrap();
    let before = model.params.to_host(gpu).unwrap();
    assert_eq!(host(&before, HEAD_NORM_MEAN), vec![0.0; 8]);
    assert_eq!(host(&before, HEAD_NORM_VAR), vec![1.0; 8]);
    // The running statistics are not parameters: the optimizer never sees them.
    assert!(model
        .params
        .store
        .params
        .iter()
        .all(|p| !p.name.starts_with("head_norm.")));

    // A few fine-tuning steps move them.
    let mut opt = AdamWState::new(gpu, &model.params.store, AdamW::default()).unwrap();
    for epoch in 0..3 {
        let (x, valid, labels) = batch(gpu, &data, 8, epoch);
        record_finetune_step(
            gpu,
            &model,
            &x,
            &valid,
            &labels,
            &FinetuneObjective::default(),
            epoch,
            &mut opt,
            1e-3,
        )
        .unwrap();
        gpu.flush().unwrap();
    }
    let after = model.params.to_host(gpu).unwrap();
    let (mean, var) = (host(&after, HEAD_NORM_MEAN), host(&after, HEAD_NORM_VAR));
    assert!(mean.iter().all(|v| v.is_finite()) && mean.iter().any(|&v| v != 0.0));
    assert!(var.iter().all(|&v| v.is_finite() && v > 0.0) && var.iter().any(|&v| v != 1.0));

    // Evaluation: scan 0 alone gives the logits it gets in a batch of 4.
    let (x, valid, _) = batch(gpu, &data, 4, 9);
    let together = eval_logits(gpu, &model, &x, &valid);
    let (b, n, t) = (4, REGIONS, CROP);
    let x_host = gpu.read(&x).unwrap();
    let v_host = gpu.read(&valid).unwrap();
    let x0 = gpu.upload(&x_host[..n * t], &[1, n, t]).unwrap();
    let v0 = gpu.upload(&v_host[..t], &[1, t]).unwrap();
    let alone = eval_logits(gpu, &model, &x0, &v0);
    assert_eq!(together.len(), b * 2);
    for (a, w) in alone.iter().zip(&together[..2]) {
        assert!(
            (a - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "alone {alone:?}, in a batch {together:?}"
        );
    }
    // (With batch statistics a scan alone would standardize to 0: logits =
    // the bias. Evaluation is not that.)
    let bias = host(&after, "head.bias");
    assert!(
        alone.iter().zip(&bias).any(|(a, b)| (a - b).abs() > 1e-4),
        "evaluation used batch statistics: {alone:?} = bias {bias:?}"
    );
    // Evaluation does not move the running statistics.
    let again = model.params.to_host(gpu).unwrap();
    assert_eq!(host(&again, HEAD_NORM_MEAN), mean);
    assert_eq!(host(&again, HEAD_NORM_VAR), var);

    // The weights (what checkpoints save) carry them: a model restored from
    // them evaluates identically.
    let restored = Model::from_host(gpu, model_config(HeadNorm::Batch), dims(), &after).unwrap();
    assert_eq!(eval_logits(gpu, &restored, &x, &valid), together);
    // And a head_norm = "none" config refuses them (another model).
    assert!(Model::from_host(gpu, model_config(HeadNorm::None), dims(), &after).is_err());
}

/// Z_st [crops][D] of the K evaluation crops of `scans` (evenly spaced, as
/// `Batcher::evaluation_plan` lays them), one crop per forward.
fn evaluation_embeddings(
    gpu: &Gpu,
    model: &Model,
    data: &Dataset,
    scans: &[usize],
    k: usize,
) -> Vec<Vec<f64>> {
    let batcher = Batcher {
        batch_size: 1,
        crop_length: CROP,
        seed: 0,
        drop_last: false,
        eval_crops: k,
    };
    let mut rows = Vec::new();
    for crops in batcher.evaluation_plan(data, scans) {
        let hb = stptf::data::batch::assemble(data, &crops, CROP);
        let x = gpu.upload(&hb.x, &[hb.b, hb.n, hb.t]).unwrap();
        let valid = gpu.upload(&hb.valid, &[hb.b, hb.t]).unwrap();
        let mut tape = Tape::new(gpu);
        let enc = model.encode(&mut tape, &x, &valid).unwrap();
        rows.push(
            gpu.read(tape.value(enc.z_st))
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect(),
        );
    }
    rows
}

/// Column mean and unbiased variance, in f64.
fn moments(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let d = rows[0].len();
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let var = (0..d)
        .map(|j| rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / (n - 1.0))
        .collect();
    (mean, var)
}

fn finetune(gpu: &Gpu, cfg: &Config, data: &Arc<Dataset>, scans: &[usize], poison: bool) -> Model {
    let model = Model::new(gpu, cfg.model.clone(), dims(), 5).unwrap();
    if poison {
        let nan = vec![f32::NAN; cfg.model.width];
        model.set_head_norm_statistics(gpu, &nan, &nan).unwrap();
    }
    stptf::train::trainer::train_phase(
        gpu,
        &model,
        data,
        scans,
        cfg,
        stptf::train::trainer::Phase::Finetune,
        None,
        &stptf::train::trainer::RunOptions {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    gpu.flush().unwrap();
    model
}

#[test]
fn batch_precise_head_norm_holds_the_training_crops_moments() {
    let gpu = gpu();
    let data = Arc::new(dataset(10, 6));
    let scans: Vec<usize> = (0..9).collect();
    // EARLY's small model and optimizer, without the validation split.
    let mut cfg = Config::from_toml_str(EARLY, Path::new("early.toml")).unwrap();
    for (key, value) in [
        ("seed", "3"),
        ("model.head_norm", "batch-precise"),
        ("finetune.epochs", "2"),
        ("finetune.eval_crops", "3"),
        ("finetune.diagnostic_scans", "0"),
        ("finetune.early_stopping_patience", "0"),
        ("finetune.validation_fraction", "0"),
    ] {
        cfg.apply_override(key, value).unwrap();
    }
    let k = cfg.finetune.eval_crops;
    // Poisoned before training: every statistic must be replaced, none blended.
    let model = finetune(gpu, &cfg, &data, &scans, true);
    let weights = model.params.to_host(gpu).unwrap();
    let (mean, var) = (
        host(&weights, HEAD_NORM_MEAN),
        host(&weights, HEAD_NORM_VAR),
    );
    let rows = evaluation_embeddings(gpu, &model, &data, &scans, k);
    assert_eq!(rows.len(), scans.len() * k);
    let (want_mean, want_var) = moments(&rows);
    for j in 0..cfg.model.width {
        let scale = want_var[j].sqrt();
        assert!(
            (mean[j] as f64 - want_mean[j]).abs() <= 1e-4 * scale + 1e-6,
            "column {j}: mean {} against {}",
            mean[j],
            want_mean[j]
        );
        assert!(
            (var[j] as f64 - want_var[j]).abs() <= 1e-4 * want_var[j] + 1e-9,
            "column {j}: variance {} against {}",
            var[j],
            want_var[j]
        );
    }
    // The same training with `batch`: its momentum average is not the
    // final weights' moments (so the test above tells the two apart).
    let mut momentum_cfg = cfg.clone();
    momentum_cfg.model.head_norm = HeadNorm::Batch;
    let lagging = finetune(gpu, &momentum_cfg, &data, &scans, false);
    let lagging_weights = lagging.params.to_host(gpu).unwrap();
    let lagging_mean = host(&lagging_weights, HEAD_NORM_MEAN);
    let (lag_want_mean, lag_want_var) =
        moments(&evaluation_embeddings(gpu, &lagging, &data, &scans, k));
    let off = (0..cfg.model.width)
        .map(|j| (lagging_mean[j] as f64 - lag_want_mean[j]).abs() / lag_want_var[j].sqrt())
        .fold(0.0, f64::max);
    assert!(
        off > 1e-2,
        "`batch` running mean within {off} sd of the final moments"
    );
    // A model without a head BatchNorm refuses statistics.
    let plain = Model::new(gpu, model_config(HeadNorm::None), dims(), 1).unwrap();
    assert!(plain
        .set_head_norm_statistics(gpu, &[0.0; 8], &[1.0; 8])
        .is_err());
}

/// The same start, the same batch, one step at multiplier 1 and at 10: the
/// encoder's new values are identical, the head's step (AdamW's update is
/// linear in the lr, weight decay included) is 10 times as long.
#[test]
fn head_lr_multiplier_changes_only_the_head_update() {
    let gpu = gpu();
    let data = dataset(8, 4);
    let (x, valid, labels) = batch(gpu, &data, 8, 0);
    let step = |multiplier: f32, freeze: bool| -> (Vec<HostTensor>, Vec<HostTensor>) {
        let model = Model::new(gpu, model_config(HeadNorm::None), dims(), 11).unwrap();
        let start = model.params.to_host(gpu).unwrap();
        let mut opt = AdamWState::new(
            gpu,
            &model.params.store,
            AdamW {
                weight_decay: 0.1,
                ..AdamW::default()
            },
        )
        .unwrap();
        let objective = FinetuneObjective {
            freeze_encoder: freeze,
            head_lr_multiplier: multiplier,
            ..FinetuneObjective::default()
        };
        record_finetune_step(
            gpu, &model, &x, &valid, &labels, &objective, 0, &mut opt, 1e-3,
        )
        .unwrap();
        gpu.flush().unwrap();
        (start, model.params.to_host(gpu).unwrap())
    };
    let (start, one) = step(1.0, false);
    let (_, ten) = step(10.0, false);
    let mut head_checked = 0;
    for ((s, a), b) in start.iter().zip(&one).zip(&ten) {
        assert_eq!(s.name, a.name);
        if s.name.starts_with("head.") {
            for ((&v0, &v1), &v10) in s.data.iter().zip(&a.data).zip(&b.data) {
                let (d1, d10) = ((v1 - v0) as f64, (v10 - v0) as f64);
                assert!(d1.abs() > 1e-6, "{}: no update", a.name);
                assert!(
                    (d10 - 10.0 * d1).abs() <= 1e-3 * d10.abs() + 1e-7,
                    "{}: step {d10} at x10, {d1} at x1",
                    a.name
                );
            }
            head_checked += 1;
        } else {
            assert_eq!(a.data, b.data, "{}: the encoder's update changed", a.name);
        }
    }
    assert_eq!(head_checked, 2);
    // A frozen encoder: the head still gets the multiplied rate, nothing else moves.
    let (start, frozen) = step(10.0, true);
    for ((s, f), t) in start.iter().zip(&frozen).zip(&ten) {
        if s.name.starts_with("head.") {
            assert_eq!(f.data, t.data, "{}", s.name);
        } else {
            assert_eq!(f.data, s.data, "{}: moved with a frozen encoder", s.name);
        }
    }
}

const EARLY: &str = r#"
seed = 2

[model]
crop = 16
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
epochs = 12
batch = 4
lr = 0.05
warmup_fraction = 0.0
eval_crops = 2
validation_fraction = 0.3
early_stopping_patience = 2

[evaluate]
folds = 2
"#;

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Per fold: the finetune-epoch rows of metrics.jsonl give the validation
/// loss of every epoch run; the recorded best epoch is their argmin, the run
/// stopped `patience` epochs after it (or at the last epoch), and the fold's
/// checkpoint — the model it scored — has exactly the best epoch's
/// validation loss.
#[test]
fn early_stopping_keeps_the_best_validation_epoch() {
    let gpu = gpu();
    let data = Arc::new(dataset(24, 8));
    let cfg = Config::from_toml_str(EARLY, Path::new("early.toml")).unwrap();
    let patience = cfg.finetune.early_stopping_patience as u64;
    let tmp = tempfile::tempdir().unwrap();
    let run = stptf::train::rundir::RunDir::create(&tmp.path().join("run")).unwrap();
    let plans = stptf::train::protocol::plan_folds(&data, &cfg).unwrap();
    stptf::train::protocol::cross_validate(gpu, &data, &cfg, &run, true).unwrap();
    let mut not_last = 0;
    for plan in &plans {
        let fold = run.path().join(format!("fold-{}", plan.name));
        let losses: Vec<f64> = std::fs::read_to_string(fold.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["phase"] == "finetune-epoch")
            .map(|r| r["diagnostics"]["validation"]["loss"].as_f64().unwrap())
            .collect();
        let best = losses
            .iter()
            .enumerate()
            .fold(0, |b, (i, &l)| if l < losses[b] { i } else { b }) as u64;
        let record = read_json(&fold.join("metrics.json"));
        assert_eq!(
            record["finetune_best_epoch"].as_u64(),
            Some(best),
            "fold {}: validation losses {losses:?}",
            plan.name
        );
        let run_epochs = losses.len() as u64;
        assert_eq!(record["finetune_epochs"].as_u64(), Some(run_epochs));
        assert_eq!(
            run_epochs,
            (best + 1 + patience).min(cfg.finetune.epochs as u64),
            "fold {}: stops {patience} epochs after the best ({losses:?})",
            plan.name
        );
        if best + 1 < run_epochs {
            not_last += 1;
        }
        // The checkpoint is the best epoch's model.
        let ckpt = stptf::train::checkpoint::load(&fold.join("checkpoint-finetune")).unwrap();
        let model = Model::from_host(
            gpu,
            cfg.model.clone(),
            stptf::train::protocol::data_dims(&data),
            &ckpt.weights,
        )
        .unwrap();
        let probs =
            stptf::train::trainer::score_scans(gpu, &model, &data, &plan.validation, &cfg).unwrap();
        let labels = data.labels();
        let loss = plan
            .validation
            .iter()
            .zip(&probs)
            .map(|(&s, p)| -p[labels[s] as usize].ln())
            .sum::<f64>()
            / probs.len() as f64;
        assert!(
            (loss - losses[best as usize]).abs() <= 1e-4 * (1.0 + loss.abs()),
            "fold {}: checkpoint validation loss {loss}, best epoch's {}",
            plan.name,
            losses[best as usize]
        );
    }
    assert!(
        not_last > 0,
        "no fold chose an epoch before its last: the test did not exercise early stopping"
    );
}

fn stptf(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stptf"))
        .env_remove("STPTF_FAULT")
        .args(args)
        .output()
        .expect("run stptf");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stptf {args:?} failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

/// Through the CLI with `model.head_norm = "batch"`: a pretraining run
/// stopped and resumed equals the uninterrupted one (the checkpoint holds
/// the running statistics beside the parameters, without optimizer moments
/// for them); fine-tuning from it moves them and saves them; `predict` loads
/// them and gives the same probabilities for a scan alone as with the others.
#[test]
fn batch_head_norm_statistics_survive_checkpoints_resume_and_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |path: &Path| path.to_str().unwrap().to_string();
    let data = tmp.path().join("data");
    stptf(&[
        "synth",
        "--out",
        &p(&data),
        "--scans",
        "16",
        "--regions",
        "6",
        "--length",
        "36",
        "--seed",
        "1",
        "--difficulty",
        "0.1",
    ]);
    let ds = p(&data.join("dataset.toml"));
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/configs/tiny.toml")
        .display()
        .to_string();
    let common = |out: &Path| -> Vec<String> {
        [
            "--config",
            &config,
            "--dataset",
            &ds,
            "--out",
            &p(out),
            "--quiet",
            "--set",
            "pretrain.batch=8",
            "--set",
            "pretrain.epochs=2",
            "--set",
            "model.head_norm=batch",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |cmd: &str, out: &Path, extra: &[&str]| {
        let mut args = vec![cmd.to_string()];
        args.extend(common(out));
        args.extend(extra.iter().map(|s| s.to_string()));
        stptf(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    let whole = tmp.path().join("whole");
    run("pretrain", &whole, &[]);
    let parts = tmp.path().join("parts");
    run("pretrain", &parts, &["--stop-after-epochs", "1"]);
    stptf(&["pretrain", "--resume", &p(&parts), "--quiet"]);
    let weights = |run: &Path, phase: &str| {
        std::fs::read(run.join(format!("checkpoint-{phase}/weights.safetensors"))).unwrap()
    };
    assert_eq!(weights(&parts, "pretrain"), weights(&whole, "pretrain"));
    let pre = stptf::model::params::read_safetensors(
        &whole.join("checkpoint-pretrain/weights.safetensors"),
    )
    .unwrap();
    assert_eq!(
        host(&pre, HEAD_NORM_VAR),
        vec![1.0; 16],
        "pretraining never moves them"
    );

    let fine = tmp.path().join("fine");
    let mut args = vec!["finetune".to_string()];
    args.extend(common(&fine));
    args.extend(["--from".to_string(), p(&whole)]);
    stptf(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let ft = stptf::model::params::read_safetensors(
        &fine.join("checkpoint-finetune/weights.safetensors"),
    )
    .unwrap();
    assert!(host(&ft, HEAD_NORM_VAR).iter().any(|&v| v != 1.0));
    assert!(host(&ft, HEAD_NORM_MEAN).iter().any(|&v| v != 0.0));

    let all = tmp.path().join("all.csv");
    stptf(&[
        "predict",
        "--model",
        &p(&fine),
        "--dataset",
        &ds,
        "--out",
        &p(&all),
    ]);
    // Two of the scans (one per class: a dataset needs both) in a dataset
    // of their own, described beside the first: other batches, same rows.
    let labels = std::fs::read_to_string(data.join("labels.csv")).unwrap();
    let first_of = |class: &str| -> String {
        labels
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f[3] == class && f[0].starts_with("scan_000"))
            .map(|f| f[0].to_string())
            .unwrap_or_else(|| panic!("no class {class} among scans 0-9: {labels}"))
    };
    let pair = [first_of("0"), first_of("1")];
    let digits: String = pair.iter().map(|id| id.chars().last().unwrap()).collect();
    let text = std::fs::read_to_string(data.join("dataset.toml")).unwrap();
    let two = data.join("two.toml");
    std::fs::write(
        &two,
        text.replace("scan_*.npy", &format!("scan_000[{digits}].npy")),
    )
    .unwrap();
    let alone = tmp.path().join("two.csv");
    stptf(&[
        "predict",
        "--model",
        &p(&fine),
        "--dataset",
        &p(&two),
        "--out",
        &p(&alone),
    ]);
    let row = |csv: &Path, id: &str| -> String {
        std::fs::read_to_string(csv)
            .unwrap()
            .lines()
            .find(|l| l.starts_with(&format!("{id},")))
            .unwrap_or_else(|| panic!("{}: no {id}", csv.display()))
            .to_string()
    };
    for id in &pair {
        assert_eq!(row(&alone, id), row(&all, id));
    }
}

#[test]
fn feature_dropout_mask_is_the_generators_draw_scaled_by_the_keep_rate() {
    let gpu = gpu();
    for (i, &(b, k, p)) in [
        (1, 1, 0.5f32),
        (3, 7, 0.3),
        (4, 48, 0.5),
        (2, 1600, 0.1),
        (5, 33, 0.9),
    ]
    .iter()
    .enumerate()
    {
        let dropout = Dropout {
            p,
            key: rng_key(7 + i as u64, STREAM_DROPOUT, 3 * i as u64),
        };
        // check::gpu poisons every new tensor with NaN: each element must be written.
        let mask = gpu
            .read(&feature_dropout_mask(gpu, b, k, dropout).unwrap())
            .unwrap();
        let keep =
            rng_reference::bernoulli_mask(dropout.key, &[b, k], &vec![p; k], ProbLayout::PerColumn);
        let scale = 1.0 / (1.0 - p as f64);
        assert_eq!(mask.len(), b * k);
        for bi in 0..b {
            for ki in 0..k {
                let want = keep[bi * k + ki] as f64 * scale;
                let got = mask[bi * k + ki] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * scale,
                    "[{b}, {k}] p {p}: ({bi}, {ki}) = {got}, expected {want}"
                );
            }
        }
        if b * k >= 1000 {
            let dropped = keep.iter().filter(|&&v| v == 0.0).count() as f64 / (b * k) as f64;
            assert!(
                (dropped - p as f64).abs() < 0.03,
                "dropped {dropped}, p {p}"
            );
        }
    }
    for p in [0.0, 1.0, f32::NAN] {
        let d = Dropout {
            p,
            key: rng_key(0, STREAM_DROPOUT, 0),
        };
        assert!(
            feature_dropout_mask(gpu, 2, 4, d).is_err(),
            "p {p} accepted"
        );
    }
    assert_eq!(Dropout::at_step(0.0, 1, 2), None);
}

#[test]
fn dropout_silences_the_fusion_rows_of_features_dropped_in_every_scan() {
    let gpu = gpu();
    let data = dataset(8, 21);
    let (b, f) = (2, 4);
    let k = REGIONS * f;
    let model = Model::new(gpu, model_config(HeadNorm::None), dims(), 4).unwrap();
    let (x, valid, labels) = batch(gpu, &data, b, 0);
    let loss_and_proj_grad = |dropout: Option<Dropout>| -> (f32, Vec<f32>) {
        model.params.store.zero_grads(gpu).unwrap();
        let mut tape = Tape::new(gpu);
        let (loss, _) = model
            .finetune_loss(&mut tape, &x, &valid, &labels, dropout)
            .unwrap();
        let value = gpu.read(tape.value(loss)).unwrap()[0];
        tape.backward(loss, &model.params.store).unwrap();
        let grads = model.params.grads_to_host(gpu).unwrap();
        (value, host(&grads, "fusion.proj.weight"))
    };
    let (plain, plain_grad) = loss_and_proj_grad(None);
    let dropout = Dropout::at_step(0.5, 11, 1).unwrap();
    let (dropped, grad) = loss_and_proj_grad(Some(dropout));
    assert!(plain.is_finite() && dropped.is_finite());
    assert_ne!(plain, dropped, "dropout changed nothing");
    // The same step's key gives the same mask: a resumed run draws the same.
    assert_eq!(loss_and_proj_grad(Some(dropout)).0, dropped);

    // fusion.proj.weight is [N·F, D]; row k carries feature k (n·F + f).
    let keep =
        rng_reference::bernoulli_mask(dropout.key, &[b, k], &vec![0.5; k], ProbLayout::PerColumn);
    let width = grad.len() / k;
    let (mut silent, mut live) = (0, 0);
    for ki in 0..k {
        let row = &grad[ki * width..(ki + 1) * width];
        let kept_somewhere = (0..b).any(|bi| keep[bi * k + ki] == 1.0);
        let row_norm: f32 = row.iter().map(|v| v * v).sum();
        if kept_somewhere {
            live += 1;
            let plain_norm: f32 = plain_grad[ki * width..(ki + 1) * width]
                .iter()
                .map(|v| v * v)
                .sum();
            assert!(
                row_norm > 0.0 || plain_norm == 0.0,
                "feature {ki}: kept, but its row got no gradient"
            );
        } else {
            silent += 1;
            assert_eq!(
                row_norm, 0.0,
                "feature {ki}: dropped in every scan, yet its row has a gradient"
            );
        }
    }
    // Not vacuous: this key drops some features in both scans and keeps others.
    assert!(silent > 0 && live > 0, "silent {silent}, live {live}");
    assert!(plain_grad.iter().all(|v| v.is_finite()));
}
