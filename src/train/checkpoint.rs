//! Checkpoints: a directory holding
//!
//! - `weights.safetensors`: every parameter as a named f32 tensor (the names of
//!   docs/model.md), and the model's buffers (`head_norm.running_mean/var`
//!   with `model.head_norm = "batch"`);
//! - `optimizer.safetensors` (optional): AdamW's first and second moments per
//!   parameter, named `m/<parameter>` and `v/<parameter>`, and the step in the
//!   file's metadata;
//! - `checkpoint.json`: phase, config, seed, step, epoch, the data's
//!   fingerprint (per scan: id, shape, label and a hash of the values), a hash
//!   of each file above, and a checksum of itself. No timestamp, so the same
//!   run writes byte-identical checkpoints.
//!
//! **The swap.** Readers look at `NAME` (e.g. `RUN/checkpoint-pretrain`). On
//! Unix `NAME` is a symbolic link to a versioned sibling `.NAME.v<k>`. A save
//! builds the new checkpoint in `.NAME.partial`, fsyncs every file and the
//! folder, renames it to `.NAME.v<k+1>`, makes a new link `.NAME.link` to it
//! and renames that link over `NAME`: rename(2) replaces the link atomically,
//! so at every instant `NAME` resolves to one complete checkpoint, the old
//! one or the new one. Only then is the old version deleted. A kill at any
//! stage leaves debris (`.partial`, `.link`, an old version) that the next
//! save removes; a failed save (a full disk) removes its own debris at once.
//! Where symbolic links are not available (Windows), `NAME` is a folder that
//! is replaced in two steps, and `load` falls back to the newest complete
//! `.NAME.v<k>` if it finds none at `NAME`.
//!
//! Every stage of `save` is a fault point (`fault::point`), so the tests can
//! stop the process exactly there (tests/checkpoint_faults.rs).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{atomic, fault};
use crate::config::Config;
use crate::data::Dataset;
use crate::model::params::{decode_safetensors, encode_safetensors, TensorFileError};
use crate::model::HostTensor;

pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "checkpoint.json";
/// Bumped when the layout changes incompatibly (2: data print, file hashes
/// and checksum in checkpoint.json; versioned folders behind a link).
pub const FORMAT_VERSION: u32 = 2;
/// The phases that write checkpoints, as named in `checkpoint-<phase>`.
pub const PHASES: [&str; 2] = ["pretrain", "finetune"];

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{path}: {action}")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Tensors(#[from] TensorFileError),

    #[error("{path}: not a valid checkpoint description (edited or damaged?)")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "{path}: was edited or damaged after it was written (its checksum does not match its \
         content); restore the original or start a new run"
    )]
    Edited { path: String },

    #[error(
        "{path}: does not match the {META_FILE} beside it (replaced or damaged after the \
         checkpoint was written)"
    )]
    FileChanged { path: String },

    #[error(
        "{path}: tensor `{name}` holds {count} non-finite values (NaN or Inf): the checkpoint \
         has non-finite weights and cannot be used"
    )]
    NonFinite {
        path: String,
        name: String,
        count: usize,
    },

    #[error("{path}: {message}")]
    Inconsistent { path: String, message: String },

    #[error("{path}: checkpoint format {found}; this build reads format {expected}")]
    Format {
        path: String,
        found: u32,
        expected: u32,
    },

    #[error("{path}: does not exist")]
    NotFound { path: String },

    #[error(
        "{path}: this is a {} run (it holds checkpoint-{found}/); a {} run or its \
         checkpoint-{expected}/ folder is needed here",
        phase_noun(.found),
        phase_noun(.expected)
    )]
    WrongRun {
        path: String,
        found: String,
        expected: String,
    },

    #[error(
        "{path}: this is a {} checkpoint; a {} checkpoint is needed here",
        phase_noun(.found),
        phase_noun(.expected)
    )]
    WrongPhase {
        path: String,
        found: String,
        expected: String,
    },

    #[error(
        "{path}: no checkpoint here (no {META_FILE}, and no checkpoint-pretrain/ or \
         checkpoint-finetune/ inside)"
    )]
    Missing { path: String },
}

/// "pretraining" for "pretrain", "fine-tuning" for "finetune".
fn phase_noun(phase: &str) -> &str {
    match phase {
        "pretrain" => "pretraining",
        "finetune" => "fine-tuning",
        other => other,
    }
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.display().to_string();
    move |source| CheckpointError::Io {
        path,
        action,
        source,
    }
}

/// AdamW state: moments named like the parameters they belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// Optimizer steps taken (for the bias correction and the schedule).
    pub step: u64,
    pub m: Vec<HostTensor>,
    pub v: Vec<HostTensor>,
}

/// `checkpoint.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub format: u32,
    /// "pretrain" or "finetune".
    pub phase: String,
    pub seed: u64,
    /// Optimizer steps completed.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// `data_fingerprint` of the training data.
    pub data_fingerprint: String,
    /// What the fingerprint covers, per scan, so a resume on other data can
    /// say what differs.
    pub data: DataPrint,
    pub config: Config,
    /// A hash of each file of the checkpoint, by name (filled by `save`).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// A hash of this description with `checksum` empty (filled by `save`).
    #[serde(default)]
    pub checksum: String,
}

impl CheckpointMeta {
    /// The description of a checkpoint of `phase` after `step` steps and
    /// `epoch` epochs of training on the data printed as `data`.
    pub fn new(phase: &str, step: u64, epoch: u64, data: &DataPrint, config: &Config) -> Self {
        CheckpointMeta {
            format: FORMAT_VERSION,
            phase: phase.to_string(),
            seed: config.seed,
            step,
            epoch,
            data_fingerprint: data.fingerprint(),
            data: data.clone(),
            config: config.clone(),
            files: BTreeMap::new(),
            checksum: String::new(),
        }
    }

    /// The checksum `save` writes: that of this description's JSON as
    /// [`json_checksum`] reads it back from the file.
    fn computed_checksum(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.checksum.clear();
        // Serializing a struct cannot fail (no maps with non-string keys),
        // and its own output always parses.
        let bytes = serde_json::to_vec(&unsealed).unwrap_or_default();
        serde_json::from_slice(&bytes).map_or_else(|_| String::new(), |v| json_checksum(v))
    }

