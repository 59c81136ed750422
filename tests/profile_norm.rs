//! `model.profile_norm`: per-edge normalization of the connectivity profiles.
//! - the statistics are the f64 mean and standard deviation of every entry
//!   of the Pearson correlation of the evaluation crops, computed here on
//!   the host from the crops the batcher cuts;
//! - the profiles the lift reads are (R − mean) / std (`standardize`) or
//!   R − mean (`center`), with the Pearson diagonal at 0 under standardize,
//!   on fresh random crops of several shapes, outputs poisoned first;
//! - the first phase that trains a model sets them from its scans, and a
//!   later phase keeps them; a model that does not normalize refuses them.

use std::sync::Arc;

use stptf::check::gpu;
use stptf::config::{Config, ModelConfig, NodeFeatures, ProfileNorm};
use stptf::data::batch::Batcher;
use stptf::data::dataset::Dataset;
use stptf::data::synth::{generate, SynthConfig};
use stptf::gpu::Gpu;
use stptf::model::params::{PROFILE_NORM_SCALE, PROFILE_NORM_SHIFT};
use stptf::model::{DataDims, Model};
use stptf::train::trainer::{profile_statistics, train_phase, Phase, RunOptions};

const CROP: usize = 16;
const EVAL_CROPS: usize = 3;

fn model_config(norm: ProfileNorm) -> ModelConfig {
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
        node_features: NodeFeatures::Pearson,
        profile_norm: norm,
        ..ModelConfig::default()
    }
}

fn config(norm: ProfileNorm) -> Config {
    let mut cfg = Config {
        model: model_config(norm),
        ..Config::default()
    };
    cfg.pretrain.epochs = 1;
    cfg.pretrain.batch = 4;
    cfg.finetune.epochs = 1;
    cfg.finetune.batch = 4;
    cfg.finetune.eval_crops = EVAL_CROPS;
    cfg
}

fn dataset(scans: usize, regions: usize, seed: u64) -> Dataset {
    let (arrays, labels) = generate(&SynthConfig {
        scans,
        regions,
        length: 40,
        classes: 2,
        seed,
        difficulty: 0.2,
    });
    Dataset::from_arrays(arrays, labels, vec!["a".into(), "b".into()], scans).unwrap()
}

fn dims(regions: usize) -> DataDims {
    DataDims {
        n_regions: regions,
        n_classes: 2,
    }
}

/// Pearson correlation [N, N] of crop `row` of x [B, N, T], in f64.
fn pearson(x: &[f32], row: usize, n: usize, t: usize) -> Vec<f64> {
    let series: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let s = &x[(row * n + i) * t..(row * n + i + 1) * t];
            let mean = s.iter().map(|&v| v as f64).sum::<f64>() / t as f64;
            let c: Vec<f64> = s.iter().map(|&v| v as f64 - mean).collect();
            let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
            c.iter().map(|v| v / norm).collect()
        })
        .collect();
    let mut r = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            r[i * n + j] = series[i].iter().zip(&series[j]).map(|(a, b)| a * b).sum();
        }
    }
    r
}

/// The host reference of `profile_statistics`: mean and std (divisor n)
/// of each entry over the evaluation crops of `scans`.
fn reference_statistics(data: &Arc<Dataset>, scans: &[usize], n: usize) -> (Vec<f64>, Vec<f64>) {
    let batcher = Batcher {
        batch_size: 4,
        crop_length: CROP,
        seed: 0,
        drop_last: false,
        eval_crops: EVAL_CROPS,
    };
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for host in batcher.prefetch(data.clone(), batcher.evaluation_plan(data, scans)) {
        for row in 0..host.scan_index.len() {
            rows.push(pearson(&host.x, row, n, host.t));
        }
    }
    assert_eq!(rows.len(), scans.len() * EVAL_CROPS);
    let k = rows.len() as f64;
    let mean: Vec<f64> = (0..n * n)
        .map(|e| rows.iter().map(|r| r[e]).sum::<f64>() / k)
        .collect();
    let std = (0..n * n)
        .map(|e| (rows.iter().map(|r| (r[e] - mean[e]).powi(2)).sum::<f64>() / k).sqrt())
        .collect();
    (mean, std)
}

fn assert_near(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} against {w}"
        );
    }
}

#[test]
fn profile_statistics_are_the_evaluation_crops_moments() {
    let gpu = gpu();
    for (regions, scans, seed) in [(6, 7, 1), (11, 10, 2), (3, 5, 3)] {
        let data = Arc::new(dataset(scans, regions, seed));
        let cfg = config(ProfileNorm::Standardize);
        let model = Model::new(gpu, cfg.model.clone(), dims(regions), 4).unwrap();
        let subset: Vec<usize> = (0..scans - 1).collect();
        let (mean, std) = profile_statistics(gpu, &model, &data, &subset, &cfg).unwrap();
        let (want_mean, want_std) = reference_statistics(&data, &subset, regions);
        assert_near(&mean, &want_mean, 1e-5, "mean");
        assert_near(&std, &want_std, 1e-4, "std");
        // The statistics are not trivial: off-diagonal edges vary.
        assert!(want_std.iter().any(|&s| s > 0.05), "{want_std:?}");
    }
}

