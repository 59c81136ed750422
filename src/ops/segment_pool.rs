//! Segment attention pooling for the progressive temporal aggregation
//! (`shaders/segment_pool.wgsl`).
//!
//! h [B, T, D], scores e [B, T], valid [B, T] (1 real, 0 padding), segment
//! length P, K = ⌈T/P⌉ segments (the last may be shorter). Within each
//! segment `a = softmax(e)` over its valid frames (0 for padding; a segment
//! with no valid frame gets zero weights and g = 0), and `g_k = Σ a_t h_t`.
//! The second stage (softmax over the K segments, weighted sum) is the same
//! op with T = P = K on g, with [`segment_valid`] as its mask.

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("segment_pool");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    frames: u32,
    dim: u32,
    seg: u32,
    segs: u32,
    total: u32,
}

/// Sizes of one pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub frames: usize,
    pub dim: usize,
    pub seg: usize,
}

impl Dims {
    pub fn segments(&self) -> usize {
        self.frames.div_ceil(self.seg)
    }

    fn params(&self, total: usize) -> Params {
        Params {
            batch: self.batch as u32,
            frames: self.frames as u32,
            dim: self.dim as u32,
            seg: self.seg as u32,
            segs: self.segments() as u32,
            total: total as u32,
        }
    }
}

fn shape_error(message: String) -> GpuError {
    GpuError::Shape {
        op: "segment_pool",
        message,
    }
}

fn check_mask(what: &str, t: &Tensor, batch: usize, frames: usize) -> Result<()> {
    if t.shape() != [batch, frames] {
        return Err(shape_error(format!(
            "{what} {:?}, expected [{batch}, {frames}]",
            t.shape()
        )));
    }
    Ok(())
}

fn dims(h: &Tensor, seg: usize) -> Result<Dims> {
    let &[batch, frames, dim] = h.shape() else {
        return Err(shape_error(format!("h {:?} must be [B, T, D]", h.shape())));
    };
    if seg == 0 {
        return Err(shape_error("segment length 0".into()));
    }
    Ok(Dims {
        batch,
        frames,
        dim,
        seg,
    })
}

