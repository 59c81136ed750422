//! STIGA masking probabilities (`shaders/stiga.wgsl`; docs/design.md §3 SCA/TCA).
//!
//! - SCA, per region: `d_i = Σ_{j≠i} |r_ij|` over the crop's |Pearson| matrix
//!   (regions that are all zero in the crop are skipped as j and get p = 0),
//! - TCA, per frame: `r_t = ‖x[:,t] − x[:,t−1]‖₂`, `r_0 = r_1` (padded frames get p = 0),
//!
//! both mapped by `s = log(· + ε)`, `w = (s − s_min)/(s_mean − s_min + ε)`,
//! `p = min(p_s · w / mean(w), p_max)` with the statistics over the eligible
//! items only; no eligible item or mean(w) = 0 gives p = 0 everywhere. The
//! random-augmentation ablation ([`uniform_probabilities`]) gives every
//! eligible item the mean of those p. No gradient: these are inputs.

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("stiga");
/// ε of the degree/rate logarithm and of the w denominator.
pub const EPS: f32 = 1e-6;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    items: u32,
    nodes: u32,
    frames: u32,
    invert: u32,
    total: u32,
    p_scale: f32,
    p_max: f32,
    eps: f32,
}

/// The scale and the cap of the probability mapping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mapping {
    pub p_scale: f32,
    pub p_max: f32,
}

impl Default for Mapping {
    /// The paper's p_s = 0.2 and p_max = 0.7 (both SCA and TCA).
    fn default() -> Self {
        Self {
            p_scale: 0.2,
            p_max: 0.7,
        }
    }
}

/// What a [B, M] mask marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    /// 1 = excluded (SCA's "all zero in this crop" flags).
    Excluded,
    /// 1 = eligible (TCA's valid frames).
    Valid,
}

fn shape_error(message: String) -> GpuError {
    GpuError::Shape {
        op: "stiga",
        message,
    }
}

#[allow(clippy::too_many_arguments)]
fn params(
    batch: usize,
    items: usize,
    nodes: usize,
    frames: usize,
    kind: MaskKind,
    total: usize,
    m: Mapping,
) -> Params {
    Params {
        batch: batch as u32,
        items: items as u32,
        nodes: nodes as u32,
        frames: frames as u32,
        invert: (kind == MaskKind::Excluded) as u32,
        total: total as u32,
        p_scale: m.p_scale,
        p_max: m.p_max,
        eps: EPS,
    }
}

