//! Counter-based random numbers on the GPU (`shaders/random.wgsl`) with a
//! bit-identical CPU implementation ([`reference`]).
//!
//! The generator is Threefry-2x32-20 (Random123; JAX's generator): element i
//! of a draw is `threefry2x32(counter = (i, step), key = (seed, stream)).0`,
//! turned into an f32 in [0, 1) from its top 24 bits. Nothing is stored
//! between draws, so a run is reproducible from its seed and resumable from
//! its step count, and the host (e.g. the batcher choosing crops) can compute
//! exactly what the GPU would draw.
//!
//! Use a distinct `stream` per purpose (SCA mask, TCA mask, crops, dropout)
//! so that purposes never share numbers within a step.

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("random");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    base: u32,
    seed: u32,
    stream: u32,
    step: u32,
    cols: u32,
    prob_layout: u32,
    /// Counter of element 0 of the draw (`bernoulli_mask_from`).
    first: u32,
}

/// Which numbers to draw: the run's seed, a purpose, and the training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RngKey {
    pub seed: u32,
    pub stream: u32,
    pub step: u32,
}

/// How a Bernoulli mask of shape [.., rows, cols] reads its probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbLayout {
    /// `prob` has one value per mask element.
    PerElement,
    /// `prob` has one value per row (all dimensions but the last), shared
    /// along the last dimension.
    PerRow,
    /// `prob` has one value per column (the last dimension), shared by rows.
    PerColumn,
}

fn params(key: RngKey) -> Params {
    Params {
        n: 0,
        base: 0,
        seed: key.seed,
        stream: key.stream,
        step: key.step,
        cols: 1,
        prob_layout: 0,
        first: 0,
    }
}

/// Launches `entry` over `n` elements in binding-sized ranges; `src` is bound
/// at the same range as `out` when `src_ranged`, else whole.
fn run(
    gpu: &Gpu,
    entry: &'static str,
    n: usize,
    src: Option<(&Tensor, bool)>,
    out: &Tensor,
    params: Params,
) -> Result<()> {
    let kernel = SHADER.kernel(entry);
    for r in gpu.planner(entry).flat(n, 1)? {
        let (start, len) = (r.start, r.len());
        let mut args = vec![(1, out.range(start, len))];
        if let Some((src, ranged)) = src {
            args.push((
                0,
                if ranged {
                    src.range(start, len)
                } else {
                    src.arg()
                },
            ));
        }
        let p = Params {
            n: len as u32,
            base: start as u32,
            ..params
        };
        gpu.launch_threads(kernel, &args, &p, len as u64)?;
    }
    Ok(())
}

fn check_len(op: &'static str, n: usize) -> Result<()> {
    if n > u32::MAX as usize {
        return Err(GpuError::Shape {
            op,
            message: format!("{n} elements exceed the generator's 32-bit counter"),
        });
    }
    Ok(())
}

/// A tensor of uniform values in [0, 1).
pub fn uniform(gpu: &Gpu, shape: &[usize], key: RngKey) -> Result<Tensor> {
    let out = gpu.empty(shape);
    check_len("uniform", out.len())?;
    run(gpu, "uniform", out.len(), None, &out, params(key))?;
    Ok(out)
}

/// A keep-mask of `shape`: 1 where the element is kept, 0 where it is masked,
/// each element masked with its probability from `prob` (read per `layout`).
/// One draw per mask element: to mask whole ROIs of X [B, N, T], draw a
/// [B, N] mask (prob [B, N], per element) and broadcast it over T.
pub fn bernoulli_mask(
    gpu: &Gpu,
    shape: &[usize],
    prob: &Tensor,
    layout: ProbLayout,
    key: RngKey,
) -> Result<Tensor> {
    bernoulli_mask_from(gpu, shape, prob, layout, key, 0)
}

/// [`bernoulli_mask`] whose element i draws counter `first + i`: rows
/// r.. of a larger mask, e.g. a data-parallel rank's shard of the batch
/// (`crate::dist`), get exactly the numbers the whole mask's rows r.. get.
pub fn bernoulli_mask_from(
    gpu: &Gpu,
    shape: &[usize],
    prob: &Tensor,
    layout: ProbLayout,
    key: RngKey,
    first: usize,
) -> Result<Tensor> {
    let cols = shape.last().copied().unwrap_or(1);
    let n: usize = shape.iter().product();
    let rows = n.checked_div(cols).unwrap_or(0);
    let want = match layout {
        ProbLayout::PerElement => n,
        ProbLayout::PerRow => rows,
        ProbLayout::PerColumn => cols,
    };
    if prob.len() != want {
        return Err(GpuError::Shape {
            op: "bernoulli_mask",
            message: format!(
                "mask {shape:?} with {layout:?} needs {want} probabilities, got {:?}",
                prob.shape()
            ),
        });
    }
    check_len("bernoulli_mask", first + n)?;
    let out = gpu.empty(shape);
    let p = Params {
        cols: cols.max(1) as u32,
        first: first as u32,
        prob_layout: match layout {
            ProbLayout::PerElement => 0,
            ProbLayout::PerRow => 1,
            ProbLayout::PerColumn => 2,
        },
        ..params(key)
    };
    run(
        gpu,
        "bernoulli",
        n,
        Some((prob, layout == ProbLayout::PerElement)),
        &out,
        p,
    )?;
    Ok(out)
}

