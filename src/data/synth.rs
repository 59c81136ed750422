//! Synthetic fMRI-like datasets with class differences planted in space and in time.
//!
//! Every scan is a sum of three parts, then given a random per-region baseline
//! and scale (like raw BOLD, so z-scoring matters):
//!
//! - **space**: a *community* of regions (a quarter of them, at least 2, chosen
//!   from the seed) shares one slow latent signal (AR(1), phi 0.8). Its coupling
//!   strength grows with the class index: 0.2 for class 0 up to 0.9 for the last class.
//! - **time**: a latent state process over 3 states, each state a fixed spatial
//!   pattern over all regions. The state switches with probability 1/dwell per
//!   frame; the mean dwell time grows with the class: 2 frames for class 0 up to
//!   10 for the last class.
//! - **noise**: independent AR(1) noise per region (phi 0.5) with standard
//!   deviation 0.3 + 2.7 x difficulty.
//!
//! Each scan also jitters its coupling and dwell time a little, so classes
//! overlap even at difficulty 0. Scans are generated from ChaCha8 streams keyed by
//! (seed, scan index): deterministic, and independent of generation order.

use std::fs;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::error::{shown, DataError, Result};
use super::formats::write_npy_f32;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthConfig {
    pub scans: usize,
    pub regions: usize,
    /// Frames per scan.
    pub length: usize,
    pub classes: usize,
    pub seed: u64,
    /// 0 = clean, 1 = noise well above the planted signal.
    pub difficulty: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            scans: 64,
            regions: 16,
            length: 96,
            classes: 2,
            seed: 0,
            difficulty: 0.3,
        }
    }
}

const STATES: usize = 3;
const SITES: usize = 4;

impl SynthConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(DataError::BadSynthConfig { message });
        if self.classes < 2 {
            return bad(format!("classes = {}; expected at least 2", self.classes));
        }
        if self.scans < self.classes {
            return bad(format!(
                "scans = {}; expected at least one per class ({})",
                self.scans, self.classes
            ));
        }
        if self.regions < 2 {
            return bad(format!("regions = {}; expected at least 2", self.regions));
        }
        if self.length < 2 {
            return bad(format!(
                "length = {}; expected at least 2 frames",
                self.length
            ));
        }
        if !(0.0..=1.0).contains(&self.difficulty) {
            return bad(format!(
                "difficulty = {}; expected a value in [0, 1]",
                self.difficulty
            ));
        }
        self.check_size(crate::host::available_memory())
    }

    /// Bytes the scans take in memory as f32, or `None` past `u64`.
    pub fn dataset_bytes(&self) -> Option<u64> {
        [self.scans, self.regions, self.length]
            .iter()
            .try_fold(4u64, |bytes, &n| bytes.checked_mul(u64::try_from(n).ok()?))
    }

    /// Bytes `write_dataset` writes: the scans plus, per scan, its `.npy`
    /// header (128 bytes) and a `labels.csv` row (well under 128 bytes).
    pub fn file_bytes(&self) -> Option<u64> {
        let per_scan = 256u64.checked_mul(u64::try_from(self.scans).ok()?)?;
        self.dataset_bytes()?.checked_add(per_scan)
    }

    /// Refuses a dataset that cannot be held in `available` bytes of memory
    /// (every consumer loads all scans), before anything is allocated: a failed
    /// allocation would abort the process instead.
    fn check_size(&self, available: Option<u64>) -> Result<()> {
        self.check_room(self.dataset_bytes(), "in memory", available, "available")
    }

    /// Refuses a dataset whose files do not fit the `free` bytes of the disk
    /// it goes to (`place`), before anything is written.
    fn check_disk(&self, free: Option<u64>, place: &str) -> Result<()> {
        self.check_room(
            self.file_bytes(),
            "on disk",
            free,
            &format!("free in {place}"),
        )
    }

    /// `needed` bytes `what` (in memory, on disk) against `available`
    /// (`None`: unknown, not checked; `needed` `None`: past u64). Names the
    /// flag that is furthest above its default, as the one to lower.
    fn check_room(
        &self,
        needed: Option<u64>,
        what: &str,
        available: Option<u64>,
        room: &str,
    ) -> Result<()> {
        let defaults = SynthConfig::default();
        let settings = [
            ("--scans", self.scans, defaults.scans),
            ("--regions", self.regions, defaults.regions),
            ("--length", self.length, defaults.length),
        ];
        let (flag, value, _) = settings
            .iter()
            .copied()
            .max_by(|a, b| (a.1 as f64 / a.2 as f64).total_cmp(&(b.1 as f64 / b.2 as f64)))
            .unwrap_or(settings[2]);
        let shape = format!(
            "{} scans x {} regions x {} frames x 4 bytes",
            self.scans, self.regions, self.length
        );
        let too_large = |needed: String, limit: String| {
            Err(DataError::BadSynthConfig {
                message: format!(
                    "{flag} {value} makes the dataset {needed} {what} ({shape}), more than {limit}; lower {flag}"
                ),
            })
        };
        let gib = |bytes: u64| format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64);
        match (needed, available) {
            (None, _) => too_large(
                "too large to count".to_string(),
                "any machine holds".to_string(),
            ),
            (Some(needed), Some(available)) if needed > available => {
                too_large(gib(needed), format!("the {} {room}", gib(available)))
            }
            _ => Ok(()),
        }
    }

    /// The regions whose coupling differs by class, ascending.
    pub fn community_regions(&self) -> Vec<usize> {
        let size = (self.regions / 4).max(2).min(self.regions);
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut regions: Vec<usize> = (0..self.regions).collect();
        regions.shuffle(&mut rng);
        regions.truncate(size);
        regions.sort_unstable();
        regions
    }

    /// Coupling of the community to its shared signal for a class.
    pub fn coupling(&self, class: usize) -> f64 {
        0.2 + 0.7 * class_position(class, self.classes)
    }

    /// Mean dwell time of the latent state process for a class, in frames.
    pub fn mean_dwell(&self, class: usize) -> f64 {
        2.0 + 8.0 * class_position(class, self.classes)
    }

    fn noise_std(&self) -> f64 {
        0.3 + 2.7 * self.difficulty
    }

    /// Balanced labels: scan i has class i mod C.
    pub fn label(&self, scan: usize) -> u32 {
        (scan % self.classes.max(1)) as u32
    }

    /// What the generator plants, as written to `planted.json`: the ground
    /// truth an importance map is scored against.
    pub fn planted(&self) -> Planted {
        let classes = 0..self.classes;
        Planted {
            regions: self.regions,
            length: self.length,
            classes: self.classes,
            seed: self.seed,
            community: self.community_regions(),
            coupling_by_class: classes.clone().map(|c| self.coupling(c)).collect(),
            states: STATES,
            mean_dwell_by_class: classes.map(|c| self.mean_dwell(c)).collect(),
            time_structure: "state switching with a class-dependent mean dwell time, \
                             stationary over the scan: no frame or segment is planted \
                             to matter more than another"
                .to_string(),
        }
    }

    /// Sites balanced in class: consecutive groups of C scans share a site.
    pub fn site(&self, scan: usize) -> usize {
        (scan / self.classes.max(1)) % SITES
    }
}

