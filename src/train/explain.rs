//! Which regions and which moments decided: occlusion importance (issue 12).
//!
//! For every evaluation crop of every scan, the model's logit of the scan's
//! own class is computed once on the crop as is, then once with one region
//! zeroed (its whole row in the crop) and once with one segment of frames
//! zeroed (all regions, `model.segment` frames). The drop in that logit is the
//! importance of what was occluded. Crops are averaged per scan, and scans per
//! class (mean and standard deviation over the scans of that class).
//!
//! Zero is the occlusion value because inputs are z-scored per region: zero is
//! each region's mean over the scan, the "no information" value, and it is
//! also what SCA and TCA write when they mask.
//!
//! Every logit comes from the model's own GPU forward ([`Model::encode`] and
//! [`Model::head`], the same calls as `score_scans`), so no new kernel is
//! involved; what this module adds is host-side bookkeeping, checked against
//! forwards on explicitly occluded datasets in the tests.

use std::sync::Arc;

use crate::autograd::Tape;
use crate::config::Config;
use crate::data::batch::{assemble, HostBatch};
use crate::data::Dataset;
use crate::gpu::Gpu;
use crate::model::Model;
use crate::train::trainer::{evaluation_batcher, TrainError};

/// Mean and standard deviation over the scans of one class, per item
/// (region or segment).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassProfile {
    pub class: usize,
    /// Scans of this class that were explained.
    pub scans: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// Occlusion importance of regions and of segments of the crop, per class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Importance {
    /// One profile over the N regions per class.
    pub regions: Vec<ClassProfile>,
    /// One profile over the ⌈T / P⌉ segments of the crop per class.
    pub segments: Vec<ClassProfile>,
    /// Frames per segment (`model.segment`); the last segment may be shorter.
    pub segment_length: usize,
    pub crop_length: usize,
}

/// What to occlude in one forward.
#[derive(Clone, Copy, Debug)]
enum Occlusion {
    Region(usize),
    /// Frames [start, end) of the crop.
    Frames(usize, usize),
}

fn occlude(host: &HostBatch, what: Occlusion) -> Vec<f32> {
    let mut x = host.x.clone();
    for b in 0..host.b {
        for r in 0..host.n {
            let row = &mut x[(b * host.n + r) * host.t..(b * host.n + r + 1) * host.t];
            match what {
                Occlusion::Region(region) if region == r => row.fill(0.0),
                Occlusion::Frames(start, end) => row[start..end].fill(0.0),
                Occlusion::Region(_) => {}
            }
        }
    }
    x
}

/// Logits [B, C] of the model on x (the batch's shape and validity).
fn logits(gpu: &Gpu, model: &Model, host: &HostBatch, x: &[f32]) -> Result<Vec<f32>, TrainError> {
    let xt = gpu.upload(x, &[host.b, host.n, host.t])?;
    let valid = gpu.upload(&host.valid, &[host.b, host.t])?;
    let mut tape = Tape::new(gpu);
    let enc = model.encode(&mut tape, &xt, &valid)?;
    let out = model.head(&mut tape, enc.z_st)?;
    Ok(gpu.read(tape.value(out))?)
}

/// Segments [start, end) of a crop of `t` frames, `p` frames each.
pub fn segments(t: usize, p: usize) -> Vec<(usize, usize)> {
    let p = p.max(1);
    (0..t.div_ceil(p))
        .map(|k| (k * p, ((k + 1) * p).min(t)))
        .collect()
}

