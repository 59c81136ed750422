//! STIGA views on the GPU (`stptf::model::augment::make_views`): determinism,
//! exact zeros, empirical masking rates, degenerate regions and frames, hubs.

use stptf::check::{gpu, random_vec};
use stptf::config::{AugmentConfig, AugmentKind};
use stptf::gpu::{Gpu, Tensor};
use stptf::model::augment::make_views;

fn upload(gpu: &Gpu, v: &[f32], shape: &[usize]) -> Tensor {
    gpu.upload(v, shape).unwrap()
}

fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    gpu.read(t).unwrap()
}

/// A crop [B, N, T] with the listed (b, region) rows zero and scan b padded
/// from frame `len[b]` on; returns (x, valid).
fn crop(
    b: usize,
    n: usize,
    t: usize,
    seed: u64,
    zero_rows: &[(usize, usize)],
    len: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let mut x = random_vec(b * n * t, seed);
    for &(bi, i) in zero_rows {
        x[(bi * n + i) * t..(bi * n + i + 1) * t].fill(0.0);
    }
    let mut valid = vec![1.0; b * t];
    for bi in 0..b {
        for tt in len[bi]..t {
            valid[bi * t + tt] = 0.0;
            for i in 0..n {
                x[(bi * n + i) * t + tt] = 0.0;
            }
        }
    }
    (x, valid)
}

/// Which regions of X_S are masked ([B, N], true = all zero in X_S while
/// nonzero in X) and which frames of X_T; also checks that everything else
/// is exactly X.
fn masks(
    x: &[f32],
    xs: &[f32],
    xt: &[f32],
    b: usize,
    n: usize,
    t: usize,
) -> (Vec<bool>, Vec<bool>) {
    let mut roi = vec![false; b * n];
    for r in 0..b * n {
        let (a, s) = (&x[r * t..(r + 1) * t], &xs[r * t..(r + 1) * t]);
        if s.iter().all(|&v| v == 0.0) && a.iter().any(|&v| v != 0.0) {
            roi[r] = true;
        } else {
            assert_eq!(a, s, "row {r} of X_S is neither X nor exactly zero");
        }
    }
    let mut frame = vec![false; b * t];
    for bi in 0..b {
        for tt in 0..t {
            let col = |v: &[f32]| (0..n).map(|i| v[(bi * n + i) * t + tt]).collect::<Vec<_>>();
            let (a, s) = (col(x), col(xt));
            if s.iter().all(|&v| v == 0.0) && a.iter().any(|&v| v != 0.0) {
                frame[bi * t + tt] = true;
            } else {
                assert_eq!(
                    a, s,
                    "frame ({bi}, {tt}) of X_T is neither X nor exactly zero"
                );
            }
        }
    }
    (roi, frame)
}

#[test]
fn views_are_deterministic_in_seed_and_step() {
    let gpu = gpu();
    let (b, n, t) = (3, 12, 24);
    let (x, valid) = crop(b, n, t, 1, &[], &[t, t, t]);
    let (xg, vg) = (upload(gpu, &x, &[b, n, t]), upload(gpu, &valid, &[b, t]));
    let cfg = AugmentConfig::default();
    let get = |seed, step| {
        let v = make_views(gpu, &xg, &vg, &cfg, seed, step).unwrap();
        (read(gpu, &v.x_s), read(gpu, &v.x_t))
    };
    let a = get(7, 3);
    assert_eq!(a, get(7, 3), "same seed and step must give the same views");
    assert_ne!(a, get(7, 4), "another step must give other views");
    assert_ne!(a, get(8, 3), "another seed must give other views");
}