fn launch(
    gpu: &Gpu,
    entry: &'static str,
    args: &[(u32, crate::gpu::Arg<'_>)],
    d: &Dims,
    total: usize,
) -> Result<()> {
    if total == 0 {
        return Ok(());
    }
    let tensors: Vec<&Tensor> = args.iter().map(|(_, a)| a.tensor).collect();
    gpu.planner("segment_pool").whole(
        &tensors,
        "the kernels index items from 0 over whole tensors; h [B, T, D] is a few MB at the model's sizes",
    )?;
    gpu.launch_threads(SHADER.kernel(entry), args, &d.params(total), total as u64)
}

/// Forward: returns g [B, K, D] and the weights a [B, T] (keep them for the backward).
pub fn segment_pool(
    gpu: &Gpu,
    h: &Tensor,
    e: &Tensor,
    valid: &Tensor,
    seg: usize,
) -> Result<(Tensor, Tensor)> {
    let d = dims(h, seg)?;
    check_mask("scores", e, d.batch, d.frames)?;
    check_mask("valid", valid, d.batch, d.frames)?;
    let k = d.segments();
    let a = gpu.empty(&[d.batch, d.frames]);
    let g = gpu.empty(&[d.batch, k, d.dim]);
    launch(
        gpu,
        "weights",
        &[(1, e.arg()), (2, valid.arg()), (3, a.arg())],
        &d,
        d.batch * k,
    )?;
    launch(
        gpu,
        "pool",
        &[(0, h.arg()), (3, a.arg()), (4, g.arg())],
        &d,
        d.batch * k * d.dim,
    )?;
    Ok((g, a))
}

/// Backward from dg [B, K, D]: returns (dh [B, T, D], de [B, T]).
pub fn segment_pool_backward(
    gpu: &Gpu,
    h: &Tensor,
    a: &Tensor,
    dg: &Tensor,
    seg: usize,
) -> Result<(Tensor, Tensor)> {
    let d = dims(h, seg)?;
    check_mask("weights", a, d.batch, d.frames)?;
    let k = d.segments();
    if dg.shape() != [d.batch, k, d.dim] {
        return Err(shape_error(format!(
            "gradient {:?}, expected [{}, {k}, {}]",
            dg.shape(),
            d.batch,
            d.dim
        )));
    }
    let dh = gpu.empty(h.shape());
    let de = gpu.empty(a.shape());
    launch(
        gpu,
        "backward_dh",
        &[(3, a.arg()), (5, dg.arg()), (6, dh.arg())],
        &d,
        h.len(),
    )?;
    launch(
        gpu,
        "backward_de",
        &[(0, h.arg()), (3, a.arg()), (5, dg.arg()), (7, de.arg())],
        &d,
        d.batch * k,
    )?;
    Ok((dh, de))
}

/// valid [B, T] → [B, K]: 1 where segment k has a valid frame.
pub fn segment_valid(gpu: &Gpu, valid: &Tensor, seg: usize) -> Result<Tensor> {
    let &[batch, frames] = valid.shape() else {
        return Err(shape_error(format!(
            "valid {:?} must be [B, T]",
            valid.shape()
        )));
    };
    if seg == 0 {
        return Err(shape_error("segment length 0".into()));
    }
    let d = Dims {
        batch,
        frames,
        dim: 1,
        seg,
    };
    let out = gpu.empty(&[batch, d.segments()]);
    launch(
        gpu,
        "segment_valid",
        &[(2, valid.arg()), (4, out.arg())],
        &d,
        out.len(),
    )?;
    Ok(out)
}

/// f64 CPU references.
pub mod reference {
    use super::Dims;

    /// (g [B, K, D], a [B, T]).
    pub fn segment_pool(h: &[f64], e: &[f64], valid: &[f64], d: &Dims) -> (Vec<f64>, Vec<f64>) {
        let k = d.segments();
        let mut a = vec![0.0; d.batch * d.frames];
        let mut g = vec![0.0; d.batch * k * d.dim];
        for b in 0..d.batch {
            for s in 0..k {
                let frames: Vec<usize> = (s * d.seg..((s + 1) * d.seg).min(d.frames))
                    .map(|t| b * d.frames + t)
                    .filter(|&i| valid[i] > 0.5)
                    .collect();
                let Some(top) = frames.iter().map(|&i| e[i]).reduce(f64::max) else {
                    continue;
                };
                let sum: f64 = frames.iter().map(|&i| (e[i] - top).exp()).sum();
                for &i in &frames {
                    a[i] = (e[i] - top).exp() / sum;
                    for c in 0..d.dim {
                        g[(b * k + s) * d.dim + c] += a[i] * h[i * d.dim + c];
                    }
                }
            }
        }
        (g, a)
    }

    /// (dh, de) for upstream dg.
    pub fn segment_pool_backward(
        h: &[f64],
        a: &[f64],
        dg: &[f64],
        d: &Dims,
    ) -> (Vec<f64>, Vec<f64>) {
        let k = d.segments();
        let mut dh = vec![0.0; h.len()];
        let mut de = vec![0.0; a.len()];
        for b in 0..d.batch {
            for s in 0..k {
                let frames: Vec<usize> = (s * d.seg..((s + 1) * d.seg).min(d.frames))
                    .map(|t| b * d.frames + t)
                    .collect();
                let row = &dg[(b * k + s) * d.dim..(b * k + s + 1) * d.dim];
                let q: Vec<f64> = frames
                    .iter()
                    .map(|&i| (0..d.dim).map(|c| row[c] * h[i * d.dim + c]).sum())
                    .collect();
                let mean: f64 = frames.iter().zip(&q).map(|(&i, q)| a[i] * q).sum();
                for (&i, q) in frames.iter().zip(&q) {
                    de[i] = a[i] * (q - mean);
                    for c in 0..d.dim {
                        dh[i * d.dim + c] = a[i] * row[c];
                    }
                }
            }
        }
        (dh, de)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_gradient, finite_difference, gpu, random_vec, to_f64, Tolerance,
    };

    /// valid[b, t] = 1 for t < lengths[b].
    fn mask(batch: usize, frames: usize, lengths: &[usize]) -> Vec<f32> {
        (0..batch * frames)
            .map(|i| ((i % frames) < lengths[i / frames]) as u8 as f32)
            .collect()
    }

    /// (B, T, D, P, valid lengths): P ∤ T, a padded scan whose last
    /// segment has no valid frame, all-padding, P = T, P = 1, T = 200.
    fn cases() -> Vec<(Dims, Vec<usize>)> {
        let d = |batch, frames, dim, seg| Dims {
            batch,
            frames,
            dim,
            seg,
        };
        vec![
            (d(1, 1, 1, 1), vec![1]),
            (d(2, 10, 3, 4), vec![10, 7]),
            (d(2, 12, 5, 4), vec![12, 6]), // second scan: segment 2 all padding
            (d(3, 16, 2, 16), vec![16, 0, 9]),
            (d(1, 7, 4, 1), vec![5]),
            (d(2, 200, 3, 16), vec![200, 130]),
        ]
    }

    #[test]
    fn forward_and_backward_match_reference() {
        let gpu = gpu();
        for (k, (d, lengths)) in cases().into_iter().enumerate() {
            let hv = random_vec(d.batch * d.frames * d.dim, 700 + k as u64);
            let ev: Vec<f32> = random_vec(d.batch * d.frames, 710 + k as u64)
                .iter()
                .map(|v| 3.0 * v)
                .collect();
            let vv = mask(d.batch, d.frames, &lengths);
            let dgv = random_vec(d.batch * d.segments() * d.dim, 720 + k as u64);
            let h = gpu.upload(&hv, &[d.batch, d.frames, d.dim]).unwrap();
            let e = gpu.upload(&ev, &[d.batch, d.frames]).unwrap();
            let valid = gpu.upload(&vv, &[d.batch, d.frames]).unwrap();
            let dg = gpu.upload(&dgv, &[d.batch, d.segments(), d.dim]).unwrap();
            let (g, a) = segment_pool(gpu, &h, &e, &valid, d.seg).unwrap();
            let (h64, e64, v64) = (to_f64(&hv), to_f64(&ev), to_f64(&vv));
            let (want_g, want_a) = reference::segment_pool(&h64, &e64, &v64, &d);
            let what = format!("{d:?} lengths {lengths:?}");
            assert_close(
                &gpu.read(&a).unwrap(),
                &want_a,
                Tolerance::ACCUMULATION,
                &format!("a {what}"),
            );
            assert_close(
                &gpu.read(&g).unwrap(),
                &want_g,
                Tolerance::ACCUMULATION,
                &format!("g {what}"),
            );
            let (dh, de) = segment_pool_backward(gpu, &h, &a, &dg, d.seg).unwrap();
            let (want_dh, want_de) =
                reference::segment_pool_backward(&h64, &want_a, &to_f64(&dgv), &d);
            assert_close(
                &gpu.read(&dh).unwrap(),
                &want_dh,
                Tolerance::ACCUMULATION,
                &format!("dh {what}"),
            );
            assert_close(
                &gpu.read(&de).unwrap(),
                &want_de,
                Tolerance::ACCUMULATION,
                &format!("de {what}"),
            );
        }
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let d = Dims {
            batch: 2,
            frames: 7,
            dim: 3,
            seg: 3,
        };
        let h = to_f64(&random_vec(d.batch * d.frames * d.dim, 730));
        let e = to_f64(&random_vec(d.batch * d.frames, 731));
        let valid = to_f64(&mask(d.batch, d.frames, &[7, 4]));
        let dg = to_f64(&random_vec(d.batch * d.segments() * d.dim, 732));
        let loss = |h: &[f64], e: &[f64]| -> f64 {
            let (g, _) = reference::segment_pool(h, e, &valid, &d);
            g.iter().zip(&dg).map(|(x, y)| x * y).sum()
        };
        let (_, a) = reference::segment_pool(&h, &e, &valid, &d);
        let (dh, de) = reference::segment_pool_backward(&h, &a, &dg, &d);
        assert_gradient(&dh, &finite_difference(&h, |x| loss(x, &e)), "dh");
        assert_gradient(&de, &finite_difference(&e, |x| loss(&h, x)), "de");
    }

    #[test]
    fn two_stages_with_segment_validity() {
        let gpu = gpu();
        let d = Dims {
            batch: 2,
            frames: 13,
            dim: 4,
            seg: 4,
        };
        let k = d.segments();
        let hv = random_vec(d.batch * d.frames * d.dim, 740);
        let ev = random_vec(d.batch * d.frames, 741);
        let uv = random_vec(d.batch * k, 742);
        let vv = mask(d.batch, d.frames, &[13, 5]);
        let h = gpu.upload(&hv, &[d.batch, d.frames, d.dim]).unwrap();
        let e = gpu.upload(&ev, &[d.batch, d.frames]).unwrap();
        let valid = gpu.upload(&vv, &[d.batch, d.frames]).unwrap();
        let (g, _) = segment_pool(gpu, &h, &e, &valid, d.seg).unwrap();
        let seg_valid = segment_valid(gpu, &valid, d.seg).unwrap();
        assert_eq!(
            gpu.read(&seg_valid).unwrap(),
            vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
        );
        let u = gpu.upload(&uv, &[d.batch, k]).unwrap();
        let (z, gamma) = segment_pool(gpu, &g, &u, &seg_valid, k).unwrap();
        assert_eq!(z.shape(), &[d.batch, 1, d.dim]);
        let (g64, _) = reference::segment_pool(&to_f64(&hv), &to_f64(&ev), &to_f64(&vv), &d);
        let d2 = Dims {
            batch: d.batch,
            frames: k,
            dim: d.dim,
            seg: k,
        };
        let (want_z, want_gamma) = reference::segment_pool(
            &g64,
            &to_f64(&uv),
            &to_f64(&gpu.read(&seg_valid).unwrap()),
            &d2,
        );
        assert_close(
            &gpu.read(&gamma).unwrap(),
            &want_gamma,
            Tolerance::ACCUMULATION,
            "gamma",
        );
        assert_close(
            &gpu.read(&z).unwrap(),
            &want_z,
            Tolerance::ACCUMULATION,
            "Z_st",
        );
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let gpu = gpu();
        let h = gpu.zeros(&[2, 5, 3]).unwrap();
        let e = gpu.zeros(&[2, 4]).unwrap();
        let v = gpu.zeros(&[2, 5]).unwrap();
        assert!(matches!(
            segment_pool(gpu, &h, &e, &v, 2),
            Err(GpuError::Shape { .. })
        ));
        assert!(matches!(
            segment_pool(gpu, &h, &v, &v, 0),
            Err(GpuError::Shape { .. })
        ));
    }
}
