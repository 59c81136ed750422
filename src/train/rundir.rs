//! A run directory: everything one run leaves behind, in one folder.
//!
//! ```text
//! RUN/config.toml      the resolved config (defaults + file + --set)
//! RUN/metrics.jsonl    one JSON object per logged step (MetricsRecord)
//! RUN/summary.json     metrics over folds (metrics::Summary)
//! RUN/fold-<name>/     per-fold files (checkpoints, predictions, plots)
//! ```
//!
//! Small files are written atomically; the metrics log is appended and
//! flushed line by line, so a killed run keeps every line it logged.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::atomic;
use crate::config::{Config, ConfigError};

#[derive(Debug, Error)]
pub enum RunDirError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: already exists and is not empty; choose another --out or remove it")]
    NotEmpty { path: String },

    #[error("{path}: line {line}: not a metrics record: {source}")]
    BadRecord {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error("fold name \"{name}\" cannot be a folder name; use letters, digits, '-', '_' or '.'")]
    BadFoldName { name: String },
}

pub type Result<T, E = RunDirError> = std::result::Result<T, E>;

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> RunDirError {
    let path = path.display().to_string();
    move |source| RunDirError::Io {
        path,
        action,
        source,
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// "pretrain", "finetune", ... so one log can hold several phases.
    pub phase: String,
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    pub scans_per_s: f64,
    /// Seconds since the phase started.
    pub elapsed_s: f64,
    /// Only on the one row per fine-tuning epoch (phase "finetune-epoch",
    /// loss = the training split's K-crop loss): the learning diagnostics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<crate::train::metrics::EpochDiagnostics>,
}

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Creates a new run directory; refuses one that exists and holds files,
    /// so a run never mixes its output with another's.
    pub fn create(root: &Path) -> Result<Self> {
        if root.exists() {
            let mut entries = fs::read_dir(root).map_err(io(root, "cannot list"))?;
            if entries.next().is_some() {
                return Err(RunDirError::NotEmpty {
                    path: root.display().to_string(),
                });
            }
        }
        fs::create_dir_all(root).map_err(io(root, "cannot create"))?;
        Ok(RunDir {
            root: root.to_path_buf(),
        })
    }

    /// Opens (or creates) a run directory to add to, e.g. when resuming.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(io(root, "cannot create"))?;
        Ok(RunDir {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes `name` atomically.
    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.file(name);
        atomic::write(&path, bytes).map_err(io(&path, "cannot write"))?;
        Ok(path)
    }

    pub fn write_text(&self, name: &str, text: &str) -> Result<PathBuf> {
        self.write_bytes(name, text.as_bytes())
    }

    /// Pretty JSON, atomically.
    pub fn write_json<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<PathBuf> {
        let mut text =
            serde_json::to_string_pretty(value).map_err(|source| RunDirError::Encode {
                what: "a run file",
                source,
            })?;
        text.push('\n');
        self.write_text(name, &text)
    }

    /// `config.toml`: the resolved config.
    pub fn write_config(&self, config: &Config) -> Result<PathBuf> {
        self.write_text("config.toml", &config.to_toml_string()?)
    }

    /// `summary.json`.
    pub fn write_summary<T: Serialize + ?Sized>(&self, summary: &T) -> Result<PathBuf> {
        self.write_json("summary.json", summary)
    }

    /// `metrics.jsonl`, opened for appending.
    pub fn metrics_log(&self) -> Result<MetricsLog> {
        MetricsLog::open(&self.file("metrics.jsonl"))
    }

    /// The subdirectory `fold-<name>`, created if needed.
    pub fn fold(&self, name: &str) -> Result<RunDir> {
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(RunDirError::BadFoldName {
                name: name.to_string(),
            });
        }
        RunDir::open(&self.root.join(format!("fold-{name}")))
    }
}

/// Appends `MetricsRecord`s as JSON lines, flushed after each.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path, "cannot open for appending"))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn append(&mut self, record: &MetricsRecord) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|source| RunDirError::Encode {
            what: "a metrics record",
            source,
        })?;
        line.push('\n');
        // One write per line: a kill leaves whole lines (at most a torn last one).
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(io(&self.path, "cannot append"))
    }
}

/// Reads `metrics.jsonl` back (for plots). A torn last line (a kill mid-write)
/// is skipped; a bad line elsewhere is an error naming it.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    let file = File::open(path).map_err(io(path, "cannot open"))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(io(path, "cannot read"))?;
    let mut records = Vec::with_capacity(lines.len());
    let last = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) if i + 1 == last => break,
            Err(source) => {
                return Err(RunDirError::BadRecord {
                    path: path.display().to_string(),
                    line: i + 1,
                    source,
                })
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64) -> MetricsRecord {
        MetricsRecord {
            phase: "pretrain".into(),
            step,
            epoch: step / 4,
            loss: 100.0 / (step + 1) as f64,
            lr: 1e-3,
            scans_per_s: 12.5,
            elapsed_s: step as f64 * 0.5,
            diagnostics: None,
        }
    }

    #[test]
    fn layout_and_metrics_log() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(&tmp.path().join("run")).unwrap();
        run.write_config(&Config::default()).unwrap();
        let text = fs::read_to_string(run.file("config.toml")).unwrap();
        assert_eq!(
            Config::from_toml_str(&text, Path::new("config.toml")).unwrap(),
            Config::default()
        );
        let mut log = run.metrics_log().unwrap();
        for step in 0..3 {
            log.append(&record(step)).unwrap();
        }
        drop(log);
        // Reopening appends.
        run.metrics_log().unwrap().append(&record(3)).unwrap();
        let back = read_metrics(&run.file("metrics.jsonl")).unwrap();
        assert_eq!(back, (0..4).map(record).collect::<Vec<_>>());

        let fold = run.fold("1").unwrap();
        fold.write_json("metrics.json", &serde_json::json!({"accuracy": 0.5}))
            .unwrap();
        assert!(tmp.path().join("run/fold-1/metrics.json").exists());
        assert!(run.fold("../x").is_err() && run.fold("").is_err());
        run.write_summary(&serde_json::json!({"accuracy": {"mean": 50.0}}))
            .unwrap();
        assert!(run.file("summary.json").exists());

        // A second run cannot reuse the folder.
        let e = RunDir::create(run.path()).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        assert!(RunDir::open(run.path()).is_ok());
    }

    #[test]
    fn torn_last_line_is_skipped_but_bad_middle_line_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metrics.jsonl");
        let good = serde_json::to_string(&record(0)).unwrap();
        fs::write(&path, format!("{good}\n{{\"phase\": \"pre")).unwrap();
        assert_eq!(read_metrics(&path).unwrap().len(), 1);
        fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let e = read_metrics(&path).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