#[test]
fn masked_items_are_exactly_zero_and_rates_follow_probabilities() {
    let gpu = gpu();
    let (b, n, t) = (4, 16, 32);
    let (x, valid) = crop(b, n, t, 2, &[(1, 3), (2, 0), (2, 9)], &[t, 20, t, 27]);
    let (xg, vg) = (upload(gpu, &x, &[b, n, t]), upload(gpu, &valid, &[b, t]));
    for kind in [AugmentKind::Stiga, AugmentKind::Random] {
        let cfg = AugmentConfig {
            kind,
            ..AugmentConfig::default()
        };
        let steps = 150;
        let (mut roi_hits, mut frame_hits) = (vec![0usize; b * n], vec![0usize; b * t]);
        let (mut p_roi, mut p_frame) = (Vec::new(), Vec::new());
        for step in 0..steps {
            let v = make_views(gpu, &xg, &vg, &cfg, 11, step).unwrap();
            let (xs, xt) = (read(gpu, &v.x_s), read(gpu, &v.x_t));
            let (roi, frame) = masks(&x, &xs, &xt, b, n, t);
            roi.iter()
                .zip(&mut roi_hits)
                .for_each(|(&m, h)| *h += m as usize);
            frame
                .iter()
                .zip(&mut frame_hits)
                .for_each(|(&m, h)| *h += m as usize);
            if step == 0 {
                p_roi = read(gpu, &v.p_roi);
                p_frame = read(gpu, &v.p_frame);
            } else if step < 3 {
                // The probabilities depend on the crop only.
                assert_eq!(p_roi, read(gpu, &v.p_roi));
                assert_eq!(p_frame, read(gpu, &v.p_frame));
            }
        }
        for (what, hits, p) in [
            ("region", &roi_hits, &p_roi),
            ("frame", &frame_hits, &p_frame),
        ] {
            let mut total = (0.0, 0.0);
            for (i, (&h, &p)) in hits.iter().zip(p.iter()).enumerate() {
                let p = p as f64;
                assert!(
                    (0.0..=cfg.p_max + 1e-6).contains(&p),
                    "{kind:?} {what} {i}: p = {p}"
                );
                let rate = h as f64 / steps as f64;
                // 4.5 binomial standard deviations plus a little slack:
                // deterministic keys, so this never flakes.
                let tol = 4.5 * (p * (1.0 - p) / steps as f64).sqrt() + 0.02;
                assert!(
                    (rate - p).abs() <= tol,
                    "{kind:?} {what} {i}: masked {rate:.3} of the time, p = {p:.3}"
                );
                total.0 += rate;
                total.1 += p;
            }
            let n_items = hits.len() as f64;
            assert!(
                (total.0 - total.1).abs() / n_items < 0.02,
                "{kind:?} {what}: mean rate {} vs mean p {}",
                total.0 / n_items,
                total.1 / n_items
            );
        }
        // Zero regions and padded frames: p = 0, so never "masked".
        for &(bi, i) in &[(1usize, 3usize), (2, 0), (2, 9)] {
            assert_eq!(p_roi[bi * n + i], 0.0, "zero region ({bi}, {i})");
        }
        for (k, &v) in valid.iter().enumerate() {
            if v == 0.0 {
                assert_eq!(p_frame[k], 0.0, "padded frame {k}");
                assert_eq!(frame_hits[k], 0);
            }
        }
        if kind == AugmentKind::Random {
            // Uniform over the eligible items of each scan.
            for bi in 0..b {
                let eligible: Vec<f32> = (0..n)
                    .map(|i| p_roi[bi * n + i])
                    .filter(|&p| p > 0.0)
                    .collect();
                assert!(eligible.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-6));
            }
        }
    }
}