/// Per-item random crop offsets, uniform over 0..=max_offsets[b]. The
/// maximum offsets (scan length − crop length) and the result are f32
/// tensors holding integers. The host gets the same numbers from
/// [`reference::crop_offset`] without a readback.
pub fn crop_offsets(gpu: &Gpu, max_offsets: &Tensor, key: RngKey) -> Result<Tensor> {
    check_len("crop_offsets", max_offsets.len())?;
    let out = gpu.empty(max_offsets.shape());
    run(
        gpu,
        "crop_offsets",
        out.len(),
        Some((max_offsets, true)),
        &out,
        params(key),
    )?;
    Ok(out)
}

/// The CPU implementation, bit-identical to the shader; also usable by host
/// code (no f64 here: the f32 values are the specification).
pub mod reference {
    use super::{ProbLayout, RngKey};

    const ROT: [u32; 8] = [13, 15, 26, 6, 17, 29, 16, 24];

    /// Threefry-2x32 with 20 rounds (Random123's `threefry2x32`).
    pub fn threefry2x32(ctr: [u32; 2], key: [u32; 2]) -> [u32; 2] {
        let ks = [key[0], key[1], 0x1BD1_1BDA ^ key[0] ^ key[1]];
        let mut x = [ctr[0].wrapping_add(ks[0]), ctr[1].wrapping_add(ks[1])];
        for group in 0..5usize {
            for r in 0..4 {
                x[0] = x[0].wrapping_add(x[1]);
                x[1] = x[1].rotate_left(ROT[(group % 2) * 4 + r]) ^ x[0];
            }
            let s = group + 1;
            x[0] = x[0].wrapping_add(ks[s % 3]);
            x[1] = x[1].wrapping_add(ks[(s + 1) % 3]).wrapping_add(s as u32);
        }
        x
    }

    /// The 32 random bits of element `i`.
    pub fn bits(key: RngKey, i: u32) -> u32 {
        threefry2x32([i, key.step], [key.seed, key.stream])[0]
    }