    /// The checksum of the first format-2 binaries: a hash of this struct
    /// re-serialized. It breaks whenever a config key is added (the parsed
    /// struct then holds a default the file never had), so it is only
    /// accepted for checkpoints written before [`json_checksum`].
    fn legacy_checksum(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.checksum.clear();
        hash_bytes(&serde_json::to_vec(&unsealed).unwrap_or_default())
    }
}

/// A checksum of checkpoint.json's own content: its JSON value with
/// `checksum` emptied, re-serialized canonically (keys sorted, numbers as
/// parsed from the file's text). Hashing what the file says, not the struct
/// it parses into, keeps a checkpoint valid when a later version adds a
/// config key with a default.
fn json_checksum(mut value: serde_json::Value) -> String {
    if let Some(map) = value.as_object_mut() {
        map.insert("checksum".into(), serde_json::Value::String(String::new()));
    }
    hash_bytes(&serde_json::to_vec(&value).unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    /// Parameters; `load` returns them sorted by name.
    pub weights: Vec<HostTensor>,
    pub optimizer: Option<OptimizerState>,
}

impl Checkpoint {
    /// Looks a parameter up by name.
    pub fn weight(&self, name: &str) -> Option<&HostTensor> {
        self.weights.iter().find(|t| t.name == name)
    }
}

/// The paths a checkpoint `NAME` uses beside itself.
struct Slots {
    dir: PathBuf,
    parent: PathBuf,
    name: String,
}

impl Slots {
    fn of(dir: &Path) -> Self {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoint".to_string());
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Slots {
            dir: dir.to_path_buf(),
            parent,
            name,
        }
    }
    fn partial(&self) -> PathBuf {
        self.parent.join(format!(".{}.partial", self.name))
    }
    fn link_temp(&self) -> PathBuf {
        self.parent.join(format!(".{}.link", self.name))
    }
    /// Left by saves of format 1 interrupted between their two renames.
    fn legacy_previous(&self) -> PathBuf {
        self.parent.join(format!(".{}.previous", self.name))
    }
    fn version_name(&self, k: u64) -> String {
        format!(".{}.v{k}", self.name)
    }
    fn version(&self, k: u64) -> PathBuf {
        self.parent.join(self.version_name(k))
    }
    /// The versions present, oldest first. Each is complete: a version is
    /// only ever made by renaming a fully written and synced `.partial`.
    fn versions(&self) -> Vec<u64> {
        let prefix = format!(".{}.v", self.name);
        let mut found: Vec<u64> = fs::read_dir(&self.parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(&prefix)?.parse().ok()
            })
            .collect();
        found.sort_unstable();
        found
    }
    /// The version `NAME` links to, if it is such a link.
    fn current(&self) -> Option<u64> {
        let target = fs::read_link(&self.dir).ok()?;
        let target = target.file_name()?.to_string_lossy().into_owned();
        target
            .strip_prefix(&format!(".{}.v", self.name))?
            .parse()
            .ok()
    }
    #[cfg_attr(not(unix), allow(dead_code))]
    fn is_link(&self) -> bool {
        fs::symlink_metadata(&self.dir).is_ok_and(|m| m.file_type().is_symlink())
    }
}

/// Where the checkpoint `dir` can be read now: `dir` itself, or (after an
/// interrupted save where `dir` is missing) the newest complete version, or
/// a format-1 `.NAME.previous`.
fn resolve(dir: &Path) -> Option<PathBuf> {
    if dir.join(META_FILE).is_file() {
        return Some(dir.to_path_buf());
    }
    let slots = Slots::of(dir);
    slots
        .versions()
        .into_iter()
        .rev()
        .map(|k| slots.version(k))
        .chain([slots.legacy_previous()])
        .find(|p| p.join(META_FILE).is_file())
}

/// Removes what interrupted saves left beside `NAME`: a partial folder, a
/// temporary link, versions that are not the one readers see.
fn tidy(slots: &Slots) -> Result<()> {
    for stale in [slots.partial(), slots.link_temp()] {
        match fs::symlink_metadata(&stale) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&stale)
                .map_err(io(&stale, "cannot remove what an interrupted save left"))?,
            Ok(_) => fs::remove_file(&stale)
                .map_err(io(&stale, "cannot remove what an interrupted save left"))?,
            Err(_) => {}
        }
    }
    let versions = slots.versions();
    let keep = match slots.current() {
        Some(k) if slots.dir.join(META_FILE).is_file() => Some(k),
        // `NAME` is missing or not a link: readers fall back to the newest.
        _ if slots.dir.join(META_FILE).is_file() => None,
        _ => versions.last().copied(),
    };
    for k in versions.into_iter().filter(|&k| Some(k) != keep) {
        let old = slots.version(k);
        fs::remove_dir_all(&old).map_err(io(&old, "cannot remove an old checkpoint"))?;
    }
    let previous = slots.legacy_previous();
    if previous.exists() && slots.dir.join(META_FILE).is_file() {
        fs::remove_dir_all(&previous).map_err(io(&previous, "cannot remove an old checkpoint"))?;
    }
    Ok(())
}

/// Removes what interrupted saves of `dir` left beside it (see `tidy`); a
/// resumed run calls it, since it may have no save left to do it.
pub fn remove_debris(dir: &Path) -> Result<()> {
    tidy(&Slots::of(dir))
}

/// Writes `bytes` to the new file `path` and fsyncs it; `point` is the fault
/// point in the middle of the write (a full disk fails there).
fn write_synced(path: &Path, bytes: &[u8], point: &str) -> Result<()> {
    let fail = io(path, "cannot write");
    (|| {
        let mut file = fs::File::create(path)?;
        let (first, second) = bytes.split_at(bytes.len() / 2);
        file.write_all(first)?;
        fault::point(point)?;
        file.write_all(second)?;
        file.sync_all()
    })()
    .map_err(fail)
}

/// Writes `checkpoint` to `dir`, replacing the checkpoint there in one atomic
/// step once the new one is complete on disk (see the module notes).
pub fn save(dir: &Path, checkpoint: &Checkpoint) -> Result<()> {
    save_with(dir, checkpoint, Switch::NATIVE)
}

/// How `NAME` is pointed at a new version (see [`switch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(unix), allow(dead_code))]
enum Switch {
    /// One atomic rename of a symbolic link over `NAME` (unix).
    Link,
    /// Remove the old folder, rename the version into place: for systems
    /// without unprivileged symbolic links (Windows). Not atomic, but a kill
    /// in between leaves `NAME` missing, and readers then fall back to the
    /// newest complete version (`resolve`), so no checkpoint is lost.
    Rename,
}

