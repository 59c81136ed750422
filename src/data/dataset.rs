//! A dataset in memory: every usable scan as f32 [regions, time] with its label,
//! subject and site, plus a record of what was left out and why.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use regex::Regex;

use super::atlas::RegionTable;
use super::config::{DatasetConfig, LabelsConfig, ShortScans};
use super::error::{shown, DataError, Result};
use super::formats::{read_scan, ReadOptions};
use super::preprocess::{all_zero_regions, zscore_regions};

#[derive(Debug, Clone)]
pub struct Scan {
    pub id: String,
    pub path: PathBuf,
    /// [regions N, time T_i]; z-scored per region when `preprocess.zscore`.
    pub data: Array2<f32>,
    /// Class index into `Dataset::class_names`.
    pub label: u32,
    pub subject: String,
    pub site: String,
    /// Regions that are exactly zero throughout (outside the field of view).
    pub all_zero_regions: usize,
    /// Regions with zero variance (all-zero or constant); zeros after z-scoring.
    pub constant_regions: usize,
}

impl Scan {
    pub fn regions(&self) -> usize {
        self.data.nrows()
    }
    pub fn length(&self) -> usize {
        self.data.ncols()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExclusionReason {
    /// The labels table has no row for this scan's id.
    NoLabelRow,
    /// The label cell holds a missing-value marker.
    LabelMissing { value: String },
    /// Shorter than the crop with `short_scans = "exclude"`.
    TooShort { length: usize, crop_length: usize },
}

impl fmt::Display for ExclusionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExclusionReason::NoLabelRow => write!(f, "no row in the labels table"),
            ExclusionReason::LabelMissing { value } => write!(f, "label missing (\"{value}\")"),
            ExclusionReason::TooShort {
                length,
                crop_length,
            } => write!(f, "{length} frames, shorter than the crop ({crop_length})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Exclusion {
    pub id: String,
    pub path: PathBuf,
    pub reason: ExclusionReason,
}

/// What happened while loading, for `inspect` and the logs.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub files_found: usize,
    pub excluded: Vec<Exclusion>,
    /// Ids in the labels table that no file matched.
    pub labels_without_scan: Vec<String>,
    /// Scans kept with more regions than time points.
    pub wider_than_long: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub class_names: Vec<String>,
    pub n_regions: usize,
    /// The crop length T the dataset was prepared for (`preprocess.crop_length`).
    pub crop_length: usize,
    pub scans: Vec<Scan>,
    pub report: LoadReport,
    /// Region names and coordinates, when the description names a table.
    pub regions: Option<RegionTable>,
}

/// One row of the labels table, as far as loading needs it.
struct LabelRow {
    line: usize,
    label: String,
    subject: Option<String>,
    site: Option<String>,
}

impl Dataset {
    /// Loads the dataset described by a TOML file; `data_override` replaces its `data_dir`.
    pub fn from_config_file(path: &Path, data_override: Option<&Path>) -> Result<Self> {
        let mut config = DatasetConfig::from_file(path)?;
        if let Some(dir) = data_override {
            config.data_dir = Some(dir.to_path_buf());
        }
        Self::load(&config)
    }

