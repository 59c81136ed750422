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

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::autograd::Tape;
use crate::config::{Config, ExplainConfig};
use crate::data::batch::{assemble, HostBatch};
use crate::data::Dataset;
use crate::gpu::Gpu;
use crate::model::Model;
use crate::train::plots::{glass_brain_svg, heatmap_svg, importance_svg};
use crate::train::trainer::{evaluation_batcher, TrainError};

/// Mean and standard deviation over the scans of one class, per item
/// (region or segment).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassProfile {
    pub class: usize,
    /// Scans of this class that were explained.
    pub scans: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// Occlusion importance of regions and of segments of the crop, per class.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Importance {
    /// One profile over the N regions per class.
    pub regions: Vec<ClassProfile>,
    /// One profile over the ⌈T / P⌉ segments of the crop per class.
    pub segments: Vec<ClassProfile>,
    /// One profile over N · K cells (region-major: cell r · K + k is region r
    /// occluded in segment k only) per class; empty without the heatmap.
    pub cells: Vec<ClassProfile>,
    /// Frames per segment (`model.segment`); the last segment may be shorter.
    pub segment_length: usize,
    pub crop_length: usize,
    pub perturbation: Perturbation,
    /// Fraction of the explained scans whose crop-averaged intact logits put
    /// their own class first: a map of a model that does not decode means little.
    pub accuracy: f64,
}

/// How a region's frames are replaced when it is occluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Perturbation {
    /// Set to 0 (the region's mean; inputs are z-scored per region).
    Zero,
    /// Rotated in time by half the crop (frame f takes frame (f + T/2) mod T):
    /// the region keeps its values, variance and (circular) autocorrelation,
    /// and loses its alignment, i.e. its coupling, with every other region.
    Shift,
    /// Its frames permuted at random (keeps values and variance, breaks both
    /// its coupling and its autocorrelation). The default: on planted data it
    /// is the variant that ranks the planted community first (docs/importance.md).
    #[default]
    Shuffle,
    /// Independent Gaussian noise with the row's own mean and variance.
    Noise,
}

impl Perturbation {
    pub const ALL: [Perturbation; 4] = [
        Perturbation::Zero,
        Perturbation::Shift,
        Perturbation::Shuffle,
        Perturbation::Noise,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Perturbation::Zero => "zero",
            Perturbation::Shift => "shift",
            Perturbation::Shuffle => "shuffle",
            Perturbation::Noise => "noise",
        }
    }

    pub fn parse(text: &str) -> Option<Perturbation> {
        Perturbation::ALL.into_iter().find(|p| p.name() == text)
    }
}

/// What to occlude in one forward.
#[derive(Clone, Copy, Debug)]
enum Occlusion {
    /// Frames [start, end) of one region, replaced by `Perturbation`.
    Region(usize, usize, usize),
    /// Frames [start, end) of the crop, set to 0 in every region.
    Frames(usize, usize),
}

/// Replaces `row[start..end]` following `how`; the source frames of a shift
/// and the values of a shuffle come from the whole row (the crop), so a
/// segment-restricted occlusion breaks the segment's alignment with the rest.
fn perturb(row: &mut [f32], start: usize, end: usize, how: Perturbation, rng: &mut ChaCha8Rng) {
    let t = row.len();
    if t == 0 || start >= end {
        return;
    }
    match how {
        Perturbation::Zero => row[start..end].fill(0.0),
        Perturbation::Shift => {
            let source = row.to_vec();
            for (f, v) in row.iter_mut().enumerate().take(end).skip(start) {
                *v = source[(f + t / 2) % t];
            }
        }
        Perturbation::Shuffle => {
            let mut source = row.to_vec();
            source.shuffle(rng);
            row[start..end].copy_from_slice(&source[start..end]);
        }
        Perturbation::Noise => {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / t as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / t as f64;
            for v in &mut row[start..end] {
                let z: f64 = StandardNormal.sample(rng);
                *v = (mean + var.sqrt() * z) as f32;
            }
        }
    }
}