impl Switch {
    const NATIVE: Switch = if cfg!(unix) {
        Switch::Link
    } else {
        Switch::Rename
    };
}

/// [`save`] with the given way of switching (tests run the fallback on unix).
fn save_with(dir: &Path, checkpoint: &Checkpoint, how: Switch) -> Result<()> {
    check_consistent(dir, checkpoint)?;
    let slots = Slots::of(dir);
    fs::create_dir_all(&slots.parent).map_err(io(&slots.parent, "cannot create the folder"))?;
    fault::point("checkpoint-begin").map_err(io(dir, "cannot save"))?;
    tidy(&slots)?;
    let version = slots.versions().last().map_or(1, |k| k + 1);
    let partial = slots.partial();
    let staged = slots.version(version);
    let result =
        stage(&slots, &partial, &staged, checkpoint).and_then(|()| switch(&slots, version, how));
    if let Err(e) = result {
        // A real failure (a full disk, permissions): take back everything
        // this save created; `NAME` still resolves to the old checkpoint.
        for debris in [&partial, &staged] {
            let _ = fs::remove_dir_all(debris);
        }
        let _ = fs::remove_file(slots.link_temp());
        return Err(e);
    }
    fault::point("checkpoint-switched").map_err(io(dir, "cannot save"))?;
    // The old version is no longer reachable; failing to delete it wastes
    // space but loses nothing (the next save tries again).
    if let Err(e) = tidy(&slots) {
        log::warn!("{e:#}");
    }
    Ok(())
}

/// Writes the files into `partial`, fsyncs, and renames it to `staged`.
fn stage(slots: &Slots, partial: &Path, staged: &Path, checkpoint: &Checkpoint) -> Result<()> {
    fs::create_dir(partial).map_err(io(partial, "cannot create"))?;
    let mut meta = checkpoint.meta.clone();
    meta.files.clear();
    let weights = encode_safetensors(&checkpoint.weights, None)?;
    write_synced(
        &partial.join(WEIGHTS_FILE),
        &weights,
        "checkpoint-write-weights",
    )?;
    meta.files
        .insert(WEIGHTS_FILE.to_string(), hash_bytes(&weights));
    if let Some(opt) = &checkpoint.optimizer {
        let mut named = Vec::with_capacity(opt.m.len() + opt.v.len());
        for (prefix, moments) in [("m", &opt.m), ("v", &opt.v)] {
            named.extend(moments.iter().map(|t| HostTensor {
                name: format!("{prefix}/{}", t.name),
                ..t.clone()
            }));
        }
        let metadata = HashMap::from([("step".to_string(), opt.step.to_string())]);
        let bytes = encode_safetensors(&named, Some(metadata))?;
        write_synced(
            &partial.join(OPTIMIZER_FILE),
            &bytes,
            "checkpoint-write-optimizer",
        )?;
        meta.files
            .insert(OPTIMIZER_FILE.to_string(), hash_bytes(&bytes));
    }
    meta.checksum = meta.computed_checksum();
    let meta_path = partial.join(META_FILE);
    let mut json = serde_json::to_vec_pretty(&meta).map_err(|source| CheckpointError::Json {
        path: meta_path.display().to_string(),
        source,
    })?;
    json.push(b'\n');
    write_synced(&meta_path, &json, "checkpoint-write-meta")?;
    atomic::sync_dir(partial).map_err(io(partial, "cannot sync"))?;
    fault::point("checkpoint-written").map_err(io(partial, "cannot save"))?;
    fs::rename(partial, staged).map_err(io(staged, "cannot move the new checkpoint into place"))?;
    atomic::sync_dir(&slots.parent).map_err(io(&slots.parent, "cannot sync"))?;
    fault::point("checkpoint-staged").map_err(io(staged, "cannot save"))
}

/// Points `NAME` at version `k` the way `how` says. Without unix links
/// (`Link` on another system cannot happen: `Switch::NATIVE` is `Rename`
/// there) it renames.
fn switch(slots: &Slots, k: u64, how: Switch) -> Result<()> {
    #[cfg(unix)]
    if how == Switch::Link {
        return switch_by_link(slots, k);
    }
    let _ = how;
    switch_by_rename(slots, k)
}

/// Points `NAME` at version `k` in one atomic rename.
#[cfg(unix)]
fn switch_by_link(slots: &Slots, k: u64) -> Result<()> {
    if !slots.is_link() && slots.dir.exists() {
        // A folder from an older build: move it aside as version 0 first.
        // Until the link below exists, readers fall back to the newest
        // version, the new checkpoint (see `resolve`).
        let aside = slots.version(0);
        fs::rename(&slots.dir, &aside)
            .map_err(io(&slots.dir, "cannot move the old checkpoint aside"))?;
    }
    let temp = slots.link_temp();
    std::os::unix::fs::symlink(slots.version_name(k), &temp)
        .map_err(io(&temp, "cannot create a link"))?;
    fault::point("checkpoint-linked").map_err(io(&temp, "cannot save"))?;
    fs::rename(&temp, &slots.dir).map_err(io(&slots.dir, "cannot switch to the new checkpoint"))?;
    atomic::sync_dir(&slots.parent).map_err(io(&slots.parent, "cannot sync"))
}

/// Without links: remove the old folder (or a link left by a unix save,
/// which `remove_dir_all` removes without following), rename the version
/// into place. In between, `load` falls back to the version (see `resolve`).
fn switch_by_rename(slots: &Slots, k: u64) -> Result<()> {
    if fs::symlink_metadata(&slots.dir).is_ok() {
        fs::remove_dir_all(&slots.dir)
            .or_else(|_| fs::remove_file(&slots.dir))
            .map_err(io(&slots.dir, "cannot remove the old checkpoint"))?;
    }
    fault::point("checkpoint-linked").map_err(io(&slots.dir, "cannot save"))?;
    let staged = slots.version(k);
    fs::rename(&staged, &slots.dir)
        .map_err(io(&slots.dir, "cannot switch to the new checkpoint"))?;
    atomic::sync_dir(&slots.parent).map_err(io(&slots.parent, "cannot sync"))
}