    pub fn load(config: &DatasetConfig) -> Result<Self> {
        let data_dir = config.data_dir();
        if !data_dir.is_dir() {
            return Err(DataError::NotFound {
                path: shown(&data_dir),
                what: "data directory",
            });
        }
        let files = list_files(&data_dir, &config.files)?;
        let labels_path = data_dir.join(&config.labels.table);
        let label_rows = read_labels_table(&labels_path, &config.labels)?;

        let ids = scan_ids(&files, config.labels.id_from_file_name.as_deref())?;
        let mut report = LoadReport {
            files_found: files.len(),
            ..LoadReport::default()
        };

        // Match files to label rows; read only the files that have a usable label.
        let mut matched: Vec<(String, PathBuf, u32, &LabelRow)> = Vec::new();
        let mut seen_ids: HashMap<&str, ()> = HashMap::new();
        for (id, path) in ids.iter().zip(&files) {
            seen_ids.insert(id.as_str(), ());
            let Some(row) = label_rows.get(id) else {
                report.excluded.push(Exclusion {
                    id: id.clone(),
                    path: path.clone(),
                    reason: ExclusionReason::NoLabelRow,
                });
                continue;
            };
            if is_missing(&row.label, &config.labels.missing_values) {
                report.excluded.push(Exclusion {
                    id: id.clone(),
                    path: path.clone(),
                    reason: ExclusionReason::LabelMissing {
                        value: row.label.clone(),
                    },
                });
                continue;
            }
            let class = config
                .labels
                .classes
                .iter()
                .position(|c| c.value == row.label)
                .ok_or_else(|| DataError::UnknownLabel {
                    path: shown(&labels_path),
                    line: row.line,
                    column: config.labels.label_column.clone(),
                    value: row.label.clone(),
                    expected: config
                        .labels
                        .classes
                        .iter()
                        .map(|c| format!("\"{}\" ({})", c.value, c.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            matched.push((id.clone(), path.clone(), class as u32, row));
        }
        let mut labels_without_scan: Vec<String> = label_rows
            .keys()
            .filter(|id| !seen_ids.contains_key(id.as_str()))
            .cloned()
            .collect();
        labels_without_scan.sort();
        report.labels_without_scan = labels_without_scan;

        let options = ReadOptions {
            format: config.format,
            orientation: config.orientation,
            array_name: config.array_name.clone(),
            skip_columns: config.skip_columns.clone(),
        };
        let paths: Vec<&Path> = matched
            .iter()
            .map(|(_, path, _, _)| path.as_path())
            .collect();
        let arrays = read_scans_in_parallel(&paths, &options)?;

        let crop_length = config.preprocess.crop_length;
        let regions: Vec<(usize, String)> = matched
            .iter()
            .zip(&arrays)
            .map(|((_, path, _, _), data)| (data.nrows(), shown(path)))
            .collect();
        check_region_counts(&regions)?;
        let mut scans = Vec::with_capacity(arrays.len());
        for ((id, path, label, row), data) in matched.iter().zip(arrays) {
            if data.ncols() < crop_length && config.preprocess.short_scans == ShortScans::Exclude {
                report.excluded.push(Exclusion {
                    id: id.clone(),
                    path: path.clone(),
                    reason: ExclusionReason::TooShort {
                        length: data.ncols(),
                        crop_length,
                    },
                });
                continue;
            }
            let missing = &config.labels.missing_values;
            let subject = row
                .subject
                .clone()
                .filter(|s| !is_missing(s, missing))
                .unwrap_or_else(|| id.clone());
            let site = row
                .site
                .clone()
                .filter(|s| !is_missing(s, missing))
                .unwrap_or_else(|| "unknown".to_string());
            scans.push(prepare_scan(
                id.clone(),
                path.clone(),
                data,
                *label,
                subject,
                site,
                config.preprocess.zscore,
            ));
        }

        // `orientation` is a required key, so it is never guessed here and a
        // scan with more regions than time points is no sign of a mistake (ABIDE:
        // 519 of 665 scans, 200 regions, 78-316 frames). No warning, then; the
        // count is in the report, and `inspect` shows it.
        report.wider_than_long = scans.iter().filter(|s| s.regions() > s.length()).count();
        let class_names: Vec<String> = config
            .labels
            .classes
            .iter()
            .map(|c| c.name.clone())
            .collect();
        if scans.is_empty() {
            let count = |f: fn(&ExclusionReason) -> bool| {
                report.excluded.iter().filter(|e| f(&e.reason)).count()
            };
            return Err(DataError::NothingLeft {
                files: report.files_found,
                without_label: count(|r| !matches!(r, ExclusionReason::TooShort { .. })),
                short: count(|r| matches!(r, ExclusionReason::TooShort { .. })),
                labels_without_scan: report.labels_without_scan.len(),
            });
        }
        let dataset = Dataset {
            name: config.name.clone().unwrap_or_else(|| "dataset".to_string()),
            n_regions: scans.first().map_or(0, Scan::regions),
            class_names,
            crop_length,
            scans,
            report,
            regions: None,
        };
        let dataset = Dataset {
            regions: match &config.regions {
                Some(path) => Some(RegionTable::from_file(path, dataset.n_regions)?),
                None => None,
            },
            ..dataset
        };
        dataset.check_classes()?;
        Ok(dataset)
    }

    /// Builds a dataset from arrays already in memory (synthetic data, tests):
    /// one subject per scan, site "synthetic", z-scored like loaded data.
    pub fn from_arrays(
        arrays: Vec<Array2<f32>>,
        labels: Vec<u32>,
        class_names: Vec<String>,
        crop_length: usize,
    ) -> Result<Self> {
        let id = |index: usize| format!("scan{index:04}");
        let regions: Vec<(usize, String)> = arrays
            .iter()
            .enumerate()
            .map(|(index, data)| (data.nrows(), id(index)))
            .collect();
        check_region_counts(&regions)?;
        let n_regions = arrays.first().map_or(0, Array2::nrows);
        let mut scans = Vec::with_capacity(arrays.len());
        for (index, (data, label)) in arrays.into_iter().zip(labels).enumerate() {
            let id = id(index);
            scans.push(prepare_scan(
                id.clone(),
                PathBuf::new(),
                data,
                label,
                id,
                "synthetic".to_string(),
                true,
            ));
        }
        let dataset = Dataset {
            name: "in-memory".to_string(),
            class_names,
            n_regions,
            crop_length,
            report: LoadReport {
                files_found: scans.len(),
                ..LoadReport::default()
            },
            scans,
            regions: None,
        };
        if dataset.scans.is_empty() {
            return Err(DataError::NothingLeft {
                files: 0,
                without_label: 0,
                short: 0,
                labels_without_scan: 0,
            });
        }
        dataset.check_classes()?;
        Ok(dataset)
    }

    pub fn labels(&self) -> Vec<u32> {
        self.scans.iter().map(|s| s.label).collect()
    }
    pub fn subjects(&self) -> Vec<String> {
        self.scans.iter().map(|s| s.subject.clone()).collect()
    }
    pub fn sites(&self) -> Vec<String> {
        self.scans.iter().map(|s| s.site.clone()).collect()
    }
    pub fn lengths(&self) -> Vec<usize> {
        self.scans.iter().map(Scan::length).collect()
    }
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The scans of `self` followed by those of `test` (`evaluate
    /// --test-dataset`: train on the first, score the second). Both must
    /// have the same region count and class names, in the same order. The
    /// test scans' subjects are prefixed with `test:` so that a subject id
    /// that happens to occur in both datasets is two subjects; the first
    /// dataset's region table names the regions.
    pub fn followed_by(self, test: Dataset) -> Result<Dataset> {
        if test.n_regions != self.n_regions {
            return Err(DataError::TransferMismatch {
                what: "region count",
                train: format!("{} ({})", self.n_regions, self.name),
                test: format!("{} ({})", test.n_regions, test.name),
            });
        }
        if test.class_names != self.class_names {
            return Err(DataError::TransferMismatch {
                what: "classes",
                train: format!("{:?} ({})", self.class_names, self.name),
                test: format!("{:?} ({})", test.class_names, test.name),
            });
        }
        let mut scans = self.scans;
        scans.extend(test.scans.into_iter().map(|scan| Scan {
            subject: format!("test:{}", scan.subject),
            ..scan
        }));
        let mut report = self.report;
        report.files_found += test.report.files_found;
        Ok(Dataset {
            name: format!("{} then {}", self.name, test.name),
            scans,
            report,
            ..self
        })
    }

    /// At least two classes present, and each subject has a single label
    /// (splits are by subject and stratify by the subject's label).
    fn check_classes(&self) -> Result<()> {
        let counts = self.class_counts();
        let present: Vec<String> = counts
            .iter()
            .zip(&self.class_names)
            .filter(|(&n, _)| n > 0)
            .map(|(n, name)| format!("{name}: {n} scans"))
            .collect();
        if present.len() < 2 {
            return Err(DataError::OneClass {
                present: present.join(", "),
            });
        }
        let mut subject_label: HashMap<&str, u32> = HashMap::new();
        for scan in &self.scans {
            let first = *subject_label.entry(&scan.subject).or_insert(scan.label);
            if first != scan.label {
                let name = |label: u32| {
                    self.class_names
                        .get(label as usize)
                        .cloned()
                        .unwrap_or_default()
                };
                return Err(DataError::SubjectWithTwoLabels {
                    subject: scan.subject.clone(),
                    first: name(first),
                    second: name(scan.label),
                });
            }
        }
        Ok(())
    }

    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for scan in &self.scans {
            if let Some(count) = counts.get_mut(scan.label as usize) {
                *count += 1;
            }
        }
        counts
    }

    pub fn summary(&self) -> Summary<'_> {
        Summary { dataset: self }
    }
}

/// Every scan must have the same region count. The count most files share is
/// taken as right and the first file that differs from it is named: with 7
/// files of 200 regions and 1 of 199, the odd one is the 199-region file, even
/// when it is read first. A tie goes to the count of the earliest file.
fn check_region_counts(regions: &[(usize, String)]) -> Result<()> {
    let mut tally: Vec<(usize, usize)> = Vec::new(); // (count, files), first-seen order
    for &(count, _) in regions {
        match tally.iter_mut().find(|(c, _)| *c == count) {
            Some((_, files)) => *files += 1,
            None => tally.push((count, 1)),
        }
    }
    // `max_by_key` keeps the last maximum; reversing makes ties go to the earliest.
    let Some(&(expected, agreeing)) = tally.iter().rev().max_by_key(|(_, files)| *files) else {
        return Ok(());
    };
    let odd = regions.iter().find(|(count, _)| *count != expected);
    let reference = regions.iter().find(|(count, _)| *count == expected);
    match (odd, reference) {
        (Some((found, path)), Some((_, reference))) => Err(DataError::RegionCountMismatch {
            path: path.clone(),
            found: *found,
            expected,
            agreeing,
            total: regions.len(),
            reference: reference.clone(),
        }),
        _ => Ok(()),
    }
}

fn prepare_scan(
    id: String,
    path: PathBuf,
    mut data: Array2<f32>,
    label: u32,
    subject: String,
    site: String,
    zscore: bool,
) -> Scan {
    let all_zero = all_zero_regions(&data);
    let constant = if zscore {
        zscore_regions(&mut data)
    } else {
        all_zero
    };
    Scan {
        id,
        path,
        data,
        label,
        subject,
        site,
        all_zero_regions: all_zero,
        constant_regions: constant,
    }
}

fn is_missing(value: &str, markers: &[String]) -> bool {
    let value = value.trim();
    markers.iter().any(|m| m.trim() == value)
}

fn list_files(data_dir: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let full = data_dir.join(pattern);
    let full_text = full.to_string_lossy().to_string();
    let entries = glob::glob(&full_text).map_err(|e| DataError::Config {
        path: shown(data_dir),
        message: format!("`files` is not a valid glob \"{pattern}\": {e}"),
    })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        // An unreadable folder on the way is an error, not fewer scans.
        let path = entry.map_err(|e| {
            let path = e.path().to_path_buf();
            DataError::io(&path, e.into())
        })?;
        if let Some(error) = broken_link(&path) {
            return Err(error);
        }
        // Folders whose names happen to match are not scans.
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DataError::NoFilesMatched {
            dir: shown(data_dir),
            pattern: pattern.to_string(),
        });
    }
    Ok(files)
}

/// A symbolic link that cannot be followed, as an error naming it. A scan
/// file that is a dangling link is typical of a DataLad or git-annex dataset
/// whose content was never fetched; skipping it would silently lose the scan.
fn broken_link(path: &Path) -> Option<DataError> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return None;
    }
    let error = std::fs::metadata(path).err()?;
    let target = std::fs::read_link(path)
        .map(|t| shown(&t))
        .unwrap_or_default();
    Some(if error.kind() == std::io::ErrorKind::NotFound {
        DataError::DanglingLink {
            path: shown(path),
            target,
        }
    } else {
        DataError::UnfollowableLink {
            path: shown(path),
            target,
            cause: error.to_string(),
        }
    })
}