fn launch(
    gpu: &Gpu,
    entry: &'static str,
    args: &[(u32, crate::gpu::Arg<'_>)],
    p: &Params,
) -> Result<()> {
    if p.total == 0 {
        return Ok(());
    }
    let tensors: Vec<&Tensor> = args.iter().map(|(_, a)| a.tensor).collect();
    gpu.planner("stiga").whole(
        &tensors,
        "the mapping's statistics (min and mean of w) run over every eligible item of the batch in one launch",
    )?;
    gpu.launch_threads(SHADER.kernel(entry), args, p, p.total as u64)
}

/// Scores [B, M] → probabilities [B, M] (the mapping shared by SCA and TCA).
fn map_scores(gpu: &Gpu, score: &Tensor, mask: &Tensor, p: Params) -> Result<Tensor> {
    let prob = gpu.empty(score.shape());
    launch(
        gpu,
        "map_scores",
        &[(1, mask.arg()), (2, score.arg()), (3, prob.arg())],
        &Params {
            total: p.batch,
            ..p
        },
    )?;
    Ok(prob)
}

/// SCA: |Pearson| matrices [B, N, N] of the crop and "all zero" flags [B, N]
/// → masking probabilities [B, N].
pub fn sca_probabilities(
    gpu: &Gpu,
    abs_corr: &Tensor,
    zero: &Tensor,
    m: Mapping,
) -> Result<Tensor> {
    let &[b, n, n2] = abs_corr.shape() else {
        return Err(shape_error(format!(
            "correlations {:?} must be [B, N, N]",
            abs_corr.shape()
        )));
    };
    if n != n2 || zero.shape() != [b, n] {
        return Err(shape_error(format!(
            "correlations {:?} with zero flags {:?}",
            abs_corr.shape(),
            zero.shape()
        )));
    }
    let p = params(b, n, n, 1, MaskKind::Excluded, b * n, m);
    let score = gpu.empty(&[b, n]);
    launch(
        gpu,
        "sca_score",
        &[(0, abs_corr.arg()), (1, zero.arg()), (2, score.arg())],
        &p,
    )?;
    map_scores(gpu, &score, zero, p)
}

/// TCA: the crop x [B, N, T] and valid [B, T] → masking probabilities [B, T].
pub fn tca_probabilities(gpu: &Gpu, x: &Tensor, valid: &Tensor, m: Mapping) -> Result<Tensor> {
    let &[b, n, t] = x.shape() else {
        return Err(shape_error(format!("x {:?} must be [B, N, T]", x.shape())));
    };
    if valid.shape() != [b, t] {
        return Err(shape_error(format!(
            "x {:?} with valid {:?}",
            x.shape(),
            valid.shape()
        )));
    }
    let p = params(b, t, n, t, MaskKind::Valid, b * t, m);
    let score = gpu.empty(&[b, t]);
    launch(gpu, "tca_score", &[(0, x.arg()), (2, score.arg())], &p)?;
    map_scores(gpu, &score, valid, p)
}

/// The random-augmentation ablation: every eligible item of a scan gets the
/// mean of `prob` over that scan's eligible items; the others get 0.
pub fn uniform_probabilities(
    gpu: &Gpu,
    prob: &Tensor,
    mask: &Tensor,
    kind: MaskKind,
) -> Result<Tensor> {
    let &[b, items] = prob.shape() else {
        return Err(shape_error(format!(
            "probabilities {:?} must be [B, M]",
            prob.shape()
        )));
    };
    if mask.shape() != prob.shape() {
        return Err(shape_error(format!(
            "mask {:?} for {:?}",
            mask.shape(),
            prob.shape()
        )));
    }
    let out = gpu.empty(prob.shape());
    let p = params(b, items, 1, 1, kind, b, Mapping::default());
    launch(
        gpu,
        "uniform_mean",
        &[(1, mask.arg()), (3, prob.arg()), (4, out.arg())],
        &p,
    )?;
    Ok(out)
}

/// f64 CPU references.
pub mod reference {
    use super::Mapping;
    const EPS: f64 = super::EPS as f64;

    /// Scores [M] and eligibility → probabilities for one scan.
    pub fn map(score: &[f64], eligible: &[bool], m: Mapping) -> Vec<f64> {
        let items: Vec<f64> = score
            .iter()
            .zip(eligible)
            .filter(|(_, &e)| e)
            .map(|(&s, _)| s)
            .collect();
        if items.is_empty() {
            return vec![0.0; score.len()];
        }
        let lo = items.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = items.iter().sum::<f64>() / items.len() as f64;
        let w = |s: f64| (s - lo) / (mean - lo + EPS);
        let wmean = items.iter().map(|&s| w(s)).sum::<f64>() / items.len() as f64;
        score
            .iter()
            .zip(eligible)
            .map(|(&s, &e)| {
                if e && wmean > 0.0 {
                    (m.p_scale as f64 * w(s) / wmean).min(m.p_max as f64)
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// r [B, N, N], zero [B, N] → p [B, N].
    pub fn sca(r: &[f64], zero: &[f64], b: usize, n: usize, m: Mapping) -> Vec<f64> {
        let mut out = Vec::with_capacity(b * n);
        for bi in 0..b {
            let keep: Vec<bool> = (0..n).map(|i| zero[bi * n + i] < 0.5).collect();
            let score: Vec<f64> = (0..n)
                .map(|i| {
                    let d: f64 = (0..n)
                        .filter(|&j| j != i && keep[j])
                        .map(|j| r[(bi * n + i) * n + j].abs())
                        .sum();
                    (d + EPS).ln()
                })
                .collect();
            out.extend(map(&score, &keep, m));
        }
        out
    }

    /// x [B, N, T], valid [B, T] → p [B, T].
    pub fn tca(x: &[f64], valid: &[f64], b: usize, n: usize, t: usize, m: Mapping) -> Vec<f64> {
        let mut out = Vec::with_capacity(b * t);
        for bi in 0..b {
            let rate = |tt: usize| -> f64 {
                if tt == 0 || tt >= t {
                    return 0.0;
                }
                (0..n)
                    .map(|ni| {
                        let base = (bi * n + ni) * t;
                        (x[base + tt] - x[base + tt - 1]).powi(2)
                    })
                    .sum::<f64>()
                    .sqrt()
            };
            let score: Vec<f64> = (0..t)
                .map(|tt| (rate(if tt == 0 { 1 } else { tt }) + EPS).ln())
                .collect();
            let keep: Vec<bool> = (0..t).map(|tt| valid[bi * t + tt] > 0.5).collect();
            out.extend(map(&score, &keep, m));
        }
        out
    }

    /// Uniform probabilities: the mean over eligible items, 0 elsewhere.
    pub fn uniform(p: &[f64], eligible: &[bool], items: usize) -> Vec<f64> {
        p.chunks(items)
            .zip(eligible.chunks(items))
            .flat_map(|(p, e)| {
                let count = e.iter().filter(|&&x| x).count();
                let mean = p
                    .iter()
                    .zip(e)
                    .filter(|(_, &x)| x)
                    .map(|(v, _)| v)
                    .sum::<f64>()
                    / count.max(1) as f64;
                e.iter().map(move |&x| if x { mean } else { 0.0 })
            })
            .collect()
    }

    /// |Pearson| [B, N, N] of x [B, N, T] (over all T frames), with 0 for a
    /// zero-variance region: the test input SCA takes from another kernel.
    pub fn abs_pearson(x: &[f64], b: usize, n: usize, t: usize) -> Vec<f64> {
        let mut out = vec![0.0; b * n * n];
        for bi in 0..b {
            let centred: Vec<Vec<f64>> = (0..n)
                .map(|i| {
                    let row = &x[(bi * n + i) * t..(bi * n + i + 1) * t];
                    let mean = row.iter().sum::<f64>() / t as f64;
                    row.iter().map(|v| v - mean).collect()
                })
                .collect();
            let norm: Vec<f64> = centred
                .iter()
                .map(|c| c.iter().map(|v| v * v).sum::<f64>().sqrt())
                .collect();
            for i in 0..n {
                for j in 0..n {
                    let dot: f64 = centred[i].iter().zip(&centred[j]).map(|(a, b)| a * b).sum();
                    let den = norm[i] * norm[j];
                    out[(bi * n + i) * n + j] = if den > 0.0 { (dot / den).abs() } else { 0.0 };
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, gpu, random_vec, to_f64, Tolerance};

    /// x [B, N, T] with the listed (b, region) rows set to zero.
    fn crop(b: usize, n: usize, t: usize, seed: u64, zero_rows: &[(usize, usize)]) -> Vec<f32> {
        let mut x = random_vec(b * n * t, seed);
        for &(bi, i) in zero_rows {
            x[(bi * n + i) * t..(bi * n + i + 1) * t].fill(0.0);
        }
        x
    }

    fn zero_flags(x: &[f32], b: usize, n: usize, t: usize) -> Vec<f32> {
        (0..b * n)
            .map(|r| x[r * t..(r + 1) * t].iter().all(|&v| v == 0.0) as u8 as f32)
            .collect()
    }

    fn check_sca(
        gpu: &Gpu,
        b: usize,
        n: usize,
        t: usize,
        x: &[f32],
        m: Mapping,
        what: &str,
    ) -> Vec<f32> {
        let r = reference::abs_pearson(&to_f64(x), b, n, t);
        let zero = zero_flags(x, b, n, t);
        let rt = gpu
            .upload(&r.iter().map(|&v| v as f32).collect::<Vec<_>>(), &[b, n, n])
            .unwrap();
        let zt = gpu.upload(&zero, &[b, n]).unwrap();
        let p = sca_probabilities(gpu, &rt, &zt, m).unwrap();
        let got = gpu.read(&p).unwrap();
        let want = reference::sca(&to_f64(&gpu.read(&rt).unwrap()), &to_f64(&zero), b, n, m);
        assert_close(&got, &want, Tolerance::COMPOSITE, what);
        let eligible: Vec<bool> = zero.iter().map(|&z| z < 0.5).collect();
        let u = uniform_probabilities(gpu, &p, &zt, MaskKind::Excluded).unwrap();
        assert_close(
            &gpu.read(&u).unwrap(),
            &reference::uniform(&to_f64(&got), &eligible, n),
            Tolerance::ACCUMULATION,
            &format!("{what} uniform"),
        );
        got
    }

    #[allow(clippy::too_many_arguments)]
    fn check_tca(
        gpu: &Gpu,
        b: usize,
        n: usize,
        t: usize,
        x: &[f32],
        valid: &[f32],
        m: Mapping,
        what: &str,
    ) -> Vec<f32> {
        let xt = gpu.upload(x, &[b, n, t]).unwrap();
        let vt = gpu.upload(valid, &[b, t]).unwrap();
        let p = tca_probabilities(gpu, &xt, &vt, m).unwrap();
        let got = gpu.read(&p).unwrap();
        let want = reference::tca(&to_f64(x), &to_f64(valid), b, n, t, m);
        assert_close(&got, &want, Tolerance::COMPOSITE, what);
        let eligible: Vec<bool> = valid.iter().map(|&v| v > 0.5).collect();
        let u = uniform_probabilities(gpu, &p, &vt, MaskKind::Valid).unwrap();
        assert_close(
            &gpu.read(&u).unwrap(),
            &reference::uniform(&to_f64(&got), &eligible, t),
            Tolerance::ACCUMULATION,
            &format!("{what} uniform"),
        );
        got
    }

    #[test]
    fn sca_matches_reference() {
        let gpu = gpu();
        let m = Mapping::default();
        // Random crops, zero regions, N = 200, N = 1, and a low cap that binds.
        check_sca(gpu, 2, 9, 20, &crop(2, 9, 20, 800, &[]), m, "random");
        let p = check_sca(
            gpu,
            2,
            12,
            16,
            &crop(2, 12, 16, 801, &[(0, 3), (0, 7), (1, 0)]),
            m,
            "zero regions",
        );
        assert_eq!(p[3], 0.0);
        assert_eq!(p[7], 0.0);
        assert_eq!(p[12], 0.0);
        check_sca(
            gpu,
            1,
            200,
            30,
            &crop(1, 200, 30, 802, &[(0, 5)]),
            m,
            "N = 200",
        );
        let p = check_sca(gpu, 1, 1, 5, &crop(1, 1, 5, 803, &[]), m, "N = 1");
        assert_eq!(p, vec![0.0]);
        let capped = Mapping {
            p_scale: 0.5,
            p_max: 0.55,
        };
        let p = check_sca(gpu, 1, 30, 12, &crop(1, 30, 12, 804, &[]), capped, "cap");
        assert!(p.contains(&0.55), "{p:?}");
    }

    #[test]
    fn sca_degenerate_crops_give_zero_probabilities() {
        let gpu = gpu();
        let (b, n, t) = (2, 6, 10);
        // Scan 0: every region zero but one; scan 1: every region zero.
        let zero_rows: Vec<(usize, usize)> = (1..n)
            .map(|i| (0, i))
            .chain((0..n).map(|i| (1, i)))
            .collect();
        let x = crop(b, n, t, 810, &zero_rows);
        let p = check_sca(gpu, b, n, t, &x, Mapping::default(), "degenerate");
        assert!(p.iter().all(|&v| v == 0.0), "{p:?}");
    }

    #[test]
    fn tca_matches_reference() {
        let gpu = gpu();
        let m = Mapping::default();
        let valid = |b: usize, t: usize, lengths: &[usize]| -> Vec<f32> {
            (0..b * t)
                .map(|i| ((i % t) < lengths[i / t]) as u8 as f32)
                .collect()
        };
        check_tca(
            gpu,
            2,
            5,
            17,
            &random_vec(2 * 5 * 17, 820),
            &valid(2, 17, &[17, 17]),
            m,
            "random",
        );
        let p = check_tca(
            gpu,
            2,
            4,
            20,
            &random_vec(2 * 4 * 20, 821),
            &valid(2, 20, &[20, 11]),
            m,
            "padding",
        );
        assert!(p[20 + 11..].iter().all(|&v| v == 0.0));
        assert!(p[20..20 + 11].iter().any(|&v| v > 0.0));
        check_tca(
            gpu,
            1,
            200,
            9,
            &random_vec(200 * 9, 822),
            &valid(1, 9, &[9]),
            m,
            "N = 200",
        );
        check_tca(
            gpu,
            3,
            2,
            1,
            &random_vec(6, 823),
            &valid(3, 1, &[1, 0, 1]),
            m,
            "T = 1",
        );
    }

    #[test]
    fn tca_constant_change_rate_gives_zero_probabilities() {
        let gpu = gpu();
        let (b, n, t) = (2, 3, 8);
        // Scan 0 constant (r = 0), scan 1 a ramp with exact unit steps (r = √3 everywhere).
        let x: Vec<f32> = (0..b * n * t)
            .map(|i| if i < n * t { 0.5 } else { (i % t) as f32 })
            .collect();
        let p = check_tca(
            gpu,
            b,
            n,
            t,
            &x,
            &vec![1.0; b * t],
            Mapping::default(),
            "constant",
        );
        assert!(p.iter().all(|&v| v == 0.0), "{p:?}");
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let gpu = gpu();
        let r = gpu.zeros(&[2, 4, 4]).unwrap();
        let z = gpu.zeros(&[2, 3]).unwrap();
        assert!(matches!(
            sca_probabilities(gpu, &r, &z, Mapping::default()),
            Err(GpuError::Shape { .. })
        ));
        let x = gpu.zeros(&[2, 4, 5]).unwrap();
        assert!(matches!(
            tca_probabilities(gpu, &x, &z, Mapping::default()),
            Err(GpuError::Shape { .. })
        ));
    }
}