/// Reads the checkpoint in `dir` (see `resolve` for the fallbacks).
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let Some(source) = resolve(dir) else {
        let path = dir.display().to_string();
        return Err(if fs::symlink_metadata(dir).is_err() {
            CheckpointError::NotFound { path }
        } else {
            CheckpointError::Missing { path }
        });
    };
    if source != dir {
        log::warn!(
            "{}: not found; using {}, left by a save that was interrupted",
            dir.display(),
            source.display()
        );
    }
    let meta_path = source.join(META_FILE);
    let bytes = fs::read(&meta_path).map_err(io(&meta_path, "cannot read"))?;
    let meta = parse_meta(&meta_path, &bytes)?;
    let weights_path = source.join(WEIGHTS_FILE);
    let weights = fs::read(&weights_path).map_err(io(&weights_path, "cannot read"))?;
    let opt_path = source.join(OPTIMIZER_FILE);
    let optimizer = if opt_path.exists() || meta.files.contains_key(OPTIMIZER_FILE) {
        Some(fs::read(&opt_path).map_err(io(&opt_path, "cannot read"))?)
    } else {
        None
    };
    from_parts(&source, meta, &weights, optimizer.as_deref())
}

/// Parses and checks `checkpoint.json` (read from `path`, named in errors):
/// its format version, its fields and its checksum. (`load` reads the file
/// and calls this; the fuzz targets call it directly.)
pub fn parse_meta(path: &Path, bytes: &[u8]) -> Result<CheckpointMeta> {
    let json_error = |source| CheckpointError::Json {
        path: path.display().to_string(),
        source,
    };
    // The format first, so an older checkpoint gets a clear message rather
    // than "unknown field".
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json_error)?;
    let format = value.get("format").and_then(|f| f.as_u64());
    if format != Some(u64::from(FORMAT_VERSION)) {
        return Err(CheckpointError::Format {
            path: path.display().to_string(),
            found: format.unwrap_or(0) as u32,
            expected: FORMAT_VERSION,
        });
    }
    let meta: CheckpointMeta = serde_json::from_slice(bytes).map_err(json_error)?;
    if meta.checksum != json_checksum(value) && meta.checksum != meta.legacy_checksum() {
        return Err(CheckpointError::Edited {
            path: path.display().to_string(),
        });
    }
    Ok(meta)
}

/// The checkpoint in `dir` from its parsed `checkpoint.json` and the bytes
/// of its weights and (if it has one) optimizer file: decodes them and
/// checks that they agree with each other and with the hashes in `meta`.
/// (`load` reads the files and calls this; the fuzz targets call it directly.)
pub fn from_parts(
    dir: &Path,
    meta: CheckpointMeta,
    weights_bytes: &[u8],
    optimizer_bytes: Option<&[u8]>,
) -> Result<Checkpoint> {
    let mut files = Vec::new();
    let weights_path = dir.join(WEIGHTS_FILE);
    let (weights, _) = decode_safetensors(&weights_path, weights_bytes)?;
    files.push((WEIGHTS_FILE, weights_path, hash_bytes(weights_bytes)));
    let opt_path = dir.join(OPTIMIZER_FILE);
    let optimizer = match optimizer_bytes {
        Some(bytes) => {
            let (tensors, metadata) = decode_safetensors(&opt_path, bytes)?;
            files.push((OPTIMIZER_FILE, opt_path.clone(), hash_bytes(bytes)));
            Some(optimizer_state(&opt_path, tensors, &metadata)?)
        }
        None => None,
    };
    let checkpoint = Checkpoint {
        meta,
        weights,
        optimizer,
    };
    // Named problems first (a missing tensor, a NaN), then the hashes, which
    // catch any other change to the files.
    check_consistent(dir, &checkpoint)?;
    check_finite(dir, &checkpoint)?;
    for (name, path, hash) in files {
        if checkpoint.meta.files.get(name) != Some(&hash) {
            return Err(CheckpointError::FileChanged {
                path: path.display().to_string(),
            });
        }
    }
    Ok(checkpoint)
}

/// The checkpoint of `phase` given either a run directory (holding
/// `checkpoint-<phase>/`) or a checkpoint directory; refuses a run or a
/// checkpoint of the other phase, naming what it is.
pub fn load_for_phase(path: &Path, phase: &str) -> Result<Checkpoint> {
    let shown = path.display().to_string();
    if fs::symlink_metadata(path).is_err() {
        return Err(CheckpointError::NotFound { path: shown });
    }
    let nested = path.join(format!("checkpoint-{phase}"));
    let checkpoint = if resolve(&nested).is_some() {
        load(&nested)?
    } else if path.join(META_FILE).is_file() {
        load(path)?
    } else if let Some(other) = PHASES
        .iter()
        .find(|&&p| p != phase && resolve(&path.join(format!("checkpoint-{p}"))).is_some())
    {
        return Err(CheckpointError::WrongRun {
            path: shown,
            found: other.to_string(),
            expected: phase.to_string(),
        });
    } else {
        load(path)?
    };
    if checkpoint.meta.phase != phase {
        return Err(CheckpointError::WrongPhase {
            path: shown,
            found: checkpoint.meta.phase.clone(),
            expected: phase.to_string(),
        });
    }
    Ok(checkpoint)
}

fn optimizer_state(
    path: &Path,
    tensors: Vec<HostTensor>,
    metadata: &HashMap<String, String>,
) -> Result<OptimizerState> {
    let bad = |message: String| CheckpointError::Inconsistent {
        path: path.display().to_string(),
        message,
    };
    let step = metadata
        .get("step")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad("metadata has no integer \"step\"".to_string()))?;
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for t in tensors {
        if let Some(name) = t.name.strip_prefix("m/") {
            m.push(HostTensor {
                name: name.to_string(),
                ..t
            });
        } else if let Some(name) = t.name.strip_prefix("v/") {
            v.push(HostTensor {
                name: name.to_string(),
                ..t
            });
        } else {
            return Err(bad(format!(
                "tensor \"{}\" is neither m/<parameter> nor v/<parameter>",
                t.name
            )));
        }
    }
    Ok(OptimizerState { step, m, v })
}