/// The id of each file: the regex's first capture group, or the file name
/// without its extension. Two files with one id is an error.
fn scan_ids(files: &[PathBuf], regex: Option<&str>) -> Result<Vec<String>> {
    let compiled = match regex {
        Some(pattern) => Some(Regex::new(pattern).map_err(|e| DataError::Config {
            path: String::new(),
            message: format!("labels.id_from_file_name is not a valid regex: {e}"),
        })?),
        None => None,
    };
    let mut ids = Vec::with_capacity(files.len());
    let mut first_with_id: HashMap<String, &PathBuf> = HashMap::new();
    for path in files {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let id = match (&compiled, regex) {
            (Some(compiled), Some(pattern)) => compiled
                .captures(file_name)
                .and_then(|c| c.get(1))
                .map(|m| m.as_str().to_string())
                .ok_or_else(|| DataError::IdRegexNoMatch {
                    path: shown(path),
                    regex: pattern.to_string(),
                })?,
            _ => path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string(),
        };
        if let Some(first) = first_with_id.get(&id) {
            return Err(DataError::DuplicateScanId {
                id,
                first: shown(first),
                second: shown(path),
            });
        }
        first_with_id.insert(id.clone(), path);
        ids.push(id);
    }
    Ok(ids)
}

/// Reads the labels table (CSV, or TSV when the header line has a tab).
fn read_labels_table(path: &Path, config: &LabelsConfig) -> Result<HashMap<String, LabelRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            path: shown(path),
            what: "labels table",
        },
        _ => DataError::io(path, e),
    })?;
    // Spreadsheet exports often start with a byte-order mark, which would
    // otherwise become part of the first column's name.
    let text = text.trim_start_matches('\u{feff}');
    // The csv crate counts a line when it reads its '\n', but a record ends at
    // the '\r' of a CRLF pair, so in Windows-style files every record would
    // report the line before its own. With plain '\n' endings its count is the
    // editor's: 1-based, the header is line 1.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    if text.trim().is_empty() {
        return Err(DataError::EmptyLabelsTable {
            path: shown(path),
            id_column: config.id_column.clone(),
            label_column: config.label_column.clone(),
        });
    }
    let first_line = text.lines().next().unwrap_or_default();
    let delimiter = if first_line.contains('\t') {
        b'\t'
    } else {
        b','
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| DataError::Config {
            path: shown(path),
            message: format!("cannot read the header row: {e}"),
        })?
        .clone();
    let available = || headers.iter().collect::<Vec<_>>().join(", ");
    let find = |column: &str, role: &'static str| {
        headers
            .iter()
            .position(|h| h.trim() == column)
            .ok_or_else(|| DataError::MissingColumn {
                path: shown(path),
                column: column.to_string(),
                role,
                available: available(),
            })
    };
    let id_index = find(&config.id_column, "id_column")?;
    let label_index = find(&config.label_column, "label_column")?;
    let subject_index = match &config.subject_column {
        Some(c) => Some(find(c, "subject_column")?),
        None => None,
    };
    let site_index = match &config.site_column {
        Some(c) => Some(find(c, "site_column")?),
        None => None,
    };

    let mut rows: HashMap<String, LabelRow> = HashMap::new();
    let mut records = 0;
    for record in reader.records() {
        records += 1;
        let record = record.map_err(|e| DataError::Config {
            path: shown(path),
            message: format!("cannot read row: {e}"),
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let cell = |index: usize| record.get(index).unwrap_or_default().trim().to_string();
        let id = cell(id_index);
        if is_missing(&id, &config.missing_values) {
            continue;
        }
        if let Some(previous) = rows.get(&id) {
            return Err(DataError::DuplicateLabelId {
                path: shown(path),
                id,
                first_line: previous.line,
                second_line: line,
            });
        }
        let row = LabelRow {
            line,
            label: cell(label_index),
            subject: subject_index.map(cell),
            site: site_index.map(cell),
        };
        rows.insert(id, row);
    }
    if records == 0 {
        return Err(DataError::LabelsWithoutRows { path: shown(path) });
    }
    Ok(rows)
}

/// Reads the files on all cores (`std::thread::scope`), keeping file order; the
/// first error in file order wins, so the message does not depend on timing.
fn read_scans_in_parallel(paths: &[&Path], options: &ReadOptions) -> Result<Vec<Array2<f32>>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(paths.len())
        .max(1);
    let chunk_size = paths.len().div_ceil(threads).max(1);
    let chunks: Vec<Vec<Result<Array2<f32>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .chunks(chunk_size)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|p| read_scan(p, options))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(DataError::BadNpy {
                        path: String::new(),
                        message: "a reader thread panicked (a bug)".to_string(),
                    })]
                })
            })
            .collect()
    });
    chunks.into_iter().flatten().collect()
}