/// x [B, N, T] random crops → the lift's profiles against the f64 formula.
#[test]
fn profiles_are_shifted_and_scaled_per_edge() {
    let gpu = gpu();
    for (case, &(b, n, norm)) in [
        (2, 5, ProfileNorm::Standardize),
        (3, 9, ProfileNorm::Center),
        (1, 4, ProfileNorm::Standardize),
        (4, 12, ProfileNorm::Center),
    ]
    .iter()
    .enumerate()
    {
        let model = Model::new(gpu, model_config(norm), dims(n), 3).unwrap();
        let seed = 10 + case as u64;
        let x = stptf::check::random_vec(b * n * CROP, seed);
        let mean: Vec<f64> = stptf::check::random_vec(n * n, seed + 1)
            .iter()
            .map(|&v| v as f64 * 0.3)
            .collect();
        let mut std: Vec<f64> = stptf::check::random_vec(n * n, seed + 2)
            .iter()
            .map(|&v| 0.1 + v.abs() as f64)
            .collect();
        // The diagonal is constant over scans: std 0, so standardize zeroes it.
        for i in 0..n {
            std[i * n + i] = 0.0;
        }
        model.set_profile_statistics(gpu, &mean, &std).unwrap();
        assert!(!model.profile_statistics_unset(gpu).unwrap());
        let xt = gpu.upload(&x, &[b, n, CROP]).unwrap();
        let got = gpu
            .read(&model.profiles(gpu, &xt).unwrap().expect("pearson profiles"))
            .unwrap();
        let raw = gpu
            .read(&model.raw_profiles(gpu, &xt).unwrap().unwrap())
            .unwrap();
        let mut want = Vec::new();
        for row in 0..b {
            let r = pearson(&x, row, n, CROP);
            for e in 0..n * n {
                want.push(match norm {
                    ProfileNorm::Standardize if std[e] > 0.0 => (r[e] - mean[e]) / std[e],
                    ProfileNorm::Standardize => 0.0,
                    _ => r[e] - mean[e],
                });
            }
            assert_near(
                &raw[row * n * n..(row + 1) * n * n]
                    .iter()
                    .map(|&v| v as f64)
                    .collect::<Vec<_>>(),
                &r,
                1e-5,
                "raw profile",
            );
        }
        let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
        assert_near(&got, &want, 1e-4, &format!("{norm:?} [{b}, {n}]"));
    }
}

fn buffers(gpu: &Gpu, model: &Model) -> (Vec<f32>, Vec<f32>) {
    (
        gpu.read(model.params.buffer(PROFILE_NORM_SHIFT).unwrap())
            .unwrap(),
        gpu.read(model.params.buffer(PROFILE_NORM_SCALE).unwrap())
            .unwrap(),
    )
}

#[test]
fn the_first_training_phase_sets_the_statistics_and_later_phases_keep_them() {
    let gpu = gpu();
    let regions = 6;
    let data = Arc::new(dataset(12, regions, 4));
    let cfg = config(ProfileNorm::Standardize);
    let model = Model::new(gpu, cfg.model.clone(), dims(regions), 5).unwrap();
    assert!(model.profile_statistics_unset(gpu).unwrap());
    let pretrain_scans: Vec<usize> = (0..8).collect();
    let run = |phase: Phase, scans: &[usize]| {
        train_phase(
            gpu,
            &model,
            &data,
            scans,
            &cfg,
            phase,
            None,
            &RunOptions {
                quiet: true,
                ..Default::default()
            },
        )
        .unwrap();
        gpu.flush().unwrap();
    };
    run(Phase::Pretrain, &pretrain_scans);
    assert!(!model.profile_statistics_unset(gpu).unwrap());
    let (shift, scale) = buffers(gpu, &model);
    let (mean, std) = reference_statistics(&data, &pretrain_scans, regions);
    let want_shift: Vec<f64> = mean.iter().map(|m| -m).collect();
    let want_scale: Vec<f64> = std
        .iter()
        .map(|&s| if s > 1e-6 { 1.0 / s } else { 0.0 })
        .collect();
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    assert_near(&f(&shift), &want_shift, 1e-5, "shift");
    assert_near(&f(&scale), &want_scale, 1e-3, "scale");
    // Fine-tuning on other scans keeps the pretraining statistics.
    run(Phase::Finetune, &(4..12).collect::<Vec<_>>());
    assert_eq!(buffers(gpu, &model), (shift, scale));

    // The statistics travel with the weights, and weights without them
    // (a model pretrained without profile_norm) are refused, naming them.
    let saved = model.params.to_host(gpu).unwrap();
    let loaded = Model::from_host(gpu, cfg.model.clone(), dims(regions), &saved).unwrap();
    assert_eq!(buffers(gpu, &loaded), buffers(gpu, &model));
    let without: Vec<_> = stptf::model::params::with_initial_buffers(
        &cfg.model,
        &saved
            .iter()
            .filter(|t| !t.name.starts_with("profile_norm."))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let e = match Model::from_host(gpu, cfg.model.clone(), dims(regions), &without) {
        Ok(_) => panic!("weights without the profile statistics were accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("profile_norm."), "{e}");

    // A model that does not normalize has no statistics to take.
    let plain = Model::new(gpu, model_config(ProfileNorm::None), dims(regions), 5).unwrap();
    assert!(!plain.profile_statistics_unset(gpu).unwrap());
    assert!(plain.set_profile_statistics(gpu, &mean, &std).is_err());
    assert!(plain.params.buffer(PROFILE_NORM_SHIFT).is_err());
}