/// Unique parameter names; AdamW moments exactly one per parameter, same
/// shape. A moment whose parameter is absent names the missing weight.
/// Buffers (`head_norm.running_*`: model state, not parameters) are weights
/// without moments.
fn check_consistent(dir: &Path, c: &Checkpoint) -> Result<()> {
    let mut shapes: HashMap<&str, &[usize]> = HashMap::new();
    for t in &c.weights {
        let expected: usize = t.shape.iter().product();
        if expected != t.data.len() {
            return Err(TensorFileError::Shape {
                name: t.name.clone(),
                shape: t.shape.clone(),
                expected,
                found: t.data.len(),
            }
            .into());
        }
        if shapes.insert(&t.name, &t.shape).is_some() {
            return Err(TensorFileError::Duplicate {
                name: t.name.clone(),
            }
            .into());
        }
    }
    shapes.retain(|name, _| !crate::model::params::is_buffer_name(name));
    let Some(opt) = &c.optimizer else {
        return Ok(());
    };
    let weights_path = dir.join(WEIGHTS_FILE).display().to_string();
    let optimizer_path = dir.join(OPTIMIZER_FILE).display().to_string();
    for (which, moments) in [("m", &opt.m), ("v", &opt.v)] {
        let mut seen = HashSet::new();
        for t in moments {
            let Some(shape) = shapes.get(t.name.as_str()) else {
                return Err(CheckpointError::Inconsistent {
                    path: weights_path,
                    message: format!(
                        "tensor `{}` is missing ({OPTIMIZER_FILE} holds its AdamW moments, \
                         so the weights file is incomplete)",
                        t.name
                    ),
                });
            };
            if *shape != t.shape.as_slice()
                || !seen.insert(t.name.as_str())
                || t.data.len() != t.shape.iter().product::<usize>()
            {
                return Err(CheckpointError::Inconsistent {
                    path: optimizer_path,
                    message: format!(
                        "{which}/{} (shape {:?}) does not match the parameter's shape {shape:?}, or appears twice",
                        t.name, t.shape
                    ),
                });
            }
        }
        if seen.len() != shapes.len() {
            return Err(CheckpointError::Inconsistent {
                path: optimizer_path,
                message: format!(
                    "has {which} for {} of {} parameters",
                    seen.len(),
                    shapes.len()
                ),
            });
        }
    }
    Ok(())
}

/// Weights and moments must be finite: training stops before it would save
/// a NaN, so one here means the file was damaged or written elsewhere.
fn check_finite(dir: &Path, c: &Checkpoint) -> Result<()> {
    let mut all: Vec<(&str, &HostTensor)> = c.weights.iter().map(|t| (WEIGHTS_FILE, t)).collect();
    if let Some(opt) = &c.optimizer {
        all.extend(opt.m.iter().chain(&opt.v).map(|t| (OPTIMIZER_FILE, t)));
    }
    for (file, t) in all {
        let count = t.data.iter().filter(|v| !v.is_finite()).count();
        if count > 0 {
            return Err(CheckpointError::NonFinite {
                path: dir.join(file).display().to_string(),
                name: t.name.clone(),
                count,
            });
        }
    }
    Ok(())
}

/// What training saw of a dataset: per scan, id, shape, label and a hash of
/// the values (after preprocessing), in training order, and the class names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPrint {
    pub regions: usize,
    pub classes: Vec<String>,
    pub scans: Vec<ScanPrint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanPrint {
    pub id: String,
    pub regions: usize,
    pub length: usize,
    pub label: u32,
    /// A hash of the values' bits, in row-major order.
    pub values: String,
}

impl DataPrint {
    pub fn of(dataset: &Dataset) -> Self {
        DataPrint {
            regions: dataset.n_regions,
            classes: dataset.class_names.clone(),
            scans: dataset
                .scans
                .iter()
                .map(|scan| {
                    let mut h = Fnv1a::new();
                    for v in scan.data.iter() {
                        h.word(v.to_bits());
                    }
                    ScanPrint {
                        id: scan.id.clone(),
                        regions: scan.regions(),
                        length: scan.length(),
                        label: scan.label,
                        values: format!("{:016x}", h.0),
                    }
                })
                .collect(),
        }
    }

    /// One hash of everything above: 64-bit FNV-1a, as 16 hex digits.
    pub fn fingerprint(&self) -> String {
        let mut h = Fnv1a::new();
        h.bytes(b"stptf-data-v2");
        h.u64(self.regions as u64);
        h.u64(self.classes.len() as u64);
        for name in &self.classes {
            h.str(name);
        }
        h.u64(self.scans.len() as u64);
        for s in &self.scans {
            h.str(&s.id);
            h.u64(s.regions as u64);
            h.u64(s.length as u64);
            h.u64(u64::from(s.label));
            h.str(&s.values);
        }
        format!("fnv1a64:{:016x}", h.0)
    }