/// Per-scan occlusion drops: for each scan in `scans` (in order), the mean over
/// its crops of logit(own class, intact) − logit(own class, occluded), for each
/// region and for each segment.
pub fn occlusion_per_scan(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    scans: &[usize],
    cfg: &Config,
) -> Result<(Vec<Vec<f64>>, Vec<Vec<f64>>), TrainError> {
    let batcher = evaluation_batcher(cfg);
    let c = model.dims.n_classes;
    let n = model.dims.n_regions;
    let segs = segments(cfg.model.crop, cfg.model.segment);
    let mut region_sums = vec![vec![0.0f64; n]; dataset.scans.len()];
    let mut segment_sums = vec![vec![0.0f64; segs.len()]; dataset.scans.len()];
    let mut counts = vec![0usize; dataset.scans.len()];
    for crops in batcher.evaluation_plan(dataset, scans) {
        let host = assemble(dataset, &crops, cfg.model.crop);
        let base = logits(gpu, model, &host, &host.x)?;
        let drops = |occluded: &[f32]| -> Vec<f64> {
            (0..host.b)
                .map(|row| {
                    let k = row * c + host.labels[row] as usize;
                    base[k] as f64 - occluded[k] as f64
                })
                .collect()
        };
        for r in 0..n {
            let d = drops(&logits(
                gpu,
                model,
                &host,
                &occlude(&host, Occlusion::Region(r)),
            )?);
            for (row, &scan) in host.scan_index.iter().enumerate() {
                region_sums[scan][r] += d[row];
            }
        }
        for (k, &(start, end)) in segs.iter().enumerate() {
            let x = occlude(&host, Occlusion::Frames(start, end));
            let d = drops(&logits(gpu, model, &host, &x)?);
            for (row, &scan) in host.scan_index.iter().enumerate() {
                segment_sums[scan][k] += d[row];
            }
        }
        for &scan in &host.scan_index {
            counts[scan] += 1;
        }
    }
    let mean_of = |sums: &[Vec<f64>], s: usize| -> Result<Vec<f64>, TrainError> {
        if counts[s] == 0 {
            return Err(TrainError::Invalid(format!(
                "scan {} got no evaluation crop",
                dataset.scans[s].id
            )));
        }
        Ok(sums[s].iter().map(|v| v / counts[s] as f64).collect())
    };
    let regions = scans
        .iter()
        .map(|&s| mean_of(&region_sums, s))
        .collect::<Result<_, _>>()?;
    let segments = scans
        .iter()
        .map(|&s| mean_of(&segment_sums, s))
        .collect::<Result<_, _>>()?;
    Ok((regions, segments))
}

/// Mean and (population) standard deviation per item over the rows whose
/// class is `class`.
pub fn class_profile(rows: &[Vec<f64>], classes: &[u32], class: usize) -> ClassProfile {
    let picked: Vec<&Vec<f64>> = rows
        .iter()
        .zip(classes)
        .filter(|(_, &c)| c as usize == class)
        .map(|(r, _)| r)
        .collect();
    let width = rows.first().map_or(0, Vec::len);
    let count = picked.len().max(1) as f64;
    let mean: Vec<f64> = (0..width)
        .map(|i| picked.iter().map(|r| r[i]).sum::<f64>() / count)
        .collect();
    let std = (0..width)
        .map(|i| (picked.iter().map(|r| (r[i] - mean[i]).powi(2)).sum::<f64>() / count).sqrt())
        .collect();
    ClassProfile {
        class,
        scans: picked.len(),
        mean,
        std,
    }
}

/// Occlusion importance of `scans` (e.g. a fold's test scans), per class.
pub fn explain(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    scans: &[usize],
    cfg: &Config,
) -> Result<Importance, TrainError> {
    let (regions, segs) = occlusion_per_scan(gpu, model, dataset, scans, cfg)?;
    let labels = dataset.labels();
    let classes: Vec<u32> = scans.iter().map(|&s| labels[s]).collect();
    let per_class = |rows: &[Vec<f64>]| {
        (0..model.dims.n_classes)
            .map(|c| class_profile(rows, &classes, c))
            .collect()
    };
    Ok(Importance {
        regions: per_class(&regions),
        segments: per_class(&segs),
        segment_length: cfg.model.segment.max(1),
        crop_length: cfg.model.crop,
    })
}

