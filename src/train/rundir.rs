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
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::atomic;
use crate::config::{Config, ConfigError};

#[derive(Debug, Error)]
pub enum RunDirError {
    #[error("{path}: {action}")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: already exists and is not empty; choose another --out or remove it")]
    NotEmpty { path: String },

    #[error("{path}: line {line}: not a metrics record")]
    BadRecord {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot encode {what} as JSON")]
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
    /// What this process added to the run directory, shared by the run and
    /// its fold folders (see [`RunDir::remove_if_unstarted`]).
    journal: Arc<Mutex<Journal>>,
}

/// The folders and files this process created (not those it found), in
/// creation order, and the folders only this run writes to.
#[derive(Debug, Default)]
struct Journal {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    /// Folders no other process writes to (a `create`d root, fold folders):
    /// anything in them not in `files`/`dirs` was written by training.
    exclusive: Vec<PathBuf>,
}

/// Files a run writes before its first training step: nothing of value
/// (`config.toml` restates the resolved config, `folds.json` the folds; the
/// metrics log is empty).
const SETUP_FILES: [&str; 3] = ["config.toml", "folds.json", "metrics.jsonl"];

fn lock(journal: &Mutex<Journal>) -> std::sync::MutexGuard<'_, Journal> {
    // A panic while holding it leaves plain lists behind; they stay usable.
    journal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Creates `root` and any missing folders above it, journaling those it made
/// (outermost first).
fn create_dirs(root: &Path, journal: &Mutex<Journal>) -> Result<()> {
    let missing: Vec<PathBuf> = root
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && fs::symlink_metadata(p).is_err())
        .map(Path::to_path_buf)
        .collect();
    fs::create_dir_all(root).map_err(io(root, "cannot create"))?;
    lock(journal).dirs.extend(missing.into_iter().rev());
    Ok(())
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
        let journal = Arc::new(Mutex::new(Journal::default()));
        create_dirs(root, &journal)?;
        lock(&journal).exclusive.push(root.to_path_buf());
        Ok(RunDir {
            root: root.to_path_buf(),
            journal,
        })
    }

    /// Opens (or creates) a run directory to add to, e.g. when resuming or
    /// for one fold job of a shared evaluation.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_in(root, Arc::default())
    }

    /// Opens `root`, journaling into `journal`. Removes the temporary files
    /// of atomic writes a killed run left in it (`.NAME.tmp-PID`; never read,
    /// see `atomic::write`).
    fn open_in(root: &Path, journal: Arc<Mutex<Journal>>) -> Result<Self> {
        create_dirs(root, &journal)?;
        for entry in fs::read_dir(root)
            .map_err(io(root, "cannot list"))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = name.starts_with('.')
                && name.contains(".tmp-")
                && entry.file_type().is_ok_and(|t| t.is_file());
            if stale {
                let path = entry.path();
                fs::remove_file(&path)
                    .map_err(io(&path, "cannot remove a stale temporary file"))?;
            }
        }
        Ok(RunDir {
            root: root.to_path_buf(),
            journal,
        })
    }

    /// Runs `work` in this run directory; when it fails, removes what the
    /// run added if it never got as far as a training step
    /// ([`RunDir::remove_if_unstarted`]), so `--out` is left as it was found
    /// and can be used again. The one way the training commands run.
    pub fn attempt<T, E>(&self, work: impl FnOnce(&RunDir) -> Result<T, E>) -> Result<T, E> {
        let result = work(self);
        if result.is_err() && self.remove_if_unstarted() {
            log::debug!(
                "removed what the unstarted run added to {}",
                self.root.display()
            );
        }
        result
    }

    /// After a failed run: if it never got as far as a training step (it
    /// added only setup files, here or in fold folders, its metrics logs are
    /// empty, and nothing else appeared in the folders only it writes to),
    /// removes what it added (files, then the folders it created), so the
    /// directory is as it was found. Files and folders it found, or that
    /// another fold job added to a shared directory, are never touched. A
    /// run that trained keeps everything (its metrics and checkpoints tell
    /// what happened). Returns whether it removed.
    pub fn remove_if_unstarted(&self) -> bool {
        let journal = lock(&self.journal);
        for file in &journal.files {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name.filter(|n| SETUP_FILES.contains(&n.as_str())) else {
                return false;
            };
            let logged = fs::metadata(file).is_ok_and(|m| m.len() > 0);
            if name == "metrics.jsonl" && logged {
                return false;
            }
        }
        let ours = |p: &Path| journal.files.iter().chain(&journal.dirs).any(|q| q == p);
        for dir in &journal.exclusive {
            let Ok(entries) = fs::read_dir(dir) else {
                return false;
            };
            if entries.flatten().any(|e| !ours(&e.path())) {
                return false;
            }
        }
        for file in journal.files.iter().rev() {
            let _ = fs::remove_file(file);
        }
        // Innermost first; a folder that holds anything else stays.
        for dir in journal.dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
        true
    }

    /// Notes that this process created `path` (when `new`).
    fn journal_file(&self, path: &Path, new: bool) {
        if new {
            lock(&self.journal).files.push(path.to_path_buf());
        }
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
        let new = fs::symlink_metadata(&path).is_err();
        atomic::write(&path, bytes).map_err(io(&path, "cannot write"))?;
        self.journal_file(&path, new);
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
        let path = self.file("metrics.jsonl");
        let new = fs::symlink_metadata(&path).is_err();
        let log = MetricsLog::open(&path)?;
        self.journal_file(&path, new);
        Ok(log)
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
        let fold = RunDir::open_in(
            &self.root.join(format!("fold-{name}")),
            self.journal.clone(),
        )?;
        // Each fold job writes its own fold folder only.
        lock(&self.journal).exclusive.push(fold.root.clone());
        Ok(fold)
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

/// Prepares `metrics.jsonl` for resuming `phase` from a checkpoint taken
/// after `step` steps: drops the rows of `phase` at or past `step` (logged
/// after the checkpoint by the run that was stopped, and logged again by the
/// resumed one) and a torn last line, rewriting the file atomically when it
/// drops anything. Returns the kept rows of `phase`, in order; a missing log
/// is an empty one.
pub fn rewind_metrics(path: &Path, phase: &str, step: u64) -> Result<Vec<MetricsRecord>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, "cannot read")(e)),
    };
    let records = parse_metrics(path, &text)?;
    let mut kept_text = String::with_capacity(text.len());
    let mut kept = Vec::new();
    for (line, record) in text.lines().zip(records) {
        let Some(record) = record else { continue };
        if record.phase == phase {
            if record.step >= step {
                continue;
            }
            kept.push(record);
        }
        kept_text.push_str(line);
        kept_text.push('\n');
    }
    if kept_text != text {
        atomic::write(path, kept_text.as_bytes()).map_err(io(path, "cannot rewrite"))?;
    }
    Ok(kept)
}