    /// Top 24 bits times 2^-24: exact, in [0, 1).
    pub fn to_unit(bits: u32) -> f32 {
        (bits >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    pub fn uniform(key: RngKey, n: usize) -> Vec<f32> {
        (0..n as u32).map(|i| to_unit(bits(key, i))).collect()
    }

    pub fn bernoulli_mask(
        key: RngKey,
        shape: &[usize],
        prob: &[f32],
        layout: ProbLayout,
    ) -> Vec<f32> {
        bernoulli_mask_from(key, shape, prob, layout, 0)
    }

    /// Element i draws counter `first + i` (the shader's `bernoulli_mask_from`).
    pub fn bernoulli_mask_from(
        key: RngKey,
        shape: &[usize],
        prob: &[f32],
        layout: ProbLayout,
        first: usize,
    ) -> Vec<f32> {
        let cols = shape.last().copied().unwrap_or(1).max(1);
        let n: usize = shape.iter().product();
        (0..n)
            .map(|i| {
                let pr = match layout {
                    ProbLayout::PerElement => prob[i],
                    ProbLayout::PerRow => prob[i / cols],
                    ProbLayout::PerColumn => prob[i % cols],
                };
                if to_unit(bits(key, (first + i) as u32)) >= pr {
                    1.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// The crop offset of batch item `b` with maximum offset `max`.
    pub fn crop_offset(key: RngKey, b: usize, max: u32) -> u32 {
        let mx = max as f32;
        let u = to_unit(bits(key, b as u32));
        (u * (mx + 1.0)).floor().min(mx) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::gpu;

    const KEY: RngKey = RngKey {
        seed: 1234,
        stream: 7,
        step: 42,
    };

    #[test]
    fn threefry_matches_random123_known_answers() {
        // random123/tests/kat_vectors: threefry2x32 20 <ctr> <key> <out>.
        use reference::threefry2x32;
        assert_eq!(threefry2x32([0, 0], [0, 0]), [0x6b20_0159, 0x99ba_4efe]);
        assert_eq!(
            threefry2x32([u32::MAX; 2], [u32::MAX; 2]),
            [0x1cb9_96fc, 0xbb00_2be7]
        );
        assert_eq!(
            threefry2x32([0x243f_6a88, 0x85a3_08d3], [0x1319_8a2e, 0x0370_7344]),
            [0xc492_3a9c, 0x483d_f7a0]
        );
    }

    fn bits_of(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn gpu_uniforms_equal_cpu_bit_for_bit() {
        let gpu = gpu();
        for (n, key) in [
            (1usize, KEY),
            (1000, KEY),
            (
                70_001,
                RngKey {
                    seed: u32::MAX,
                    stream: 0,
                    step: u32::MAX,
                },
            ),
        ] {
            let got = gpu.read(&uniform(gpu, &[n], key).unwrap()).unwrap();
            assert_eq!(
                bits_of(&got),
                bits_of(&reference::uniform(key, n)),
                "n = {n}"
            );
        }
        // Split over bindings: the global index continues across launches.
        let small = crate::check::gpu_with_binding_limit(1024);
        let (u, trace) = small.traced(|| uniform(small, &[5, 200], KEY).unwrap());
        assert_eq!(
            crate::check::dispatches(&trace, "random::uniform").len(),
            4,
            "{trace:?}"
        );
        let got = small.read(&u).unwrap();
        assert_eq!(
            bits_of(&got),
            bits_of(&reference::uniform(KEY, 1000)),
            "split"
        );
    }

    #[test]
    fn uniform_mean_and_variance_are_right() {
        let gpu = gpu();
        let n = 100_000;
        let u = gpu.read(&uniform(gpu, &[n], KEY).unwrap()).unwrap();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = u.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: √(1/12/n) for the mean, √((1/80 − 1/144)/n) for the variance.
        let se_mean = (1.0 / 12.0 / n as f64).sqrt();
        let se_var = ((1.0 / 80.0 - 1.0 / 144.0) / n as f64).sqrt();
        assert!((mean - 0.5).abs() < 5.0 * se_mean, "mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 5.0 * se_var, "variance {var}");
    }

    #[test]
    fn draws_depend_on_seed_stream_and_step_only() {
        let gpu = gpu();
        let draw = |key: RngKey| gpu.read(&uniform(gpu, &[4096], key).unwrap()).unwrap();
        let a = draw(KEY);
        assert_eq!(bits_of(&a), bits_of(&draw(KEY)), "same key, same numbers");
        for other in [
            RngKey {
                step: KEY.step + 1,
                ..KEY
            },
            RngKey {
                stream: KEY.stream + 1,
                ..KEY
            },
            RngKey {
                seed: KEY.seed + 1,
                ..KEY
            },
        ] {
            let b = draw(other);
            let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
            // Equal 24-bit values by chance: about 4096 / 2^24 expected.
            assert!(same <= 2, "{other:?}: {same} of 4096 equal");
        }
    }

    #[test]
    fn masks_equal_cpu_and_mask_at_the_requested_rate() {
        let gpu = gpu();
        let probs = [0.0f32, 0.2, 0.7, 1.0];
        let cols = 20_000;
        let shape = [4, cols];
        let prob = gpu.upload(&probs, &[4]).unwrap();
        let mask = gpu
            .read(&bernoulli_mask(gpu, &shape, &prob, ProbLayout::PerRow, KEY).unwrap())
            .unwrap();
        assert_eq!(
            bits_of(&mask),
            bits_of(&reference::bernoulli_mask(
                KEY,
                &shape,
                &probs,
                ProbLayout::PerRow
            ))
        );
        for (row, &p) in mask.chunks(cols).zip(&probs) {
            assert!(row.iter().all(|&v| v == 0.0 || v == 1.0));
            let rate = row.iter().filter(|&&v| v == 0.0).count() as f64 / cols as f64;
            let se = (p as f64 * (1.0 - p as f64) / cols as f64).sqrt();
            assert!(
                (rate - p as f64).abs() <= 5.0 * se + 1e-12,
                "masked rate {rate} for probability {p}"
            );
        }
        // The ROI ([B, N]) and frame ([B, T]) layouts: per element, and a
        // probability per column shared by rows; awkward sizes.
        for (shape, layout, np) in [
            (vec![3usize, 200], ProbLayout::PerElement, 600usize),
            (vec![5, 1, 37], ProbLayout::PerColumn, 37),
            (vec![1], ProbLayout::PerRow, 1),
        ] {
            let pv: Vec<f32> = (0..np).map(|i| (i % 11) as f32 / 10.0).collect();
            let prob = gpu.upload(&pv, &[np]).unwrap();
            let got = gpu
                .read(&bernoulli_mask(gpu, &shape, &prob, layout, KEY).unwrap())
                .unwrap();
            assert_eq!(
                bits_of(&got),
                bits_of(&reference::bernoulli_mask(KEY, &shape, &pv, layout)),
                "{shape:?} {layout:?}"
            );
        }
        // Split launches with a per-element probability bound in ranges.
        let small = crate::check::gpu_with_binding_limit(1024);
        let pv: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 / 6.0).collect();
        let prob = small.upload(&pv, &[10, 100]).unwrap();
        let (mask, trace) = small.traced(|| {
            bernoulli_mask(small, &[10, 100], &prob, ProbLayout::PerElement, KEY).unwrap()
        });
        assert_eq!(
            crate::check::dispatches(&trace, "random::bernoulli").len(),
            4,
            "{trace:?}"
        );
        let got = small.read(&mask).unwrap();
        assert_eq!(
            bits_of(&got),
            bits_of(&reference::bernoulli_mask(
                KEY,
                &[10, 100],
                &pv,
                ProbLayout::PerElement
            )),
            "split"
        );
    }

    /// A data-parallel rank draws its shard's rows of the whole batch's
    /// mask: the rows of a mask drawn `from` an offset equal those rows of
    /// the whole mask, on the GPU and in the reference, also split over
    /// launches.
    #[test]
    fn a_mask_drawn_from_an_offset_is_those_rows_of_the_whole_mask() {
        let gpu = crate::check::gpu_with_binding_limit(1024);
        for (rows, cols, first_row, take) in [(8usize, 37usize, 4usize, 4usize), (6, 200, 2, 3)] {
            let pv: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32 / 12.0).collect();
            let whole = reference::bernoulli_mask(KEY, &[rows, cols], &pv, ProbLayout::PerElement);
            let part_p = &pv[first_row * cols..(first_row + take) * cols];
            let prob = gpu.upload(part_p, &[take, cols]).unwrap();
            let mask = bernoulli_mask_from(
                gpu,
                &[take, cols],
                &prob,
                ProbLayout::PerElement,
                KEY,
                first_row * cols,
            )
            .unwrap();
            let got = gpu.read(&mask).unwrap();
            let want = &whole[first_row * cols..(first_row + take) * cols];
            assert_eq!(
                bits_of(&got),
                bits_of(want),
                "{rows}x{cols} from row {first_row}"
            );
            let host = reference::bernoulli_mask_from(
                KEY,
                &[take, cols],
                part_p,
                ProbLayout::PerElement,
                first_row * cols,
            );
            assert_eq!(bits_of(&host), bits_of(want));
            // The same probabilities drawn without the offset differ: the
            // offset acts.
            let unshifted =
                reference::bernoulli_mask(KEY, &[take, cols], part_p, ProbLayout::PerElement);
            assert_ne!(bits_of(&unshifted), bits_of(want), "the offset must act");
        }
    }

    #[test]
    fn crop_offsets_equal_cpu_and_cover_the_range() {
        let gpu = gpu();
        let maxes: Vec<u32> = (0..5000).map(|b| [0, 1, 3, 188, 100_000][b % 5]).collect();
        let mv: Vec<f32> = maxes.iter().map(|&m| m as f32).collect();
        let got = gpu
            .read(&crop_offsets(gpu, &gpu.upload(&mv, &[5000]).unwrap(), KEY).unwrap())
            .unwrap();
        let mut counts = [0usize; 4];
        for (b, (&g, &m)) in got.iter().zip(&maxes).enumerate() {
            assert_eq!(g, reference::crop_offset(KEY, b, m) as f32, "item {b}");
            assert!(
                g >= 0.0 && g <= m as f32 && g.fract() == 0.0,
                "item {b}: {g} of {m}"
            );
            if m == 3 {
                counts[g as usize] += 1;
            }
        }
        // max 3: 1000 items spread over 4 offsets, 250 each (se ≈ 13.7).
        assert!(
            counts
                .iter()
                .all(|&c| (c as f64 - 250.0).abs() < 5.0 * 13.7),
            "{counts:?}"
        );
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let prob = gpu.zeros(&[3]).unwrap();
        let e = bernoulli_mask(gpu, &[4, 5], &prob, ProbLayout::PerRow, KEY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 4 probabilities"), "{e}");
    }
}