fn occlude(host: &HostBatch, what: Occlusion, how: Perturbation, seed: u64) -> Vec<f32> {
    let mut x = host.x.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for b in 0..host.b {
        for r in 0..host.n {
            let row = &mut x[(b * host.n + r) * host.t..(b * host.n + r + 1) * host.t];
            match what {
                Occlusion::Region(region, start, end) if region == r => {
                    perturb(row, start, end.min(host.t), how, &mut rng)
                }
                Occlusion::Frames(start, end) => row[start..end.min(host.t)].fill(0.0),
                Occlusion::Region(..) => {}
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

/// What to compute, beyond the region and segment drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExplainOptions {
    pub perturbation: Perturbation,
    /// Independent draws averaged per occlusion (random perturbations only).
    pub draws: usize,
    /// Also occlude each region within each segment (N · K more forwards per batch).
    pub heatmap: bool,
}

impl ExplainOptions {
    /// The options of an experiment's `[explain]` section.
    pub fn from_config(cfg: &ExplainConfig) -> Self {
        ExplainOptions {
            perturbation: cfg.perturbation,
            draws: cfg.draws,
            heatmap: cfg.heatmap,
        }
    }
}

impl Default for ExplainOptions {
    fn default() -> Self {
        ExplainOptions {
            perturbation: Perturbation::default(),
            draws: 1,
            heatmap: true,
        }
    }
}

/// Per-scan results, in the order of the scans asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct PerScan {
    /// [scans][N]: drop of the own-class logit with a region occluded.
    pub regions: Vec<Vec<f64>>,
    /// [scans][K]: with a segment zeroed in every region.
    pub segments: Vec<Vec<f64>>,
    /// [scans][N · K] (region-major), empty unless `heatmap`.
    pub cells: Vec<Vec<f64>>,
    /// [scans][C]: intact logits averaged over the scan's crops.
    pub logits: Vec<Vec<f64>>,
}

/// Per-scan occlusion drops: for each scan in `scans` (in order), the mean over
/// its crops of logit(own class, intact) − logit(own class, occluded), for each
/// region, each segment and (with `heatmap`) each region within each segment.
pub fn occlusion_per_scan(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    scans: &[usize],
    cfg: &Config,
    options: &ExplainOptions,
) -> Result<PerScan, TrainError> {
    let batcher = evaluation_batcher(cfg);
    let c = model.dims.n_classes;
    let n = model.dims.n_regions;
    let t = cfg.model.crop;
    let segs = segments(t, cfg.model.segment);
    let k_segs = segs.len();
    let draws = match options.perturbation {
        Perturbation::Zero | Perturbation::Shift => 1,
        _ => options.draws.max(1),
    };
    let cell_count = if options.heatmap { n * k_segs } else { 0 };
    let scans_total = dataset.scans.len();
    let mut region_sums = vec![vec![0.0f64; n]; scans_total];
    let mut segment_sums = vec![vec![0.0f64; k_segs]; scans_total];
    let mut cell_sums = vec![vec![0.0f64; cell_count]; scans_total];
    let mut logit_sums = vec![vec![0.0f64; c]; scans_total];
    let mut counts = vec![0usize; scans_total];
    for (batch, crops) in batcher
        .evaluation_plan(dataset, scans)
        .into_iter()
        .enumerate()
    {
        let host = assemble(dataset, &crops, t);
        let base = logits(gpu, model, &host, &host.x)?;
        // Mean drop per crop over the draws of one occlusion.
        let drop_of = |what: Occlusion, id: usize| -> Result<Vec<f64>, TrainError> {
            let mut d = vec![0.0f64; host.b];
            for draw in 0..draws {
                let seed = ((batch as u64) << 40) ^ ((id as u64) << 8) ^ draw as u64;
                let occluded = logits(
                    gpu,
                    model,
                    &host,
                    &occlude(&host, what, options.perturbation, seed),
                )?;
                for (row, v) in d.iter_mut().enumerate() {
                    let k = row * c + host.labels[row] as usize;
                    *v += (base[k] as f64 - occluded[k] as f64) / draws as f64;
                }
            }
            Ok(d)
        };
        #[allow(clippy::needless_range_loop)] // r is also the occlusion's id
        for r in 0..n {
            let d = drop_of(Occlusion::Region(r, 0, t), r)?;
            for (row, &scan) in host.scan_index.iter().enumerate() {
                region_sums[scan][r] += d[row];
            }
        }
        for (k, &(start, end)) in segs.iter().enumerate() {
            let d = drop_of(Occlusion::Frames(start, end), n + k)?;
            for (row, &scan) in host.scan_index.iter().enumerate() {
                segment_sums[scan][k] += d[row];
            }
        }
        if options.heatmap {
            for r in 0..n {
                for (k, &(start, end)) in segs.iter().enumerate() {
                    let id = n + k_segs + r * k_segs + k;
                    let d = drop_of(Occlusion::Region(r, start, end), id)?;
                    for (row, &scan) in host.scan_index.iter().enumerate() {
                        cell_sums[scan][r * k_segs + k] += d[row];
                    }
                }
            }
        }
        for (row, &scan) in host.scan_index.iter().enumerate() {
            counts[scan] += 1;
            for (j, sum) in logit_sums[scan].iter_mut().enumerate() {
                *sum += base[row * c + j] as f64;
            }
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
    let pick = |sums: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, TrainError> {
        scans.iter().map(|&s| mean_of(sums, s)).collect()
    };
    Ok(PerScan {
        regions: pick(&region_sums)?,
        segments: pick(&segment_sums)?,
        cells: if options.heatmap {
            pick(&cell_sums)?
        } else {
            Vec::new()
        },
        logits: pick(&logit_sums)?,
    })
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
    options: &ExplainOptions,
) -> Result<Importance, TrainError> {
    let per = occlusion_per_scan(gpu, model, dataset, scans, cfg, options)?;
    let labels = dataset.labels();
    let classes: Vec<u32> = scans.iter().map(|&s| labels[s]).collect();
    let per_class = |rows: &[Vec<f64>]| {
        if rows.is_empty() {
            return Vec::new();
        }
        (0..model.dims.n_classes)
            .map(|c| class_profile(rows, &classes, c))
            .collect()
    };
    let correct = per
        .logits
        .iter()
        .zip(&classes)
        .filter(|(l, &c)| argmax(l) == c as usize)
        .count();
    Ok(Importance {
        regions: per_class(&per.regions),
        segments: per_class(&per.segments),
        cells: per_class(&per.cells),
        segment_length: cfg.model.segment.max(1),
        crop_length: cfg.model.crop,
        perturbation: options.perturbation,
        accuracy: correct as f64 / scans.len().max(1) as f64,
    })
}

fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// The region × segment heatmap over all explained scans, [N][K]: each cell
/// the scan-count-weighted mean over classes (empty without the heatmap).
pub fn cell_scores(importance: &Importance) -> Vec<Vec<f64>> {
    let k = segments(importance.crop_length, importance.segment_length).len();
    let flat = weighted_mean(&importance.cells);
    if k == 0 || flat.is_empty() {
        return Vec::new();
    }
    flat.chunks(k).map(<[f64]>::to_vec).collect()
}

fn weighted_mean(profiles: &[ClassProfile]) -> Vec<f64> {
    let width = profiles.first().map_or(0, |p| p.mean.len());
    let total: usize = profiles.iter().map(|p| p.scans).sum();
    (0..width)
        .map(|i| {
            profiles
                .iter()
                .map(|p| p.mean[i] * p.scans as f64)
                .sum::<f64>()
                / total.max(1) as f64
        })
        .collect()
}

/// Each region's importance over all explained scans: the mean over classes
/// of each class's mean drop, weighted by the class's scan count.
pub fn region_scores(importance: &Importance) -> Vec<f64> {
    weighted_mean(&importance.regions)
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

/// `importance_cells.csv`: region, segment, frames, class, mean, std (the heatmap).
pub fn cells_csv(importance: &Importance, names: &[String]) -> String {
    let segs = segments(importance.crop_length, importance.segment_length);
    let k = segs.len();
    let mut out = String::from("region,name,segment,first_frame,last_frame,class,mean,std,scans\n");
    for p in &importance.cells {
        for (i, (m, s)) in p.mean.iter().zip(&p.std).enumerate() {
            let (r, seg) = (i / k.max(1), i % k.max(1));
            let (start, end) = segs.get(seg).copied().unwrap_or((0, 0));
            let name = names
                .get(r)
                .cloned()
                .unwrap_or_else(|| format!("region{r}"));
            out.push_str(&format!(
                "{r},{name},{seg},{start},{},{},{m},{s},{}\n",
                end.saturating_sub(1),
                p.class,
                p.scans
            ));
        }
    }
    out
}

/// A class-stratified subset of at most `max` of `scans` (all of them when
/// `max` is 0 or not below their count), drawn with `seed`, in the order of
/// `scans`. Each class keeps its share (largest remainders, ties to the
/// lower class index), so a subset of a fold's test scans has the fold's
/// class balance.
pub fn stratified_subset(dataset: &Dataset, scans: &[usize], max: usize, seed: u64) -> Vec<usize> {
    if max == 0 || max >= scans.len() {
        return scans.to_vec();
    }
    let labels = dataset.labels();
    let classes = dataset.num_classes();
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for &s in scans {
        by_class[labels[s] as usize].push(s);
    }
    let total = scans.len();
    let mut quota: Vec<usize> = by_class.iter().map(|c| c.len() * max / total).collect();
    let mut remainders: Vec<(usize, usize)> = by_class
        .iter()
        .enumerate()
        .map(|(c, members)| (members.len() * max % total, c))
        .collect();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut left = max - quota.iter().sum::<usize>();
    for &(_, c) in &remainders {
        if left == 0 {
            break;
        }
        if quota[c] < by_class[c].len() {
            quota[c] += 1;
            left -= 1;
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6578_706c_6169_6e);
    let mut chosen: Vec<usize> = Vec::with_capacity(max);
    for (members, &q) in by_class.iter_mut().zip(&quota) {
        members.shuffle(&mut rng);
        chosen.extend_from_slice(&members[..q]);
    }
    scans
        .iter()
        .copied()
        .filter(|s| chosen.contains(s))
        .collect()
}

/// Everything one explanation produced, as `importance.json` holds it: the
/// importance, which scans it explained, and the regions' names and
/// coordinates (so that `evaluate --collect` needs no data to compare folds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    pub importance: Importance,
    pub scan_ids: Vec<String>,
    pub region_names: Vec<String>,
    pub coordinates: Option<Vec<[f64; 3]>>,
}

/// The regions' names: the dataset's region table, or `region<r>` (0-based,
/// as the CSVs' `region` column and `planted.json` count).
pub fn region_names(dataset: &Dataset) -> Vec<String> {
    match &dataset.regions {
        Some(table) => table.names.clone(),
        None => (0..dataset.n_regions)
            .map(|r| format!("region{r}"))
            .collect(),
    }
}

/// Explains `scans` and names the result (see [`explain`]).
pub fn explain_scans(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    scans: &[usize],
    cfg: &Config,
    options: &ExplainOptions,
) -> Result<Explanation, TrainError> {
    Ok(Explanation {
        importance: explain(gpu, model, dataset, scans, cfg, options)?,
        scan_ids: scans.iter().map(|&s| dataset.scans[s].id.clone()).collect(),
        region_names: region_names(dataset),
        coordinates: dataset.regions.as_ref().and_then(|t| t.coordinates.clone()),
    })
}

/// The files an explanation writes, in order; which exist depends on the
/// heatmap and on whether the regions have coordinates, both known before
/// anything is computed (so every name can be checked first).
pub fn explanation_file_names(heatmap: bool, coordinates: bool) -> Vec<&'static str> {
    let mut names = vec![
        "importance.json",
        "importance_regions.csv",
        "importance_time.csv",
        "importance_regions.svg",
    ];
    if heatmap {
        names.extend(["importance_cells.csv", "importance_heatmap.svg"]);
    }
    if coordinates {
        names.push("importance_brain.svg");
    }
    names
}

/// How many of the top regions the plots show.
const TOP_REGIONS: usize = 20;

/// The contents of [`explanation_file_names`], in the same order.
pub fn explanation_files(e: &Explanation) -> Vec<(&'static str, String)> {
    let imp = &e.importance;
    let names = &e.region_names;
    let scores = region_scores(imp);
    let heatmap = !imp.cells.is_empty();
    let file_names = explanation_file_names(heatmap, e.coordinates.is_some());
    let json = serde_json::to_string_pretty(e).unwrap_or_default() + "\n";
    let mut texts = vec![
        json,
        regions_csv(imp, names),
        time_csv(imp),
        importance_svg(
            &format!(
                "Occlusion importance ({}): drop in the own-class logit (red: a rise)",
                imp.perturbation.name()
            ),
            names,
            &scores,
            TOP_REGIONS,
        ),
    ];
    if heatmap {
        texts.push(cells_csv(imp, names));
        let cells = cell_scores(imp);
        let top: Vec<usize> = ranked_regions(imp).into_iter().take(TOP_REGIONS).collect();
        let columns: Vec<String> = segments(imp.crop_length, imp.segment_length)
            .iter()
            .map(|&(start, _)| start.to_string())
            .collect();
        texts.push(heatmap_svg(
            "Occlusion importance per region and segment (top regions)",
            &top.iter().map(|&r| names[r].clone()).collect::<Vec<_>>(),
            &columns,
            &top.iter().map(|&r| cells[r].clone()).collect::<Vec<_>>(),
            "first frame of the segment (within the crop)",
        ));
    }
    if let Some(coordinates) = &e.coordinates {
        texts.push(glass_brain_svg(
            &format!(
                "Top {} regions by occlusion importance ({} scans, accuracy {:.2})",
                TOP_REGIONS.min(names.len()),
                e.scan_ids.len(),
                imp.accuracy
            ),
            names,
            coordinates,
            &scores,
            TOP_REGIONS,
        ));
    }
    file_names.into_iter().zip(texts).collect()
}

/// Ranks of `values`, 1 = largest, ties sharing their mean rank.
fn descending_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation (Pearson's of the tie-averaged ranks); 0
/// when either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (descending_ranks(a), descending_ranks(b));
    let n = ra.len().min(rb.len());
    if n == 0 {
        return 0.0;
    }
    let mean = |r: &[f64]| r.iter().take(n).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(&ra), mean(&rb));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for k in 0..n {
        let (da, db) = (ra[k] - ma, rb[k] - mb);
        sab += da * db;
        saa += da * da;
        sbb += db * db;
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// One region's standing across folds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConsensusRegion {
    /// 0-based, as in the folds' CSVs.
    pub region: usize,
    pub name: String,
    /// Mean over folds of the region's rank (1 = most important).
    pub mean_rank: f64,
    /// Mean over folds of its importance (the own-class logit drop).
    pub mean_score: f64,
    /// Folds that rank it among their top 10.
    pub top10_folds: usize,
}

/// How far the folds' region rankings agree.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FoldAgreement {
    pub folds: Vec<String>,
    /// Spearman correlation of the region scores for every pair of folds.
    pub pairs: Vec<(String, String, f64)>,
    pub mean_pairwise_spearman: f64,
    /// Explained scans' accuracy per fold (a map of a fold that does not
    /// decode means little).
    pub accuracy: Vec<f64>,
    /// Every region, by mean rank (best first).
    pub regions: Vec<ConsensusRegion>,
}

/// Compares the folds' explanations (at least one; all over the same regions).
pub fn fold_agreement(folds: &[(String, Explanation)]) -> FoldAgreement {
    let scores: Vec<Vec<f64>> = folds
        .iter()
        .map(|(_, e)| region_scores(&e.importance))
        .collect();
    let ranks: Vec<Vec<f64>> = scores.iter().map(|s| descending_ranks(s)).collect();
    let mut pairs = Vec::new();
    for i in 0..folds.len() {
        for j in i + 1..folds.len() {
            pairs.push((
                folds[i].0.clone(),
                folds[j].0.clone(),
                spearman(&scores[i], &scores[j]),
            ));
        }
    }
    let mean_pairwise_spearman = if pairs.is_empty() {
        f64::NAN
    } else {
        pairs.iter().map(|p| p.2).sum::<f64>() / pairs.len() as f64
    };
    let n = scores.first().map_or(0, Vec::len);
    let k = folds.len().max(1) as f64;
    let names = folds
        .first()
        .map(|(_, e)| e.region_names.clone())
        .unwrap_or_default();
    let mut regions: Vec<ConsensusRegion> = (0..n)
        .map(|r| ConsensusRegion {
            region: r,
            name: names
                .get(r)
                .cloned()
                .unwrap_or_else(|| format!("region{r}")),
            mean_rank: ranks.iter().map(|x| x[r]).sum::<f64>() / k,
            mean_score: scores.iter().map(|x| x[r]).sum::<f64>() / k,
            top10_folds: ranks.iter().filter(|x| x[r] <= 10.0).count(),
        })
        .collect();
    regions.sort_by(|a, b| {
        a.mean_rank
            .total_cmp(&b.mean_rank)
            .then(a.region.cmp(&b.region))
    });
    FoldAgreement {
        folds: folds.iter().map(|(name, _)| name.clone()).collect(),
        pairs,
        mean_pairwise_spearman,
        accuracy: folds.iter().map(|(_, e)| e.importance.accuracy).collect(),
        regions,
    }
}

/// `importance_folds.csv`: every region by mean rank over the folds, with
/// each fold's score.
pub fn agreement_csv(agreement: &FoldAgreement, folds: &[(String, Explanation)]) -> String {
    let mut out = String::from("region,name,mean_rank,mean_score,top10_folds");
    for name in &agreement.folds {
        out.push_str(&format!(",fold_{name}"));
    }
    out.push('\n');
    let scores: Vec<Vec<f64>> = folds
        .iter()
        .map(|(_, e)| region_scores(&e.importance))
        .collect();
    for r in &agreement.regions {
        out.push_str(&format!(
            "{},{},{},{},{}",
            r.region, r.name, r.mean_rank, r.mean_score, r.top10_folds
        ));
        for s in &scores {
            out.push_str(&format!(",{}", s[r.region]));
        }
        out.push('\n');
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
    fn stratified_subsets_keep_the_class_shares_and_repeat() {
        use ndarray::Array2;
        // 10 scans: 7 of class 0, 3 of class 1.
        let labels: Vec<u32> = vec![0, 1, 0, 0, 1, 0, 0, 1, 0, 0];
        let arrays = (0..10)
            .map(|i| Array2::from_shape_fn((2, 8), |(r, t)| (i * 3 + r * 5 + t * t) as f32))
            .collect();
        let d =
            Dataset::from_arrays(arrays, labels.clone(), vec!["a".into(), "b".into()], 8).unwrap();
        let all: Vec<usize> = (0..10).collect();
        assert_eq!(stratified_subset(&d, &all, 0, 1), all);
        assert_eq!(stratified_subset(&d, &all, 10, 1), all);
        let picked = stratified_subset(&d, &all, 5, 1);
        assert_eq!(picked.len(), 5);
        // 7·5/10 = 3.5 and 3·5/10 = 1.5: the tie goes to class 0.
        let ones = picked.iter().filter(|&&s| labels[s] == 1).count();
        assert_eq!(ones, 1);
        assert!(picked.windows(2).all(|w| w[0] < w[1]), "{picked:?}");
        assert_eq!(stratified_subset(&d, &all, 5, 1), picked);
        let others: Vec<Vec<usize>> = (2..8)
            .map(|seed| stratified_subset(&d, &all, 5, seed))
            .collect();
        assert!(
            others.iter().any(|o| o != &picked),
            "the seed changes nothing"
        );
        // A subset of a subset stays within it.
        let sub = stratified_subset(&d, &[1, 2, 3, 4], 2, 9);
        assert_eq!(sub.iter().filter(|&&s| labels[s] == 1).count(), 1);
        assert!(sub.iter().all(|s| [1, 2, 3, 4].contains(s)));
    }

    #[test]
    fn spearman_matches_hand_computed_values() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Ranks (desc) a: 4,3,2,1; b: 3,4,1,2 -> d² = 1,1,1,1: 1 - 6·4/(4·15) = 0.6.
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[2.0, 1.0, 4.0, 3.0]) - 0.6).abs() < 1e-12);
        // Ties share their mean rank; a constant side gives 0, not NaN.
        assert_eq!(descending_ranks(&[5.0, 1.0, 5.0]), vec![1.5, 3.0, 1.5]);
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0);
    }

    #[test]
    fn fold_agreement_ranks_regions_by_their_mean_rank() {
        let explanation = |scores: &[f64]| Explanation {
            importance: Importance {
                regions: vec![ClassProfile {
                    class: 0,
                    scans: 2,
                    mean: scores.to_vec(),
                    std: vec![0.0; scores.len()],
                }],
                segments: Vec::new(),
                cells: Vec::new(),
                segment_length: 4,
                crop_length: 8,
                perturbation: Perturbation::Zero,
                accuracy: 0.75,
            },
            scan_ids: vec!["s0".into(), "s1".into()],
            region_names: vec!["a".into(), "b".into(), "c".into()],
            coordinates: None,
        };
        let folds = vec![
            ("1".to_string(), explanation(&[3.0, 2.0, 1.0])),
            ("2".to_string(), explanation(&[2.0, 3.0, 1.0])),
            ("3".to_string(), explanation(&[3.0, 1.0, 2.0])),
        ];
        let a = fold_agreement(&folds);
        assert_eq!(a.pairs.len(), 3);
        assert!((a.pairs[0].2 - 0.5).abs() < 1e-12, "{:?}", a.pairs);
        assert!((a.mean_pairwise_spearman - (0.5 + 0.5 - 0.5) / 3.0).abs() < 1e-12);
        let order: Vec<&str> = a.regions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(order, vec!["a", "b", "c"]);
        assert!((a.regions[0].mean_rank - 4.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.regions[0].top10_folds, 3);
        let csv = agreement_csv(&a, &folds);
        assert_eq!(
            csv.lines().next().unwrap(),
            "region,name,mean_rank,mean_score,top10_folds,fold_1,fold_2,fold_3"
        );
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "0,a,1.3333333333333333,2.6666666666666665,3,3,2,3"
        );
        // The record survives its JSON round trip (what --collect reads).
        let json = serde_json::to_string(&folds[0].1).unwrap();
        assert_eq!(
            serde_json::from_str::<Explanation>(&json).unwrap(),
            folds[0].1
        );
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
        let r = occlude(&host, Occlusion::Region(1, 0, 3), Perturbation::Zero, 0);
        assert_eq!(r, vec![1., 2., 3., 0., 0., 0., 7., 8., 9., 0., 0., 0.]);
        let s = occlude(&host, Occlusion::Region(1, 0, 3), Perturbation::Shift, 0);
        assert_eq!(s, vec![1., 2., 3., 5., 6., 4., 7., 8., 9., 11., 12., 10.]);
        let s = occlude(&host, Occlusion::Region(0, 1, 2), Perturbation::Shift, 0);
        assert_eq!(s, vec![1., 3., 3., 4., 5., 6., 7., 9., 9., 10., 11., 12.]);
        let f = occlude(&host, Occlusion::Frames(1, 3), Perturbation::Shift, 0);
        assert_eq!(f, vec![1., 0., 0., 4., 0., 0., 7., 0., 0., 10., 0., 0.]);
        // Shuffle keeps the row's values; noise leaves other regions alone.
        let mut p = occlude(&host, Occlusion::Region(0, 0, 3), Perturbation::Shuffle, 3);
        p[0..3].sort_by(f32::total_cmp);
        p[6..9].sort_by(f32::total_cmp);
        assert_eq!(p, host.x);
        let z = occlude(&host, Occlusion::Region(0, 0, 3), Perturbation::Noise, 3);
        assert_ne!(z[0..3], host.x[0..3]);
        assert_eq!(z[3..6], host.x[3..6]);
    }
}