/// The planted structure of a synthetic dataset (`planted.json` beside the scans).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Planted {
    pub regions: usize,
    pub length: usize,
    pub classes: usize,
    pub seed: u64,
    /// Region indices (0-based, ascending) whose shared-signal coupling differs by class.
    pub community: Vec<usize>,
    pub coupling_by_class: Vec<f64>,
    /// Number of latent states of the time process.
    pub states: usize,
    /// Mean dwell time of the latent state process, in frames, per class.
    pub mean_dwell_by_class: Vec<f64>,
    /// In words: where in time the class difference lives.
    pub time_structure: String,
}

fn class_position(class: usize, classes: usize) -> f64 {
    if classes <= 1 {
        0.0
    } else {
        class as f64 / (classes - 1) as f64
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// Unit-variance AR(1) series.
fn ar1(rng: &mut ChaCha8Rng, length: usize, phi: f64) -> Vec<f64> {
    let innovation = (1.0 - phi * phi).sqrt();
    let mut value = normal(rng);
    (0..length)
        .map(|_| {
            let current = value;
            value = phi * value + innovation * normal(rng);
            current
        })
        .collect()
}

/// Scans [regions, time] and their labels. Panics never; an invalid config
/// yields empty output (use `SynthConfig::validate` first for a message).
pub fn generate(config: &SynthConfig) -> (Vec<Array2<f32>>, Vec<u32>) {
    if config.validate().is_err() {
        return (Vec::new(), Vec::new());
    }
    let (n, t) = (config.regions, config.length);
    // Shared structure: state patterns and the community, from the seed.
    let mut shared = ChaCha8Rng::seed_from_u64(config.seed);
    shared.set_stream(u64::MAX);
    let patterns: Vec<Vec<f64>> = (0..STATES)
        .map(|_| (0..n).map(|_| 0.8 * normal(&mut shared)).collect())
        .collect();
    let community = config.community_regions();
    let mut in_community = vec![false; n];
    for &r in &community {
        if let Some(flag) = in_community.get_mut(r) {
            *flag = true;
        }
    }

    let mut scans = Vec::with_capacity(config.scans);
    let mut labels = Vec::with_capacity(config.scans);
    for scan in 0..config.scans {
        let label = config.label(scan);
        let class = label as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(scan as u64);

        let coupling = (config.coupling(class) + 0.05 * normal(&mut rng)).max(0.0);
        let dwell = (config.mean_dwell(class) * (1.0 + 0.1 * normal(&mut rng))).max(1.0);
        let shared_signal = ar1(&mut rng, t, 0.8);
        let mut state = rng.gen_range(0..STATES);
        let states: Vec<usize> = (0..t)
            .map(|_| {
                let current = state;
                if rng.gen_bool((1.0 / dwell).clamp(0.0, 1.0)) {
                    state = (state + rng.gen_range(1..STATES)) % STATES;
                }
                current
            })
            .collect();

        let mut data = Array2::<f32>::zeros((n, t));
        for (region, mut series) in data.rows_mut().into_iter().enumerate() {
            let noise = ar1(&mut rng, t, 0.5);
            let baseline = 100.0 + 20.0 * normal(&mut rng);
            let scale = 1.0 + 0.5 * rng.gen::<f64>();
            let coupled = if in_community.get(region) == Some(&true) {
                coupling
            } else {
                0.0
            };
            for (frame, value) in series.iter_mut().enumerate() {
                let pattern = patterns
                    .get(states.get(frame).copied().unwrap_or(0))
                    .and_then(|p| p.get(region))
                    .copied()
                    .unwrap_or(0.0);
                let signal = coupled * shared_signal.get(frame).copied().unwrap_or(0.0)
                    + pattern
                    + config.noise_std() * noise.get(frame).copied().unwrap_or(0.0);
                *value = (baseline + scale * signal) as f32;
            }
        }
        scans.push(data);
        labels.push(label);
    }
    (scans, labels)
}

/// Writes a dataset folder that loads like real data:
/// `scan_0000.npy` ... (float32, [time, regions], C order), `labels.csv`
/// (`scan_id,subject_id,site,label`) and `dataset.toml`.
/// The folder is written under a temporary name beside `dir` and renamed into
/// place at the end, so an interrupted run leaves no half-written dataset.
pub fn write_dataset(dir: &Path, config: &SynthConfig) -> Result<()> {
    config.validate()?;
    if dir.exists() {
        return Err(DataError::OutputExists { path: shown(dir) });
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| DataError::write(&parent, e))?;
    config.check_disk(crate::host::available_disk(&parent), &shown(&parent))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| DataError::write(&staging, e))?;
    }
    fs::create_dir(&staging).map_err(|e| DataError::write(&staging, e))?;
    let written = write_contents(&staging, config)
        .and_then(|()| fs::rename(&staging, dir).map_err(|e| DataError::write(dir, e)));
    if written.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    written
}