#[test]
fn degenerate_crops_give_finite_zero_probabilities() {
    let gpu = gpu();
    let (b, n, t) = (3, 6, 16);
    // Scan 0: every region zero; scan 1: every frame padded; scan 2: one
    // real region only and half the frames padded.
    let zero_rows: Vec<(usize, usize)> = (0..n)
        .map(|i| (0, i))
        .chain((1..n).map(|i| (2, i)))
        .collect();
    let (x, valid) = crop(b, n, t, 3, &zero_rows, &[t, 0, 8]);
    let (xg, vg) = (upload(gpu, &x, &[b, n, t]), upload(gpu, &valid, &[b, t]));
    for kind in [AugmentKind::Stiga, AugmentKind::Random] {
        let cfg = AugmentConfig {
            kind,
            ..AugmentConfig::default()
        };
        let v = make_views(gpu, &xg, &vg, &cfg, 5, 0).unwrap();
        for (what, t) in [
            ("x_s", &v.x_s),
            ("x_t", &v.x_t),
            ("p_roi", &v.p_roi),
            ("p_frame", &v.p_frame),
        ] {
            assert!(
                read(gpu, t).iter().all(|v| v.is_finite()),
                "{kind:?}: {what} not finite"
            );
        }
        let p_roi = read(gpu, &v.p_roi);
        assert!(
            p_roi[..n].iter().all(|&p| p == 0.0),
            "all-zero scan: {p_roi:?}"
        );
        assert!(
            p_roi[n..2 * n].iter().all(|&p| p == 0.0),
            "all-padded scan: {p_roi:?}"
        );
        let p_frame = read(gpu, &v.p_frame);
        assert!(p_frame[t..2 * t].iter().all(|&p| p == 0.0));
        assert!(p_frame[2 * t + 8..].iter().all(|&p| p == 0.0));
    }
}

#[test]
fn switches_leave_views_unmasked() {
    let gpu = gpu();
    let (b, n, t) = (2, 8, 16);
    let (x, valid) = crop(b, n, t, 4, &[], &[t, t]);
    let (xg, vg) = (upload(gpu, &x, &[b, n, t]), upload(gpu, &valid, &[b, t]));
    let none = AugmentConfig {
        kind: AugmentKind::None,
        ..AugmentConfig::default()
    };
    let v = make_views(gpu, &xg, &vg, &none, 1, 1).unwrap();
    assert_eq!(read(gpu, &v.x_s), x);
    assert_eq!(read(gpu, &v.x_t), x);
    assert!(read(gpu, &v.p_roi).iter().all(|&p| p == 0.0));
    let no_sca = AugmentConfig {
        sca: false,
        ..AugmentConfig::default()
    };
    let v = make_views(gpu, &xg, &vg, &no_sca, 1, 1).unwrap();
    assert_eq!(read(gpu, &v.x_s), x);
    assert!(read(gpu, &v.p_frame).iter().any(|&p| p > 0.0));
    let no_tca = AugmentConfig {
        tca: false,
        ..AugmentConfig::default()
    };
    let v = make_views(gpu, &xg, &vg, &no_tca, 1, 1).unwrap();
    assert_eq!(read(gpu, &v.x_t), x);
    assert!(read(gpu, &v.p_roi).iter().any(|&p| p > 0.0));
}

#[test]
fn hubs_get_higher_probabilities() {
    let gpu = gpu();
    let (n, t) = (10, 48);
    // Regions 0–3 share a common signal (each correlates strongly with the
    // other three: high weighted degree); regions 4–9 are independent noise.
    let common = random_vec(t, 100);
    let mut x = Vec::with_capacity(n * t);
    for i in 0..n {
        let noise = random_vec(t, 200 + i as u64);
        for tt in 0..t {
            x.push(if i < 4 {
                common[tt] + 0.3 * noise[tt]
            } else {
                noise[tt]
            });
        }
    }
    let xg = upload(gpu, &x, &[1, n, t]);
    let vg = upload(gpu, &vec![1.0; t], &[1, t]);
    let v = make_views(gpu, &xg, &vg, &AugmentConfig::default(), 0, 0).unwrap();
    let p = read(gpu, &v.p_roi);
    let hub_min = p[..4].iter().copied().fold(f32::INFINITY, f32::min);
    let other_max = p[4..].iter().copied().fold(0.0, f32::max);
    assert!(
        hub_min > other_max,
        "hubs {:?} vs others {:?}",
        &p[..4],
        &p[4..]
    );
    // Random augmentation: the same mean, uniform.
    let cfg = AugmentConfig {
        kind: AugmentKind::Random,
        ..AugmentConfig::default()
    };
    let u = read(gpu, &make_views(gpu, &xg, &vg, &cfg, 0, 0).unwrap().p_roi);
    let mean = p.iter().sum::<f32>() / n as f32;
    assert!(
        u.iter().all(|&q| (q - mean).abs() < 1e-5),
        "{u:?} vs mean {mean}"
    );
}