/// One entry per line: the record, or `None` for a blank or torn last line.
fn parse_metrics(path: &Path, text: &str) -> Result<Vec<Option<MetricsRecord>>> {
    let last = text.lines().count();
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            if line.trim().is_empty() {
                return Ok(None);
            }
            match serde_json::from_str(line) {
                Ok(record) => Ok(Some(record)),
                Err(_) if i + 1 == last => Ok(None),
                Err(source) => Err(RunDirError::BadRecord {
                    path: path.display().to_string(),
                    line: i + 1,
                    source,
                }),
            }
        })
        .collect()
}

/// Reads `metrics.jsonl` back (for plots). A torn last line (a kill mid-write)
/// is skipped; a bad line elsewhere is an error naming it.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    let text = fs::read_to_string(path).map_err(io(path, "cannot read"))?;
    Ok(parse_metrics(path, &text)?.into_iter().flatten().collect())
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
        // Reopening removes what a killed atomic write left, nothing else.
        fs::write(run.file(".summary.json.tmp-12345"), b"{").unwrap();
        fs::write(run.file(".notes"), b"mine").unwrap();
        assert!(RunDir::open(run.path()).is_ok());
        assert!(!run.file(".summary.json.tmp-12345").exists());
        assert!(run.file(".notes").exists() && run.file("summary.json").exists());
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

    #[test]
    fn rewinding_drops_rows_past_the_checkpoint_and_a_torn_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metrics.jsonl");
        assert!(rewind_metrics(&path, "pretrain", 3).unwrap().is_empty());
        let line = |r: &MetricsRecord| serde_json::to_string(r).unwrap() + "\n";
        let mut other = record(9);
        other.phase = "finetune".into();
        let text: String = (0..6).map(|s| line(&record(s))).collect::<String>()
            + &line(&other)
            + "{\"phase\": \"pre";
        fs::write(&path, &text).unwrap();
        let kept = rewind_metrics(&path, "pretrain", 4).unwrap();
        assert_eq!(kept, (0..4).map(record).collect::<Vec<_>>());
        let want: String = (0..4).map(|s| line(&record(s))).collect::<String>() + &line(&other);
        assert_eq!(fs::read_to_string(&path).unwrap(), want);
        // Nothing to drop: the file is left as it is.
        assert_eq!(rewind_metrics(&path, "pretrain", 4).unwrap().len(), 4);
        assert_eq!(fs::read_to_string(&path).unwrap(), want);
    }

    #[test]
    fn a_run_that_never_started_is_removed_and_one_that_did_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        let run = RunDir::create(&root).unwrap();
        run.write_config(&Config::default()).unwrap();
        drop(run.metrics_log().unwrap());
        run.fold("1").unwrap().metrics_log().unwrap();
        assert!(run.remove_if_unstarted());
        assert!(!root.exists());
        assert!(
            RunDir::create(&root).is_ok(),
            "the same --out can be used again"
        );

        // A folder the user made is kept (emptied of what the run wrote).
        let mine = tmp.path().join("mine");
        fs::create_dir(&mine).unwrap();
        let run = RunDir::create(&mine).unwrap();
        run.write_config(&Config::default()).unwrap();
        assert!(run.remove_if_unstarted());
        assert!(mine.is_dir() && fs::read_dir(&mine).unwrap().next().is_none());

        // A run that logged a step keeps everything.
        let run = RunDir::create(&tmp.path().join("trained")).unwrap();
        run.write_config(&Config::default()).unwrap();
        run.metrics_log().unwrap().append(&record(0)).unwrap();
        assert!(!run.remove_if_unstarted());
        assert!(run.file("config.toml").exists() && run.file("metrics.jsonl").exists());
        // So does a run with any file it does not know.
        let run = RunDir::create(&tmp.path().join("other")).unwrap();
        run.write_text("notes.txt", "mine").unwrap();
        assert!(!run.remove_if_unstarted());
    }

    #[test]
    fn an_unstarted_run_removes_only_what_it_added() {
        let tmp = tempfile::tempdir().unwrap();
        // A fold job in a shared directory that other jobs write to.
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::write(shared.join("config.toml"), "theirs").unwrap();
        let run = RunDir::open(&shared).unwrap();
        run.write_json("folds.json", &serde_json::json!({"folds": ["1", "2"]}))
            .unwrap();
        drop(run.fold("2").unwrap().metrics_log().unwrap());
        // Meanwhile another job's fold has trained.
        fs::create_dir(shared.join("fold-1")).unwrap();
        fs::write(shared.join("fold-1/metrics.jsonl"), "{}\n").unwrap();
        assert!(run.remove_if_unstarted());
        assert!(!shared.join("fold-2").exists() && !shared.join("folds.json").exists());
        assert_eq!(
            fs::read_to_string(shared.join("config.toml")).unwrap(),
            "theirs"
        );
        assert!(shared.join("fold-1/metrics.jsonl").exists());
        // A fold folder of this job holding a file it did not write: started.
        let run = RunDir::open(&shared).unwrap();
        let fold = run.fold("2").unwrap();
        drop(fold.metrics_log().unwrap());
        fs::write(fold.file("loss.svg"), "<svg/>").unwrap();
        assert!(!run.remove_if_unstarted());
        assert!(fold.file("metrics.jsonl").exists());

        // A shared directory this job created goes, with the folders above it
        // that it created.
        let nested = tmp.path().join("a/b/run");
        let run = RunDir::open(&nested).unwrap();
        run.write_config(&Config::default()).unwrap();
        drop(run.fold("1").unwrap().metrics_log().unwrap());
        assert!(run.remove_if_unstarted());
        assert!(!tmp.path().join("a").exists());

        // A checkpoint (written by training, not journaled) means it started.
        let run = RunDir::create(&tmp.path().join("ckpt")).unwrap();
        drop(run.metrics_log().unwrap());
        fs::create_dir(run.file("checkpoint-pretrain")).unwrap();
        assert!(!run.remove_if_unstarted());
        assert!(run.file("metrics.jsonl").exists());
    }
}