fn write_contents(folder: &Path, config: &SynthConfig) -> Result<()> {
    let (scans, labels) = generate(config);
    let mut table = String::from("scan_id,subject_id,site,label\n");
    for (index, (scan, label)) in scans.iter().zip(&labels).enumerate() {
        let id = format!("scan_{index:04}");
        // Stored [time, regions], as nilearn writes ROI time series.
        let stored = scan.t().as_standard_layout().into_owned();
        write_npy_f32(&folder.join(format!("{id}.npy")), &stored)?;
        table.push_str(&format!(
            "{id},sub-{index:04},site{},{label}\n",
            config.site(index) + 1
        ));
    }
    let labels_path = folder.join("labels.csv");
    fs::write(&labels_path, table).map_err(|e| DataError::write(&labels_path, e))?;

    let classes: Vec<String> = (0..config.classes)
        .map(|c| format!("{{ value = \"{c}\", name = \"class{c}\" }}"))
        .collect();
    let description = format!(
        "# Synthetic dataset: stptf synth --scans {} --regions {} --length {} --classes {} --seed {} --difficulty {}\n\
         # data_dir is left out: it is this file's folder.\n\
         name = \"synthetic\"\n\
         files = \"scan_*.npy\"\n\
         orientation = \"time_by_region\"\n\n\
         [labels]\n\
         table = \"labels.csv\"\n\
         id_column = \"scan_id\"\n\
         label_column = \"label\"\n\
         classes = [{}]\n\
         subject_column = \"subject_id\"\n\
         site_column = \"site\"\n\n\
         [preprocess]\n\
         crop_length = {}\n",
        config.scans,
        config.regions,
        config.length,
        config.classes,
        config.seed,
        config.difficulty,
        classes.join(", "),
        config.length.min(64)
    );
    let toml_path = folder.join("dataset.toml");
    fs::write(&toml_path, description).map_err(|e| DataError::write(&toml_path, e))?;
    let planted_path = folder.join(PLANTED_FILE);
    let planted = serde_json::to_string_pretty(&config.planted())
        .map_err(|e| DataError::write(&planted_path, std::io::Error::other(e)))?;
    fs::write(&planted_path, planted + "\n").map_err(|e| DataError::write(&planted_path, e))
}