    /// What differs from `self` (the checkpoint's data) in `now`, one line
    /// per kind of difference, naming scans (the first few); empty if equal.
    pub fn differences(&self, now: &DataPrint) -> Vec<String> {
        fn some(names: &[&str]) -> String {
            let shown: Vec<&str> = names.iter().take(5).copied().collect();
            let more = if names.len() > shown.len() {
                format!(" … ({} in all)", names.len())
            } else {
                String::new()
            };
            format!("{}{more}", shown.join(", "))
        }
        let mut out = Vec::new();
        if self.regions != now.regions {
            out.push(format!(
                "regions per scan: checkpoint {}, now {}",
                self.regions, now.regions
            ));
        }
        if self.classes != now.classes {
            out.push(format!(
                "class names: checkpoint {:?}, now {:?}",
                self.classes, now.classes
            ));
        }
        let then: HashMap<&str, &ScanPrint> =
            self.scans.iter().map(|s| (s.id.as_str(), s)).collect();
        let ids_now: HashSet<&str> = now.scans.iter().map(|s| s.id.as_str()).collect();
        let gone: Vec<&str> = self
            .scans
            .iter()
            .map(|s| s.id.as_str())
            .filter(|id| !ids_now.contains(id))
            .collect();
        let added: Vec<&str> = now
            .scans
            .iter()
            .map(|s| s.id.as_str())
            .filter(|id| !then.contains_key(id))
            .collect();
        if !gone.is_empty() {
            out.push(format!("scans no longer present: {}", some(&gone)));
        }
        if !added.is_empty() {
            out.push(format!("scans added: {}", some(&added)));
        }
        let (mut shape, mut label, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for s in &now.scans {
            let Some(old) = then.get(s.id.as_str()) else {
                continue;
            };
            if (old.regions, old.length) != (s.regions, s.length) {
                shape.push(format!(
                    "{} ({}×{} → {}×{})",
                    s.id, old.regions, old.length, s.regions, s.length
                ));
            } else if old.values != s.values {
                values.push(s.id.as_str());
            }
            if old.label != s.label {
                label.push(s.id.as_str());
            }
        }
        if !shape.is_empty() {
            let names: Vec<&str> = shape.iter().map(String::as_str).collect();
            out.push(format!("scan shapes changed: {}", some(&names)));
        }
        if !label.is_empty() {
            out.push(format!("scan labels changed: {}", some(&label)));
        }
        if !values.is_empty() {
            out.push(format!("scan values changed: {}", some(&values)));
        }
        if out.is_empty() && self != now {
            out.push("the scans are the same but in a different order".to_string());
        }
        out
    }
}

/// A stable fingerprint of a dataset's content as training sees it: scan
/// ids, shapes, labels and values, and the class names (see `DataPrint`).
pub fn data_fingerprint(dataset: &Dataset) -> String {
    DataPrint::of(dataset).fingerprint()
}

/// 64-bit FNV-1a of `bytes`, as 16 hex digits (file hashes, checksums).
fn hash_bytes(bytes: &[u8]) -> String {
    let mut h = Fnv1a::new();
    h.bytes(bytes);
    format!("fnv1a64:{:016x}", h.0)
}

struct Fnv1a(u64);

impl Fnv1a {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
    /// One 32-bit word per round (4× fewer rounds for scan values; still
    /// sensitive to every bit and to order).
    fn word(&mut self, w: u32) {
        self.0 ^= u64::from(w);
        self.0 = self.0.wrapping_mul(Self::PRIME);
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    use crate::fuzzing::chain;

    fn dataset(labels: Vec<u32>, length: usize) -> Dataset {
        let arrays = (0..4)
            .map(|i| Array2::from_shape_fn((3, length), |(r, t)| (r * 7 + t * 3 + i) as f32 % 5.0))
            .collect();
        Dataset::from_arrays(arrays, labels, vec!["a".into(), "b".into()], 8).unwrap()
    }

    fn sample(step: u64) -> Checkpoint {
        let w1 = HostTensor::new(
            "static.gcn1.weight",
            vec![2, 3],
            (0..6).map(|i| i as f32 * 0.5 - 1.0).collect(),
        )
        .unwrap();
        let b1 = HostTensor::new(
            "static.gcn1.bias",
            vec![3],
            vec![0.25, -0.0, f32::MIN_POSITIVE],
        )
        .unwrap();
        let alpha = HostTensor::new("fusion.alpha", vec![2], vec![step as f32, 1e-30]).unwrap();
        let weights = vec![alpha, b1, w1];
        let moments = |scale: f32| -> Vec<HostTensor> {
            weights
                .iter()
                .map(|t| HostTensor {
                    data: t.data.iter().map(|v| v * scale + 1.0).collect(),
                    ..t.clone()
                })
                .collect()
        };
        let data = DataPrint::of(&dataset(vec![0, 1, 0, 1], 10));
        Checkpoint {
            meta: CheckpointMeta::new("pretrain", step, step / 10, &data, &Config::default()),
            optimizer: Some(OptimizerState {
                step,
                m: moments(0.1),
                v: moments(0.01),
            }),
            weights,
        }
    }

    /// As `load` returns it: sorted, and sealed by `save`.
    fn as_loaded(mut c: Checkpoint, dir: &Path) -> Checkpoint {
        c.weights.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(o) = &mut c.optimizer {
            o.m.sort_by(|a, b| a.name.cmp(&b.name));
            o.v.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let on_disk = load(dir).unwrap().meta;
        assert!(on_disk.files.contains_key(WEIGHTS_FILE) && !on_disk.checksum.is_empty());
        c.meta.files = on_disk.files.clone();
        c.meta.checksum = on_disk.checksum.clone();
        c
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn round_trip_is_exact_and_reproducible() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let c = sample(30);
        save(&dir, &c).unwrap();
        let back = load(&dir).unwrap();
        assert_eq!(back, as_loaded(c.clone(), &dir));
        assert_eq!(back.weight("fusion.alpha").unwrap().data, vec![30.0, 1e-30]);
        // Same checkpoint, same bytes (no timestamps).
        let first: Vec<Vec<u8>> = [WEIGHTS_FILE, OPTIMIZER_FILE, META_FILE]
            .iter()
            .map(|f| fs::read(dir.join(f)).unwrap())
            .collect();
        save(&dir, &c).unwrap();
        for (f, bytes) in [WEIGHTS_FILE, OPTIMIZER_FILE, META_FILE].iter().zip(first) {
            assert_eq!(fs::read(dir.join(f)).unwrap(), bytes, "{f}");
        }
        // Only the link and the version it points to are left.
        #[cfg(unix)]
        {
            assert_eq!(entries(root.path()), vec![".ckpt.v2", "ckpt"]);
            assert_eq!(fs::read_link(&dir).unwrap(), PathBuf::from(".ckpt.v2"));
        }
        // Weights only.
        let mut w = c.clone();
        w.optimizer = None;
        save(&dir, &w).unwrap();
        assert!(!dir.join(OPTIMIZER_FILE).exists());
        assert_eq!(load(&dir).unwrap(), as_loaded(w, &dir));
    }

    /// Every state a kill can leave between two saves (the stages of
    /// `save`, rebuilt by hand; tests/checkpoint_faults.rs kills the real
    /// process at each): the checkpoint loads, and the next save tidies.
    #[cfg(unix)]
    #[test]
    fn every_state_an_interrupted_save_leaves_loads() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        save(&dir, &sample(10)).unwrap();
        let slots = Slots::of(&dir);
        let step = |expected: u64| assert_eq!(load(&dir).unwrap().meta.step, expected);

        // Killed while writing: a partial folder with half a weights file.
        fs::create_dir(slots.partial()).unwrap();
        fs::write(slots.partial().join(WEIGHTS_FILE), b"\x10\x00\x00").unwrap();
        step(10);
        // Killed after staging the new version, before the link.
        save(&slots.parent.join("other"), &sample(20)).unwrap();
        fs::rename(slots.parent.join(".other.v1"), slots.version(2)).unwrap();
        step(10);
        // Killed with the new link made but not yet renamed over NAME.
        std::os::unix::fs::symlink(".ckpt.v2", slots.link_temp()).unwrap();
        step(10);
        // Killed after the switch, before the old version was removed.
        fs::rename(slots.link_temp(), &dir).unwrap();
        step(20);
        assert!(slots.version(1).exists());
        // The next save clears every leftover.
        save(&dir, &sample(30)).unwrap();
        step(30);
        assert_eq!(entries(root.path()), vec![".ckpt.v3", "ckpt", "other"]);

        // NAME gone (deleted by hand, or an older build's folder moved
        // aside): readers fall back to the newest version.
        fs::remove_file(&dir).unwrap();
        step(30);
        save(&dir, &sample(40)).unwrap();
        step(40);
        assert_eq!(entries(root.path()), vec![".ckpt.v4", "ckpt", "other"]);

        // An older build's plain folder is migrated behind a link.
        let plain = root.path().join("plain");
        fs::create_dir(&plain).unwrap();
        for f in [WEIGHTS_FILE, OPTIMIZER_FILE, META_FILE] {
            fs::copy(dir.join(f), plain.join(f)).unwrap();
        }
        assert_eq!(load(&plain).unwrap().meta.step, 40);
        save(&plain, &sample(50)).unwrap();
        assert_eq!(load(&plain).unwrap().meta.step, 50);
        assert!(fs::symlink_metadata(&plain)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!slots.parent.join(".plain.v0").exists());
    }

    /// The fallback for systems without links (`Switch::Rename`, native on
    /// Windows), run here through the same `save`: saves replace a plain
    /// folder, a kill between its remove and rename loses nothing, and it
    /// takes over a checkpoint a link-switching save made.
    #[test]
    fn the_rename_fallback_saves_loads_and_survives_an_interrupted_switch() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let step = |expected: u64| assert_eq!(load(&dir).unwrap().meta.step, expected);
        save_with(&dir, &sample(10), Switch::Rename).unwrap();
        step(10);
        save_with(&dir, &sample(20), Switch::Rename).unwrap();
        step(20);
        assert_eq!(entries(root.path()), vec!["ckpt"]);
        assert!(!fs::symlink_metadata(&dir).unwrap().file_type().is_symlink());
        // Killed after removing NAME, before renaming the staged version in
        // (here the staged version holds step 20): readers use the version.
        let slots = Slots::of(&dir);
        fs::rename(&dir, slots.version(3)).unwrap();
        step(20);
        save_with(&dir, &sample(30), Switch::Rename).unwrap();
        step(30);
        assert_eq!(entries(root.path()), vec!["ckpt"]);
        // A link made by a unix save is replaced by a plain folder.
        save_with(&dir, &sample(40), Switch::NATIVE).unwrap();
        save_with(&dir, &sample(50), Switch::Rename).unwrap();
        step(50);
        assert_eq!(entries(root.path()), vec!["ckpt"]);
    }