/// The numbers `stptf inspect` prints.
pub struct Summary<'a> {
    dataset: &'a Dataset,
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.dataset;
        let mut lengths = d.lengths();
        lengths.sort_unstable();
        let median = match lengths.len() {
            0 => 0.0,
            n if n % 2 == 1 => lengths[n / 2] as f64,
            n => (lengths[n / 2 - 1] + lengths[n / 2]) as f64 / 2.0,
        };
        writeln!(f, "dataset   {}", d.name)?;
        writeln!(
            f,
            "scans     {} (of {} files found)",
            d.scans.len(),
            d.report.files_found
        )?;
        match &d.regions {
            Some(table) => writeln!(
                f,
                "regions   {} (named by the region table{})",
                d.n_regions,
                if table.coordinates.is_some() {
                    ", with coordinates"
                } else {
                    ", without coordinates"
                }
            )?,
            None => writeln!(f, "regions   {}", d.n_regions)?,
        }
        writeln!(
            f,
            "length    min {}, median {}, max {} frames",
            lengths.first().unwrap_or(&0),
            median,
            lengths.last().unwrap_or(&0)
        )?;
        let total = d.scans.len().max(1) as f64;
        let balance: Vec<String> = d
            .class_counts()
            .iter()
            .zip(&d.class_names)
            .enumerate()
            .map(|(i, (n, name))| format!("{i} {name} {n} ({:.1}%)", 100.0 * *n as f64 / total))
            .collect();
        if d.report.wider_than_long > 0 {
            writeln!(
                f,
                "wide      {} of {} scans have more regions than time points",
                d.report.wider_than_long,
                d.scans.len()
            )?;
        }
        writeln!(f, "classes   {}", balance.join(", "))?;
        let subjects: std::collections::HashSet<&str> =
            d.scans.iter().map(|s| s.subject.as_str()).collect();
        writeln!(f, "subjects  {}", subjects.len())?;
        let mut sites: BTreeMap<&str, usize> = BTreeMap::new();
        for scan in &d.scans {
            *sites.entry(&scan.site).or_default() += 1;
        }
        let site_list: Vec<String> = sites.iter().map(|(s, n)| format!("{s} {n}")).collect();
        writeln!(f, "sites     {}: {}", sites.len(), site_list.join(", "))?;
        let short = lengths.iter().filter(|&&l| l < d.crop_length).count();
        writeln!(
            f,
            "crop      T = {}; {} scans shorter (padded, with a validity mask)",
            d.crop_length, short
        )?;
        let with_zero = d.scans.iter().filter(|s| s.all_zero_regions > 0).count();
        let max_zero = d
            .scans
            .iter()
            .map(|s| s.all_zero_regions)
            .max()
            .unwrap_or(0);
        writeln!(
            f,
            "zeros     {with_zero} scans have all-zero regions; at most {max_zero} of {} in one scan",
            d.n_regions
        )?;
        let constant_only = d
            .scans
            .iter()
            .filter(|s| s.constant_regions > s.all_zero_regions)
            .count();
        if constant_only > 0 {
            writeln!(f, "constant  {constant_only} scans have constant non-zero regions (zeros after z-scoring)")?;
        }
        writeln!(f, "excluded  {}", d.report.excluded.len())?;
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for exclusion in &d.report.excluded {
            let key = match exclusion.reason {
                ExclusionReason::TooShort { .. } => "shorter than the crop".to_string(),
                ref other => other.to_string(),
            };
            *reasons.entry(key).or_default() += 1;
        }
        for (reason, n) in &reasons {
            writeln!(f, "          {n} x {reason}")?;
        }
        for exclusion in d.report.excluded.iter().take(10) {
            writeln!(f, "          {}: {}", exclusion.id, exclusion.reason)?;
        }
        if d.report.excluded.len() > 10 {
            writeln!(f, "          ... and {} more", d.report.excluded.len() - 10)?;
        }
        write!(
            f,
            "unmatched {} labels without a scan",
            d.report.labels_without_scan.len()
        )?;
        if !d.report.labels_without_scan.is_empty() {
            let shown: Vec<&str> = d
                .report
                .labels_without_scan
                .iter()
                .take(5)
                .map(String::as_str)
                .collect();
            write!(f, " (e.g. {})", shown.join(", "))?;
        }
        writeln!(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A tiny dataset on disk: four .1D scans (3 regions), two per class.
    fn write_small(dir: &Path) -> PathBuf {
        for (i, length) in [6usize, 5, 7, 6].iter().enumerate() {
            let mut text = String::from("#1\t#2\t#3\n");
            for t in 0..*length {
                text.push_str(&format!("{}\t{}\t0\n", t * (i + 1), (t * t) % 5));
            }
            fs::write(dir.join(format!("S{i}_rois.1D")), text).unwrap();
        }
        fs::write(
            dir.join("labels.csv"),
            "FILE_ID,DX,SUB,SITE\nS0,1,a,X\nS1,2,b,X\nS2,1,c,Y\nS3,2,d,-9999\nS9,1,z,Y\n",
        )
        .unwrap();
        let toml = r#"
name = "small"
files = "*_rois.1D"
orientation = "time_by_region"
[labels]
table = "labels.csv"
id_column = "FILE_ID"
id_from_file_name = '^(.+)_rois\.1D$'
label_column = "DX"
classes = [{ value = "2", name = "control" }, { value = "1", name = "patient" }]
subject_column = "SUB"
site_column = "SITE"
[preprocess]
crop_length = 4
"#;
        let path = dir.join("dataset.toml");
        fs::write(&path, toml).unwrap();
        path
    }

    #[test]
    fn data_loads_small_dataset_with_labels_sites_and_zero_regions() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write_small(dir.path());
        let dataset = Dataset::from_config_file(&toml, None).unwrap();
        assert_eq!(dataset.scans.len(), 4);
        assert_eq!(dataset.n_regions, 3);
        assert_eq!(dataset.labels(), vec![1, 0, 1, 0]);
        assert_eq!(dataset.sites(), vec!["X", "X", "Y", "unknown"]);
        assert_eq!(dataset.lengths(), vec![6, 5, 7, 6]);
        assert_eq!(dataset.report.labels_without_scan, vec!["S9".to_string()]);
        assert!(dataset.scans.iter().all(|s| s.all_zero_regions == 1));
        let summary = dataset.summary().to_string();
        assert!(
            summary.contains("classes   0 control 2 (50.0%), 1 patient 2 (50.0%)"),
            "{summary}"
        );
        assert!(
            summary.contains("zeros     4 scans have all-zero regions; at most 1 of 3"),
            "{summary}"
        );
        assert!(
            summary.contains("unmatched 1 labels without a scan (e.g. S9)"),
            "{summary}"
        );
    }

    #[test]
    fn region_count_mismatch_blames_the_minority() {
        // The issue's case: the 199-region file is read first, 7 files have 200.
        let mut regions = vec![(199, "odd.1D".to_string())];
        regions.extend((0..7).map(|i| (200, format!("s{i}.1D"))));
        let message = check_region_counts(&regions).unwrap_err().to_string();
        assert_eq!(
            message,
            "odd.1D: 199 regions, but 7 of the 8 files have 200 (e.g. s0.1D)"
        );
        // A tie goes to the earliest file's count; agreement is no error.
        let tie = [(3, "a".to_string()), (4, "b".to_string())];
        assert_eq!(
            check_region_counts(&tie).unwrap_err().to_string(),
            "b: 4 regions, but 1 of the 2 files have 3 (e.g. a)"
        );
        assert!(check_region_counts(&regions[1..]).is_ok());
        // In-memory arrays go through the same check.
        let arrays = vec![
            Array2::zeros((3, 8)),
            Array2::zeros((2, 8)),
            Array2::zeros((3, 8)),
        ];
        let error = Dataset::from_arrays(arrays, vec![0, 1, 0], vec!["a".into(), "b".into()], 4)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "scan0001: 2 regions, but 2 of the 3 files have 3 (e.g. scan0000)"
        );
    }

    /// Records every warning logged while it is installed (once per test binary).
    struct WarningLog(std::sync::Mutex<Vec<String>>);
    impl log::Log for WarningLog {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                if let Ok(mut lines) = self.0.lock() {
                    lines.push(record.args().to_string());
                }
            }
        }
        fn flush(&self) {}
    }
    static WARNINGS: WarningLog = WarningLog(std::sync::Mutex::new(Vec::new()));

    #[test]
    fn wide_scans_with_an_explicit_orientation_are_counted_not_warned_about() {
        let installed = log::set_logger(&WARNINGS).is_ok();
        assert!(installed, "another test installed a logger first");
        log::set_max_level(log::LevelFilter::Warn);
        let dir = tempfile::tempdir().unwrap();
        let toml = write_small(dir.path());
        // Six rows of three numbers per file, read as regions x time: 6 regions, 3 frames.
        for i in 0..4 {
            let rows: Vec<String> = (0..6)
                .map(|r| format!("{}\t{}\t{}", r + i, r * r % 5, (r + 2 * i) % 3))
                .collect();
            fs::write(dir.path().join(format!("S{i}_rois.1D")), rows.join("\n")).unwrap();
        }
        let text = fs::read_to_string(&toml)
            .unwrap()
            .replace("time_by_region", "region_by_time");
        fs::write(&toml, text).unwrap();
        let dataset = Dataset::from_config_file(&toml, None).unwrap();
        assert_eq!(dataset.n_regions, 6);
        assert_eq!(dataset.report.wider_than_long, 4);
        let summary = dataset.summary().to_string();
        assert!(
            summary.contains("wide      4 of 4 scans have more regions than time points"),
            "{summary}"
        );
        let warnings = WARNINGS.0.lock().unwrap().clone();
        assert!(
            !warnings
                .iter()
                .any(|w| w.contains("more regions than time points")),
            "{warnings:?}"
        );
    }

    #[test]
    fn scans_without_a_label_are_excluded_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write_small(dir.path());
        fs::write(dir.path().join("S7_rois.1D"), "1\t2\t3\n4\t5\t6\n").unwrap();
        let labels = fs::read_to_string(dir.path().join("labels.csv")).unwrap();
        fs::write(
            dir.path().join("labels.csv"),
            labels.replace("S1,2,b,X", "S1,-9999,b,X"),
        )
        .unwrap();
        let dataset = Dataset::from_config_file(&toml, None).unwrap();
        assert_eq!(dataset.scans.len(), 3);
        assert_eq!(dataset.report.files_found, 5);
        let reasons: Vec<(String, ExclusionReason)> = dataset
            .report
            .excluded
            .iter()
            .map(|e| (e.id.clone(), e.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    "S1".to_string(),
                    ExclusionReason::LabelMissing {
                        value: "-9999".to_string()
                    }
                ),
                ("S7".to_string(), ExclusionReason::NoLabelRow),
            ]
        );
        let summary = dataset.summary().to_string();
        assert!(summary.contains("excluded  2\n"), "{summary}");
        assert!(
            summary.contains("1 x no row in the labels table"),
            "{summary}"
        );
    }

    #[test]
    fn short_scans_can_be_excluded_and_data_dir_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write_small(dir.path());
        let text = fs::read_to_string(&toml).unwrap().replace(
            "crop_length = 4",
            "crop_length = 6\nshort_scans = \"exclude\"",
        );
        let elsewhere = tempfile::tempdir().unwrap();
        let moved = elsewhere.path().join("d.toml");
        fs::write(&moved, text).unwrap();
        // Without --data the TOML's own folder is the data dir: no scans there.
        assert!(matches!(
            Dataset::from_config_file(&moved, None),
            Err(DataError::NoFilesMatched { .. })
        ));
        let dataset = Dataset::from_config_file(&moved, Some(dir.path())).unwrap();
        assert_eq!(dataset.scans.len(), 3);
        assert_eq!(
            dataset.report.excluded[0].reason,
            ExclusionReason::TooShort {
                length: 5,
                crop_length: 6
            }
        );
    }
}