/// The side file `write_dataset` records the planted structure in.
pub const PLANTED_FILE: &str = "planted.json";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::Dataset;
    use crate::data::preprocess::zscore_regions;

    fn pearson(a: &[f32], b: &[f32]) -> f64 {
        let n = a.len() as f64;
        let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for (&x, &y) in a.iter().zip(b) {
            let (dx, dy) = (x as f64 - ma, y as f64 - mb);
            sab += dx * dy;
            saa += dx * dx;
            sbb += dy * dy;
        }
        sab / (saa * sbb).sqrt().max(1e-12)
    }

    /// Accuracy of the best single threshold on a feature (either direction).
    fn threshold_accuracy(feature: &[f64], labels: &[u32]) -> f64 {
        let mut best: f64 = 0.0;
        for &cut in feature {
            let correct = feature
                .iter()
                .zip(labels)
                .filter(|(&f, &l)| (f >= cut) == (l == 1))
                .count();
            let accuracy = correct as f64 / feature.len() as f64;
            best = best.max(accuracy).max(1.0 - accuracy);
        }
        best
    }

    #[test]
    fn data_synth_is_deterministic_by_seed_and_balanced() {
        let config = SynthConfig::default();
        let (a, labels) = generate(&config);
        let (b, _) = generate(&config);
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(a[0].dim(), (16, 96));
        assert_eq!(labels.iter().filter(|&&l| l == 1).count(), 32);
        let (c, _) = generate(&SynthConfig { seed: 1, ..config });
        assert_ne!(a, c);
    }

    #[test]
    fn community_correlation_separates_classes_at_low_difficulty() {
        let config = SynthConfig {
            difficulty: 0.1,
            ..SynthConfig::default()
        };
        let community = config.community_regions();
        let (scans, labels) = generate(&config);
        let feature: Vec<f64> = scans
            .iter()
            .map(|scan| {
                let mut sum = 0.0;
                let mut pairs = 0;
                for (i, &a) in community.iter().enumerate() {
                    for &b in &community[i + 1..] {
                        sum += pearson(&scan.row(a).to_vec(), &scan.row(b).to_vec());
                        pairs += 1;
                    }
                }
                sum / pairs as f64
            })
            .collect();
        let accuracy = threshold_accuracy(&feature, &labels);
        assert!(
            accuracy >= 0.85,
            "community correlation accuracy {accuracy}"
        );
    }

    #[test]
    fn state_switching_rate_separates_classes_at_low_difficulty() {
        let config = SynthConfig {
            difficulty: 0.1,
            ..SynthConfig::default()
        };
        let (scans, labels) = generate(&config);
        // Short dwell times mean more state jumps: larger frame-to-frame change.
        let feature: Vec<f64> = scans
            .into_iter()
            .map(|mut scan| {
                zscore_regions(&mut scan);
                let t = scan.ncols();
                (1..t)
                    .map(|frame| {
                        scan.column(frame)
                            .iter()
                            .zip(scan.column(frame - 1))
                            .map(|(a, b)| ((a - b) as f64).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .sum::<f64>()
                    / (t - 1) as f64
            })
            .collect();
        let accuracy = threshold_accuracy(&feature, &labels);
        assert!(accuracy >= 0.75, "switching-rate accuracy {accuracy}");
    }

    #[test]
    fn written_dataset_loads_like_real_data() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("synthetic");
        let config = SynthConfig {
            scans: 12,
            regions: 5,
            length: 40,
            classes: 3,
            ..SynthConfig::default()
        };
        write_dataset(&dir, &config).unwrap();
        let dataset = Dataset::from_config_file(&dir.join("dataset.toml"), None).unwrap();
        assert_eq!(dataset.scans.len(), 12);
        assert_eq!(dataset.n_regions, 5);
        assert_eq!(dataset.class_counts(), vec![4, 4, 4]);
        assert_eq!(
            dataset
                .sites()
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            4
        );
        // Same numbers as in memory (after the loader's z-scoring).
        let (mut scans, labels) = generate(&config);
        zscore_regions(&mut scans[3]);
        assert_eq!(dataset.scans[3].data, scans[3]);
        assert_eq!(dataset.labels(), labels);
        // No staging folder left behind; a second write refuses to overwrite.
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
        assert!(matches!(
            write_dataset(&dir, &config),
            Err(DataError::OutputExists { .. })
        ));
    }

    #[test]
    fn absurd_sizes_are_refused_before_allocating() {
        // The case: --length 10000000 with the defaults is 38.1 GiB.
        let long = SynthConfig {
            length: 10_000_000,
            ..SynthConfig::default()
        };
        assert_eq!(long.dataset_bytes(), Some(64 * 16 * 10_000_000 * 4));
        let message = long.check_size(Some(16 << 30)).unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid synthetic-data setting: --length 10000000 makes the dataset 38.1 GiB in memory \
             (64 scans x 16 regions x 10000000 frames x 4 bytes), more than the 16.0 GiB available; lower --length"
        );
        assert!(long.check_size(Some(64 << 30)).is_ok());
        // It fits a 64 GiB machine but not a disk with 10 GiB free.
        assert_eq!(long.file_bytes(), Some(64 * 16 * 10_000_000 * 4 + 64 * 256));
        assert_eq!(
            long.check_disk(Some(10 << 30), "/data").unwrap_err().to_string(),
            "invalid synthetic-data setting: --length 10000000 makes the dataset 38.1 GiB on disk \
             (64 scans x 16 regions x 10000000 frames x 4 bytes), more than the 10.0 GiB free in /data; lower --length"
        );
        assert!(
            long.check_disk(Some(64 << 30), "/data").is_ok()
                && long.check_disk(None, "/data").is_ok()
        );
        // Past u64, on any machine; the setting furthest above its default is named.
        let huge = SynthConfig {
            scans: usize::MAX,
            ..SynthConfig::default()
        };
        let message = huge.validate().unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("invalid synthetic-data setting: --scans {} makes the dataset too large to count in memory", usize::MAX)),
            "{message}"
        );
        assert!(
            message.ends_with("more than any machine holds; lower --scans"),
            "{message}"
        );
        // Larger than this machine's memory (read from /proc/meminfo): refused
        // by the real check too, and write_dataset creates nothing.
        #[cfg(target_os = "linux")]
        let wide = SynthConfig {
            regions: 1 << 40,
            ..SynthConfig::default()
        };
        #[cfg(target_os = "linux")]
        {
            let root = tempfile::tempdir().unwrap();
            let error = write_dataset(&root.path().join("d"), &wide)
                .unwrap_err()
                .to_string();
            assert!(error.ends_with("; lower --regions"), "{error}");
            assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
            assert_eq!(generate(&wide).0.len(), 0);
        }
    }

    #[test]
    fn data_synth_records_what_it_plants() {
        let config = SynthConfig {
            scans: 4,
            length: 8,
            seed: 5,
            ..SynthConfig::default()
        };
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        write_dataset(&dir, &config).unwrap();
        let text = fs::read_to_string(dir.join(PLANTED_FILE)).unwrap();
        let planted: Planted = serde_json::from_str(&text).unwrap();
        assert_eq!(planted, config.planted());
        assert_eq!(planted.community, config.community_regions());
        assert_eq!(planted.community.len(), 4);
        let want_coupling = [0.2, 0.9];
        assert_eq!(planted.coupling_by_class.len(), 2);
        for (got, want) in planted.coupling_by_class.iter().zip(want_coupling) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert_eq!(planted.mean_dwell_by_class, vec![2.0, 10.0]);
    }

    #[test]
    fn invalid_settings_are_errors() {
        for bad in [
            SynthConfig {
                classes: 1,
                ..SynthConfig::default()
            },
            SynthConfig {
                difficulty: 1.5,
                ..SynthConfig::default()
            },
            SynthConfig {
                regions: 1,
                ..SynthConfig::default()
            },
        ] {
            assert!(matches!(
                bad.validate(),
                Err(DataError::BadSynthConfig { .. })
            ));
            assert_eq!(generate(&bad).0.len(), 0);
        }
    }
}