    #[test]
    fn corrupt_files_are_named_once() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        save(&dir, &sample(5)).unwrap();
        let weights = dir.join(WEIGHTS_FILE);
        let bytes = fs::read(&weights).unwrap();
        // Writing through the link would edit the version in place; that
        // is what a user editing the file does.
        fs::write(&weights, &bytes[..bytes.len() - 7]).unwrap();
        let e = chain(&load(&dir).unwrap_err());
        assert!(
            e.contains(&weights.display().to_string()) && e.contains("truncated or corrupt"),
            "{e}"
        );
        fs::write(&weights, b"").unwrap();
        let e = chain(&load(&dir).unwrap_err());
        assert!(e.contains("weights.safetensors"), "{e}");

        save(&dir, &sample(5)).unwrap();
        fs::write(
            dir.join(OPTIMIZER_FILE),
            b"\xff\xff\xff\xff\xff\xff\xff\xff{}",
        )
        .unwrap();
        let e = chain(&load(&dir).unwrap_err());
        assert_eq!(
            e,
            format!(
                "{}: not a valid safetensors file (truncated or corrupt?): header too large",
                dir.join(OPTIMIZER_FILE).display()
            ),
            "the cause is said once"
        );

        save(&dir, &sample(5)).unwrap();
        fs::write(dir.join(META_FILE), b"{\"format\": 2").unwrap();
        let e = chain(&load(&dir).unwrap_err());
        assert!(
            e.contains("checkpoint.json: not a valid checkpoint description (edited or damaged?)"),
            "{e}"
        );

        let e = chain(&load(&root.path().join("nothing")).unwrap_err());
        assert_eq!(
            e,
            format!("{}: does not exist", root.path().join("nothing").display())
        );
        let empty = root.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let e = chain(&load(&empty).unwrap_err());
        assert!(e.contains("no checkpoint here"), "{e}");
    }

    #[test]
    fn edited_descriptions_and_replaced_files_are_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        save(&dir, &sample(5)).unwrap();
        let meta_path = dir.join(META_FILE);
        let text = fs::read_to_string(&meta_path).unwrap();
        fs::write(&meta_path, text.replace("\"step\": 5", "\"step\": 6")).unwrap();
        let e = chain(&load(&dir).unwrap_err());
        assert!(
            e.contains("checkpoint.json: was edited or damaged after it was written"),
            "{e}"
        );
        // Re-indenting alone is no edit.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        fs::write(&meta_path, serde_json::to_string(&value).unwrap()).unwrap();
        assert_eq!(load(&dir).unwrap().meta.step, 5);
        // An older format is named as such.
        fs::write(&meta_path, text.replace("\"format\": 2", "\"format\": 1")).unwrap();
        let e = chain(&load(&dir).unwrap_err());
        assert!(
            e.contains("checkpoint format 1; this build reads format 2"),
            "{e}"
        );

