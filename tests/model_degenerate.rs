//! Degenerate inputs (docs/design.md §3): crops with all-zero regions (outside the
//! field of view) and padded frames (valid = 0) through `make_views`,
//! `pretrain_loss` (FGCO global and fine) and `finetune_loss`, for every
//! encoder: every output and every gradient is finite.

use stptf::autograd::Tape;
use stptf::check::{gpu, random_vec};
use stptf::config::{AugmentConfig, AugmentKind, Encoder, Fgco, ModelConfig, Norm};
use stptf::model::{make_views, DataDims, Model};
use stptf::ops::barlow::LAMBDA;

#[test]
fn zero_regions_and_padded_frames_stay_finite() {
    let gpu = gpu();
    let (b, n, t) = (3, 8, 24);
    let mut x = random_vec(b * n * t, 77);
    let mut valid = vec![1.0f32; b * t];
    // Scan 0: regions 2 and 5 all zero; scan 1: frames 15.. padded; scan 2:
    // both (region 0 zero, frames 9.. padded).
    for (bi, i) in [(0usize, 2usize), (0, 5), (2, 0)] {
        x[(bi * n + i) * t..(bi * n + i + 1) * t].fill(0.0);
    }
    for (bi, from) in [(1usize, 15usize), (2, 9)] {
        for tt in from..t {
            valid[bi * t + tt] = 0.0;
            for i in 0..n {
                x[(bi * n + i) * t + tt] = 0.0;
            }
        }
    }
    let xg = gpu.upload(&x, &[b, n, t]).unwrap();
    let vg = gpu.upload(&valid, &[b, t]).unwrap();
    let labels = gpu.upload(&[0.0, 1.0, 0.0], &[b]).unwrap();
    let dims = DataDims {
        n_regions: n,
        n_classes: 2,
    };
    for kind in [AugmentKind::Stiga, AugmentKind::Random] {
        let aug = AugmentConfig {
            kind,
            ..AugmentConfig::default()
        };
        let views = make_views(gpu, &xg, &vg, &aug, 9, 2).unwrap();
        for (what, tns) in [
            ("x_s", &views.x_s),
            ("x_t", &views.x_t),
            ("p_roi", &views.p_roi),
            ("p_frame", &views.p_frame),
        ] {
            assert!(
                gpu.read(tns).unwrap().iter().all(|v| v.is_finite()),
                "{kind:?} {what}"
            );
        }
        let p_roi = gpu.read(&views.p_roi).unwrap();
        for (bi, i) in [(0usize, 2usize), (0, 5), (2, 0)] {
            assert_eq!(p_roi[bi * n + i], 0.0);
        }
        let p_frame = gpu.read(&views.p_frame).unwrap();
        for (k, &v) in valid.iter().enumerate() {
            if v == 0.0 {
                assert_eq!(p_frame[k], 0.0);
            }
        }
        for (encoder, norm) in [
            (Encoder::Psta, Norm::None),
            (Encoder::Psta, Norm::Layer),
            (Encoder::GcnOnly, Norm::None),
            (Encoder::Lstm, Norm::None),
            (Encoder::StgcnStyle, Norm::None),
        ] {
            let cfg = ModelConfig {
                crop: t,
                node_channels: 4,
                width: 8,
                embed_dim: 4,
                window: 8,
                stride: 4,
                segment: 8,
                qk_dim: 4,
                proj_dim: 8,
                norm,
                encoder,
                ..ModelConfig::default()
            };
            let model = Model::new(gpu, cfg, dims, 1).unwrap();
            for which in ["global", "fine", "finetune"] {
                if which == "fine" && encoder == Encoder::Lstm {
                    continue; // no region embeddings (a documented error)
                }
                let what = format!("{kind:?} {encoder:?}/{norm:?} {which}");
                model.params.store.zero_grads(gpu).unwrap();
                let mut tape = Tape::new(gpu);
                let (l, extra) = match which {
                    "global" | "fine" => {
                        let fgco = if which == "global" {
                            Fgco::Global
                        } else {
                            Fgco::Fine
                        };
                        let l = model
                            .pretrain_loss(
                                &mut tape, &xg, &views.x_s, &views.x_t, &vg, fgco, LAMBDA,
                            )
                            .unwrap();
                        (l, None)
                    }
                    _ => {
                        let (l, logits) = model
                            .finetune_loss(&mut tape, &xg, &vg, &labels, None)
                            .unwrap();
                        (l, Some(logits))
                    }
                };
                let loss = tape.value(l).clone();
                let logits = extra.map(|v| tape.value(v).clone());
                tape.backward(l, &model.params.store).unwrap();
                let value = gpu.read(&loss).unwrap()[0];
                assert!(value.is_finite(), "{what}: loss {value}");
                if let Some(logits) = logits {
                    assert!(gpu.read(&logits).unwrap().iter().all(|v| v.is_finite()));
                }
                for g in model.params.grads_to_host(gpu).unwrap() {
                    assert!(
                        g.data.iter().all(|v| v.is_finite()),
                        "{what}: gradient {}",
                        g.name
                    );
                }
            }
            // The embeddings themselves.
            let mut tape = Tape::new(gpu);
            let enc = model.encode(&mut tape, &xg, &vg).unwrap();
            for (name, v) in [
                ("z_fused", enc.z_fused),
                ("z_temporal", enc.z_temporal),
                ("z_st", enc.z_st),
            ] {
                assert!(
                    gpu.read(tape.value(v))
                        .unwrap()
                        .iter()
                        .all(|v| v.is_finite()),
                    "{kind:?} {encoder:?}: {name}"
                );
            }
        }
    }
}