/// Each region's importance over all explained scans: the mean over classes
/// of each class's mean drop, weighted by the class's scan count.
pub fn region_scores(importance: &Importance) -> Vec<f64> {
    let n = importance.regions.first().map_or(0, |p| p.mean.len());
    let total: usize = importance.regions.iter().map(|p| p.scans).sum();
    (0..n)
        .map(|r| {
            importance
                .regions
                .iter()
                .map(|p| p.mean[r] * p.scans as f64)
                .sum::<f64>()
                / total.max(1) as f64
        })
        .collect()
}

/// Regions ranked by [`region_scores`], most important first (ties by index).
pub fn ranked_regions(importance: &Importance) -> Vec<usize> {
    let score = region_scores(importance);
    let n = score.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    order
}

/// Fraction of the top `truth.len()` ranked items that are in `truth`.
pub fn precision_at_k(ranked: &[usize], truth: &[usize]) -> f64 {
    let k = truth.len();
    if k == 0 {
        return 0.0;
    }
    let hits = ranked.iter().take(k).filter(|r| truth.contains(r)).count();
    hits as f64 / k as f64
}

/// `importance_regions.csv`: region, class, mean, std (one row per region and class).
pub fn regions_csv(importance: &Importance, names: &[String]) -> String {
    let mut out = String::from("region,name,class,mean,std,scans\n");
    for p in &importance.regions {
        for (r, (m, s)) in p.mean.iter().zip(&p.std).enumerate() {
            let name = names
                .get(r)
                .cloned()
                .unwrap_or_else(|| format!("region{r}"));
            out.push_str(&format!("{r},{name},{},{m},{s},{}\n", p.class, p.scans));
        }
    }
    out
}

/// `importance_time.csv`: segment, first and last frame, class, mean, std.
pub fn time_csv(importance: &Importance) -> String {
    let segs = segments(importance.crop_length, importance.segment_length);
    let mut out = String::from("segment,first_frame,last_frame,class,mean,std,scans\n");
    for p in &importance.segments {
        for (k, (m, s)) in p.mean.iter().zip(&p.std).enumerate() {
            let (start, end) = segs.get(k).copied().unwrap_or((0, 0));
            out.push_str(&format!(
                "{k},{start},{},{},{m},{s},{}\n",
                end.saturating_sub(1),
                p.class,
                p.scans
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_counts_the_top_k_only() {
        assert_eq!(precision_at_k(&[3, 1, 0, 2], &[1, 3]), 1.0);
        assert_eq!(precision_at_k(&[3, 0, 1, 2], &[1, 3]), 0.5);
        assert_eq!(precision_at_k(&[0, 2, 1, 3], &[1, 3]), 0.0);
    }

    #[test]
    fn segments_cover_the_crop_once() {
        assert_eq!(segments(10, 4), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(segments(8, 4), vec![(0, 4), (4, 8)]);
    }

    #[test]
    fn class_profiles_use_only_their_class() {
        let rows = vec![vec![1.0, 2.0], vec![3.0, 2.0], vec![10.0, 0.0]];
        let p = class_profile(&rows, &[0, 0, 1], 0);
        assert_eq!(p.scans, 2);
        assert_eq!(p.mean, vec![2.0, 2.0]);
        assert_eq!(p.std, vec![1.0, 0.0]);
    }

    #[test]
    fn occlusion_zeroes_exactly_the_named_region_or_frames() {
        let host = HostBatch {
            x: (1..=12).map(|v| v as f32).collect(),
            valid: vec![1.0; 6],
            labels: vec![0, 1],
            scan_index: vec![0, 1],
            b: 2,
            n: 2,
            t: 3,
        };
        let r = occlude(&host, Occlusion::Region(1));
        assert_eq!(r, vec![1., 2., 3., 0., 0., 0., 7., 8., 9., 0., 0., 0.]);
        let f = occlude(&host, Occlusion::Frames(1, 3));
        assert_eq!(f, vec![1., 0., 0., 4., 0., 0., 7., 0., 0., 10., 0., 0.]);
    }
}