        // The weights of another checkpoint (same names, other values).
        save(&dir, &sample(5)).unwrap();
        save(&root.path().join("b"), &sample(6)).unwrap();
        fs::copy(
            root.path().join("b").join(WEIGHTS_FILE),
            dir.join(WEIGHTS_FILE),
        )
        .unwrap();
        let e = chain(&load(&dir).unwrap_err());
        assert!(
            e.contains("weights.safetensors: does not match the checkpoint.json beside it"),
            "{e}"
        );
    }

    /// A checkpoint written by a build that did not know a config key (here
    /// `finetune.diagnostic_scans`, added later with a default) still
    /// verifies and loads with the key's default; the pre-fix checksum of a
    /// checkpoint whose config has every current key is accepted too.
    #[test]
    fn a_checkpoint_from_before_a_new_config_key_still_loads() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        save(&dir, &sample(5)).unwrap();
        let meta_path = dir.join(META_FILE);
        let mut value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&meta_path).unwrap()).unwrap();
        let finetune = value["config"]["finetune"].as_object_mut().unwrap();
        assert!(finetune.remove("diagnostic_scans").is_some());
        // What the older build wrote: its own content, sealed by its checksum.
        let sealed = json_checksum(value.clone());
        value["checksum"] = serde_json::Value::String(sealed);
        fs::write(&meta_path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
        let loaded = load(&dir).unwrap();
        assert_eq!(loaded.meta.config.finetune.diagnostic_scans, 128);
        // Editing that file is still caught.
        let text = fs::read_to_string(&meta_path).unwrap();
        fs::write(&meta_path, text.replace("\"step\": 5", "\"step\": 6")).unwrap();
        assert!(chain(&load(&dir).unwrap_err()).contains("was edited or damaged"));
        // The legacy checksum (a hash of the re-serialized struct).
        save(&dir, &sample(5)).unwrap();
        let mut meta = load(&dir).unwrap().meta;
        meta.checksum = meta.legacy_checksum();
        fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
        assert_eq!(load(&dir).unwrap().meta.step, 5);
    }

    #[test]
    fn a_missing_tensor_and_a_nan_are_named_as_such() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let c = sample(5);
        save(&dir, &c).unwrap();
        // weights.safetensors without `static.gcn1.bias`.
        let kept: Vec<HostTensor> = c
            .weights
            .iter()
            .filter(|t| t.name != "static.gcn1.bias")
            .cloned()
            .collect();
        fs::write(
            dir.join(WEIGHTS_FILE),
            encode_safetensors(&kept, None).unwrap(),
        )
        .unwrap();
        let e = chain(&load(&dir).unwrap_err());
        assert!(
            e.contains("weights.safetensors: tensor `static.gcn1.bias` is missing"),
            "{e}"
        );
        assert!(!e.contains("does not match"), "{e}");

        let mut nan = c.clone();
        nan.weights[0].data[1] = f32::NAN;
        fs::write(
            dir.join(WEIGHTS_FILE),
            encode_safetensors(&nan.weights, None).unwrap(),
        )
        .unwrap();
        let e = chain(&load(&dir).unwrap_err());
        assert!(
            e.contains(
                "weights.safetensors: tensor `fusion.alpha` holds 1 non-finite values (NaN or Inf): \
                 the checkpoint has non-finite weights"
            ),
            "{e}"
        );
        assert!(!e.contains("learning rate"), "{e}");
    }

    #[test]
    fn runs_of_the_other_phase_are_named() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("run");
        save(&run.join("checkpoint-pretrain"), &sample(5)).unwrap();
        assert_eq!(load_for_phase(&run, "pretrain").unwrap().meta.step, 5);
        assert_eq!(
            load_for_phase(&run.join("checkpoint-pretrain"), "pretrain")
                .unwrap()
                .meta
                .step,
            5
        );
        let e = chain(&load_for_phase(&run, "finetune").unwrap_err());
        assert_eq!(
            e,
            format!(
                "{}: this is a pretraining run (it holds checkpoint-pretrain/); a fine-tuning run \
                 or its checkpoint-finetune/ folder is needed here",
                run.display()
            )
        );
        let e = chain(&load_for_phase(&run.join("checkpoint-pretrain"), "finetune").unwrap_err());
        assert!(
            e.ends_with(
                "checkpoint-pretrain: this is a pretraining checkpoint; a fine-tuning checkpoint is needed here"
            ),
            "{e}"
        );
        let e = chain(&load_for_phase(&root.path().join("nonexistent"), "pretrain").unwrap_err());
        assert!(e.ends_with("nonexistent: does not exist"), "{e}");
    }

    #[test]
    fn inconsistent_state_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut c = sample(1);
        c.optimizer.as_mut().unwrap().m.pop();
        let e = chain(&save(&root.path().join("a"), &c).unwrap_err());
        assert!(e.contains("has m for 2 of 3 parameters"), "{e}");
        let mut c = sample(1);
        c.weights.push(c.weights[0].clone());
        assert!(matches!(
            save(&root.path().join("b"), &c),
            Err(CheckpointError::Tensors(TensorFileError::Duplicate { .. }))
        ));
        assert!(matches!(
            HostTensor::new("x", vec![2, 2], vec![1.0]),
            Err(TensorFileError::Shape {
                expected: 4,
                found: 1,
                ..
            })
        ));
        // Nothing was left behind by the refused saves.
        assert!(entries(root.path()).is_empty());
    }

    #[test]
    fn fingerprint_sees_ids_shapes_labels_and_values() {
        let base = DataPrint::of(&dataset(vec![0, 1, 0, 1], 10));
        let fp = base.fingerprint();
        assert_eq!(fp, data_fingerprint(&dataset(vec![0, 1, 0, 1], 10)));
        assert!(fp.starts_with("fnv1a64:") && fp.len() == 8 + 16);
        assert!(base.differences(&base).is_empty());

        let relabeled = DataPrint::of(&dataset(vec![1, 1, 0, 0], 10));
        assert_ne!(fp, relabeled.fingerprint());
        assert_eq!(
            base.differences(&relabeled),
            vec!["scan labels changed: scan0000, scan0003"]
        );
        let longer = DataPrint::of(&dataset(vec![0, 1, 0, 1], 11));
        assert_ne!(fp, longer.fingerprint());
        assert!(
            base.differences(&longer)[0].starts_with("scan shapes changed: scan0000 (3×10 → 3×11)")
        );

        let mut changed = dataset(vec![0, 1, 0, 1], 10);
        changed.scans[2].data[[1, 4]] += 1e-6;
        let changed = DataPrint::of(&changed);
        assert_ne!(fp, changed.fingerprint());
        assert_eq!(
            base.differences(&changed),
            vec![format!("scan values changed: {}", base.scans[2].id)]
        );

        let mut renamed = dataset(vec![0, 1, 0, 1], 10);
        renamed.scans[0].id = "other".into();
        let renamed = DataPrint::of(&renamed);
        assert_ne!(fp, renamed.fingerprint());
        let d = base.differences(&renamed);
        assert_eq!(
            d,
            vec![
                format!("scans no longer present: {}", base.scans[0].id),
                "scans added: other".to_string()
            ]
        );
        let mut shuffled = base.clone();
        shuffled.scans.swap(0, 1);
        assert_eq!(
            base.differences(&shuffled),
            vec!["the scans are the same but in a different order"]
        );
    }
}
