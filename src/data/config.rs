//! The dataset description: a TOML file that says where the scans are, how to
//! read them, where their labels are and how labels map to classes.
//! The schema is documented for users in `docs/data.md`; every table denies
//! unknown fields so that a typo is an error, not a silently ignored setting.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{shown, DataError, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// Free-form name, shown by `inspect`.
    #[serde(default)]
    pub name: Option<String>,
    /// Folder holding the scans. Relative paths are resolved against the
    /// current directory; absent means the folder of the TOML file itself.
    /// `--data` on the command line replaces it.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Glob, relative to `data_dir`, selecting one file per scan.
    pub files: String,
    #[serde(default)]
    pub format: Format,
    pub orientation: Orientation,
    /// Array name inside a `.npz`, or variable name inside a `.mat`.
    /// May be left out when the file holds exactly one array.
    #[serde(default)]
    pub array_name: Option<String>,
    /// Non-numeric leading columns of text tables to drop: a count, or
    /// header names such as `["File", "Sub-brick"]` (ADHD-200).
    #[serde(default)]
    pub skip_columns: SkipColumns,
    pub labels: LabelsConfig,
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    /// Optional region table (CSV or TSV: `index,name[,x,y,z]`; `data::atlas`),
    /// relative to the dataset description's folder. Names the regions in
    /// importance maps; with coordinates, `explain` also draws a glass brain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Chosen per file from its extension.
    #[default]
    Auto,
    Npy,
    Npz,
    /// AFNI .1D, .txt, .csv, .tsv: delimiter detected from the first data row.
    Text,
    Mat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Orientation {
    /// Rows are time points, columns are regions (AFNI .1D, nilearn's output).
    TimeByRegion,
    /// Rows are regions, columns are time points.
    RegionByTime,
}

impl Orientation {
    /// What rows and columns of a stored table mean, for messages.
    pub fn layout(self) -> &'static str {
        match self {
            Orientation::TimeByRegion => "rows = time points, columns = regions",
            Orientation::RegionByTime => "rows = regions, columns = time points",
        }
    }
}

impl std::fmt::Display for Orientation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Orientation::TimeByRegion => "time_by_region",
            Orientation::RegionByTime => "region_by_time",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(untagged)]
pub enum SkipColumns {
    #[default]
    None,
    Count(usize),
    Names(Vec<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelsConfig {
    /// CSV or TSV table, relative to `data_dir` (delimiter detected from the header line).
    pub table: PathBuf,
    /// Column of the table holding the scan id.
    pub id_column: String,
    /// Regex whose first capture group pulls the scan id out of the file name.
    /// Absent: the id is the file name without its extension.
    #[serde(default)]
    pub id_from_file_name: Option<String>,
    pub label_column: String,
    /// Label values to classes, in class-index order. Index 1 is the positive
    /// class for binary metrics (recall, AUC).
    pub classes: Vec<ClassSpec>,
    /// Column identifying the subject; splits keep a subject's scans together.
    /// Absent: every scan is its own subject.
    #[serde(default)]
    pub subject_column: Option<String>,
    /// Column naming the site (or any group) for leave-site-out folds.
    #[serde(default)]
    pub site_column: Option<String>,
    /// Cell values meaning "missing". A scan whose label is missing is excluded.
    #[serde(default = "default_missing_values")]
    pub missing_values: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    pub value: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShortScans {
    /// Keep scans shorter than the crop; the batcher pads them and marks the
    /// padded frames invalid.
    #[default]
    Pad,
    /// Drop scans shorter than the crop (reported by `inspect`).
    Exclude,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Crop length T in frames.
    #[serde(default = "default_crop_length")]
    pub crop_length: usize,
    #[serde(default)]
    pub short_scans: ShortScans,
    /// Z-score each region over the whole scan (the model expects it).
    #[serde(default = "default_true")]
    pub zscore: bool,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            crop_length: default_crop_length(),
            short_scans: ShortScans::default(),
            zscore: true,
        }
    }
}

fn default_missing_values() -> Vec<String> {
    vec![
        String::new(),
        "-9999".to_string(),
        "NA".to_string(),
        "NaN".to_string(),
    ]
}

fn default_crop_length() -> usize {
    128
}

fn default_true() -> bool {
    true
}

impl DatasetConfig {
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self> {
        // toml's own Display is a multi-line block with a source excerpt; one
        // line naming the line number reads better after the path.
        let config: DatasetConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            match e.span() {
                Some(span) => DataError::ConfigAt {
                    path: shown(origin),
                    line: 1 + text
                        .get(..span.start)
                        .map_or(0, |before| before.matches('\n').count()),
                    message,
                },
                None => DataError::Config {
                    path: shown(origin),
                    message,
                },
            }
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads the TOML file. A missing `data_dir` becomes the TOML file's folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::NotFound {
                path: shown(path),
                what: "dataset description",
            },
            _ => DataError::io(path, e),
        })?;
        let mut config = Self::from_toml_str(&text, path)?;
        let folder_of_description = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if let Some(table) = &config.regions {
            if table.is_relative() {
                config.regions = Some(folder_of_description.join(table));
            }
        }
        if config.data_dir.is_none() {
            let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
            config.data_dir = Some(if folder.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                folder
            });
        }
        Ok(config)
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |message: String| DataError::Config {
            path: shown(origin),
            message,
        };
        if self.labels.classes.len() < 2 {
            return Err(bad(format!(
                "labels.classes lists {} class(es); expected at least 2",
                self.labels.classes.len()
            )));
        }
        for (i, class) in self.labels.classes.iter().enumerate() {
            if let Some(j) = self.labels.classes[..i]
                .iter()
                .position(|c| c.value == class.value)
            {
                return Err(bad(format!(
                    "labels.classes: value \"{}\" is given twice (classes {j} and {i})",
                    class.value
                )));
            }
        }
        if self.preprocess.crop_length == 0 {
            return Err(bad("preprocess.crop_length must be at least 1".to_string()));
        }
        if let Some(pattern) = &self.labels.id_from_file_name {
            let regex = regex::Regex::new(pattern).map_err(|e| {
                bad(format!(
                    "labels.id_from_file_name is not a valid regex: {e}"
                ))
            })?;
            if regex.captures_len() < 2 {
                return Err(bad(format!(
                    "labels.id_from_file_name \"{pattern}\" has no capture group; wrap the id in ( )"
                )));
            }
        }
        Ok(())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
files = "*.npy"
orientation = "time_by_region"
[labels]
table = "labels.csv"
id_column = "id"
label_column = "dx"
classes = [{ value = "0", name = "control" }, { value = "1", name = "patient" }]
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = DatasetConfig::from_toml_str(MINIMAL, Path::new("x.toml")).unwrap();
        assert_eq!(config.format, Format::Auto);
        assert_eq!(config.preprocess.crop_length, 128);
        assert_eq!(config.preprocess.short_scans, ShortScans::Pad);
        assert!(config.labels.missing_values.contains(&"-9999".to_string()));
        assert_eq!(config.skip_columns, SkipColumns::None);
    }

    #[test]
    fn typo_is_an_error() {
        let text = MINIMAL.replace("orientation", "orientaton");
        let err = DatasetConfig::from_toml_str(&text, Path::new("x.toml")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `orientaton`"),
            "{err}"
        );
    }

    #[test]
    fn skip_columns_accepts_count_or_names() {
        let with_count = format!("skip_columns = 2\n{MINIMAL}");
        let config = DatasetConfig::from_toml_str(&with_count, Path::new("x.toml")).unwrap();
        assert_eq!(config.skip_columns, SkipColumns::Count(2));
        let with_names = format!("skip_columns = [\"File\", \"Sub-brick\"]\n{MINIMAL}");
        let config = DatasetConfig::from_toml_str(&with_names, Path::new("x.toml")).unwrap();
        assert_eq!(
            config.skip_columns,
            SkipColumns::Names(vec!["File".into(), "Sub-brick".into()])
        );
    }

    #[test]
    fn regex_without_capture_group_is_an_error() {
        let text = MINIMAL.replace(
            "label_column",
            "id_from_file_name = \"sub.*\"\nlabel_column",
        );
        let err = DatasetConfig::from_toml_str(&text, Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("no capture group"), "{err}");
    }

    #[test]
    fn shipped_abide_description_parses() {
        let text = include_str!("../../assets/abide_cc200.toml");
        let config = DatasetConfig::from_toml_str(text, Path::new("abide_cc200.toml")).unwrap();
        assert_eq!(config.labels.classes[1].name, "autism");
    }
}
