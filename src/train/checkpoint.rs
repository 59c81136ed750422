//! Checkpoints: a directory holding
//!
//! - `weights.safetensors`: every parameter as a named f32 tensor (the names of
//!   docs/model.md; the GPU side downloads into `NamedTensor`s);
//! - `optimizer.safetensors` (optional): AdamW's first and second moments per
//!   parameter, named `m/<parameter>` and `v/<parameter>`, and the step in the
//!   file's metadata;
//! - `checkpoint.json`: config, seed, step, epoch and data fingerprint. No
//!   timestamp, so the same run writes byte-identical checkpoints.
//!
//! Saving is crash-safe at two levels: each file is written atomically
//! (`atomic::write`), and the whole directory is built under a sibling name
//! `.NAME.partial` and swapped in by renames (old → `.NAME.previous`,
//! partial → NAME, then the previous one is deleted). A kill at any point
//! leaves either NAME complete, or (between the two renames) no NAME but a
//! complete `.NAME.previous`, which `load` falls back to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::atomic;
use crate::config::Config;
use crate::data::Dataset;

pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "checkpoint.json";
/// Bumped when the layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a valid safetensors file (truncated or corrupt?): {source}")]
    Safetensors {
        path: String,
        #[source]
        source: SafeTensorError,
    },

    #[error("{path}: cannot encode tensors: {source}")]
    Encode {
        path: String,
        #[source]
        source: SafeTensorError,
    },

    #[error("{path}: not a valid checkpoint description: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: tensor \"{name}\" is {dtype}; checkpoints hold F32 only")]
    Dtype {
        path: String,
        name: String,
        dtype: String,
    },

    #[error("tensor \"{name}\": shape {shape:?} holds {expected} values but {found} were given")]
    Shape {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },

    #[error("tensor \"{name}\" appears twice")]
    Duplicate { name: String },

    #[error("{path}: {message}")]
    Inconsistent { path: String, message: String },

    #[error("{path}: checkpoint format {found}; this build reads format {expected}")]
    Format {
        path: String,
        found: u32,
        expected: u32,
    },

    #[error("{path}: no checkpoint here ({META_FILE} not found)")]
    Missing { path: String },
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

/// A host-side f32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NamedTensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let name = name.into();
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(CheckpointError::Shape {
                name,
                shape,
                expected,
                found: data.len(),
            });
        }
        Ok(NamedTensor { name, shape, data })
    }
}

/// AdamW state: moments named like the parameters they belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// Optimizer steps taken (for the bias correction and the schedule).
    pub step: u64,
    pub m: Vec<NamedTensor>,
    pub v: Vec<NamedTensor>,
}

/// `checkpoint.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub format: u32,
    /// "pretrain" or "finetune" (free text for the trainer).
    pub phase: String,
    pub seed: u64,
    /// Optimizer steps completed.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// `data_fingerprint` of the training data, to refuse resuming on other data.
    pub data_fingerprint: String,
    pub config: Config,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    /// Parameters; `load` returns them sorted by name.
    pub weights: Vec<NamedTensor>,
    pub optimizer: Option<OptimizerState>,
}

impl Checkpoint {
    /// Looks a parameter up by name.
    pub fn weight(&self, name: &str) -> Option<&NamedTensor> {
        self.weights.iter().find(|t| t.name == name)
    }
}

/// Sibling paths used while saving `dir`.
fn siblings(dir: &Path) -> (PathBuf, PathBuf) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".to_string());
    (
        dir.with_file_name(format!(".{name}.partial")),
        dir.with_file_name(format!(".{name}.previous")),
    )
}

/// Writes `checkpoint` to the directory `dir`, replacing any checkpoint there
/// only once the new one is complete on disk.
pub fn save(dir: &Path, checkpoint: &Checkpoint) -> Result<()> {
    check_consistent(dir, checkpoint)?;
    let (partial, previous) = siblings(dir);
    if partial.exists() {
        // Left by a save that was interrupted: never complete, never read.
        fs::remove_dir_all(&partial).map_err(io(&partial, "cannot remove a stale partial save"))?;
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io(parent, "cannot create the folder"))?;
    }
    fs::create_dir(&partial).map_err(io(&partial, "cannot create"))?;

    let weights = encode(&partial.join(WEIGHTS_FILE), &checkpoint.weights, None)?;
    let weights_path = partial.join(WEIGHTS_FILE);
    atomic::write(&weights_path, &weights).map_err(io(&weights_path, "cannot write"))?;
    if let Some(opt) = &checkpoint.optimizer {
        let path = partial.join(OPTIMIZER_FILE);
        let mut named = Vec::with_capacity(opt.m.len() + opt.v.len());
        for t in &opt.m {
            named.push(NamedTensor {
                name: format!("m/{}", t.name),
                ..t.clone()
            });
        }
        for t in &opt.v {
            named.push(NamedTensor {
                name: format!("v/{}", t.name),
                ..t.clone()
            });
        }
        let metadata = HashMap::from([("step".to_string(), opt.step.to_string())]);
        let bytes = encode(&path, &named, Some(metadata))?;
        atomic::write(&path, &bytes).map_err(io(&path, "cannot write"))?;
    }
    let meta_path = partial.join(META_FILE);
    let json =
        serde_json::to_vec_pretty(&checkpoint.meta).map_err(|source| CheckpointError::Json {
            path: meta_path.display().to_string(),
            source,
        })?;
    atomic::write(&meta_path, &json).map_err(io(&meta_path, "cannot write"))?;
    atomic::sync_dir(&partial).map_err(io(&partial, "cannot sync"))?;

    // The swap. Between the two renames only `previous` exists: `load` uses it.
    if dir.exists() {
        if previous.exists() {
            fs::remove_dir_all(&previous)
                .map_err(io(&previous, "cannot remove an old checkpoint"))?;
        }
        fs::rename(dir, &previous).map_err(io(dir, "cannot move the old checkpoint aside"))?;
    }
    fs::rename(&partial, dir).map_err(io(dir, "cannot move the new checkpoint into place"))?;
    atomic::sync_parent(dir).map_err(io(dir, "cannot sync the parent folder"))?;
    if previous.exists() {
        fs::remove_dir_all(&previous).map_err(io(&previous, "cannot remove the old checkpoint"))?;
    }
    Ok(())
}

/// Reads the checkpoint in `dir`, or the one a save interrupted mid-swap left
/// under `.NAME.previous`.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let (_, previous) = siblings(dir);
    let source = if dir.join(META_FILE).exists() {
        dir.to_path_buf()
    } else if previous.join(META_FILE).exists() {
        log::warn!(
            "{}: not found; using {}, left by a save that was interrupted",
            dir.display(),
            previous.display()
        );
        previous
    } else {
        return Err(CheckpointError::Missing {
            path: dir.display().to_string(),
        });
    };
    let meta_path = source.join(META_FILE);
    let bytes = fs::read(&meta_path).map_err(io(&meta_path, "cannot read"))?;
    let meta: CheckpointMeta =
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json {
            path: meta_path.display().to_string(),
            source,
        })?;
    if meta.format != FORMAT_VERSION {
        return Err(CheckpointError::Format {
            path: meta_path.display().to_string(),
            found: meta.format,
            expected: FORMAT_VERSION,
        });
    }
    let weights_path = source.join(WEIGHTS_FILE);
    let (weights, _) = decode(&weights_path)?;
    let opt_path = source.join(OPTIMIZER_FILE);
    let optimizer = if opt_path.exists() {
        let (tensors, metadata) = decode(&opt_path)?;
        let bad = |message: String| CheckpointError::Inconsistent {
            path: opt_path.display().to_string(),
            message,
        };
        let step = metadata
            .get("step")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("metadata has no integer \"step\"".to_string()))?;
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for t in tensors {
            if let Some(name) = t.name.strip_prefix("m/") {
                m.push(NamedTensor {
                    name: name.to_string(),
                    ..t
                });
            } else if let Some(name) = t.name.strip_prefix("v/") {
                v.push(NamedTensor {
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
        Some(OptimizerState { step, m, v })
    } else {
        None
    };
    let checkpoint = Checkpoint {
        meta,
        weights,
        optimizer,
    };
    check_consistent(&source, &checkpoint)?;
    Ok(checkpoint)
}

/// Unique parameter names; AdamW moments exactly one per parameter, same shape.
fn check_consistent(dir: &Path, c: &Checkpoint) -> Result<()> {
    let mut shapes: HashMap<&str, &[usize]> = HashMap::new();
    for t in &c.weights {
        let expected: usize = t.shape.iter().product();
        if expected != t.data.len() {
            return Err(CheckpointError::Shape {
                name: t.name.clone(),
                shape: t.shape.clone(),
                expected,
                found: t.data.len(),
            });
        }
        if shapes.insert(&t.name, &t.shape).is_some() {
            return Err(CheckpointError::Duplicate {
                name: t.name.clone(),
            });
        }
    }
    let Some(opt) = &c.optimizer else {
        return Ok(());
    };
    for (which, moments) in [("m", &opt.m), ("v", &opt.v)] {
        let mut seen = HashSet::new();
        for t in moments {
            let fits = shapes
                .get(t.name.as_str())
                .is_some_and(|s| *s == t.shape.as_slice());
            if !fits
                || !seen.insert(t.name.as_str())
                || t.data.len() != t.shape.iter().product::<usize>()
            {
                return Err(CheckpointError::Inconsistent {
                    path: dir.display().to_string(),
                    message: format!(
                        "optimizer {which}/{} (shape {:?}) matches no parameter of that shape, or appears twice",
                        t.name, t.shape
                    ),
                });
            }
        }
        if seen.len() != shapes.len() {
            return Err(CheckpointError::Inconsistent {
                path: dir.display().to_string(),
                message: format!(
                    "optimizer has {which} for {} of {} parameters",
                    seen.len(),
                    shapes.len()
                ),
            });
        }
    }
    Ok(())
}

fn encode(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let encode_error = |source| CheckpointError::Encode {
        path: path.display().to_string(),
        source,
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = BTreeMap::new();
    for (t, data) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, t.shape.clone(), data).map_err(encode_error)?;
        if views.insert(t.name.clone(), view).is_some() {
            return Err(CheckpointError::Duplicate {
                name: t.name.clone(),
            });
        }
    }
    safetensors::serialize(views, metadata).map_err(encode_error)
}

type Decoded = (Vec<NamedTensor>, HashMap<String, String>);

fn decode(path: &Path) -> Result<Decoded> {
    let bytes = fs::read(path).map_err(io(path, "cannot read"))?;
    let shown = || path.display().to_string();
    let file = SafeTensors::deserialize(&bytes).map_err(|source| CheckpointError::Safetensors {
        path: shown(),
        source,
    })?;
    let mut names: Vec<&str> = file.names();
    names.sort_unstable();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let view = file
            .tensor(name)
            .map_err(|source| CheckpointError::Safetensors {
                path: shown(),
                source,
            })?;
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::Dtype {
                path: shown(),
                name: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push(NamedTensor::new(name, view.shape().to_vec(), data)?);
    }
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|source| CheckpointError::Safetensors {
            path: shown(),
            source,
        })?;
    let metadata = header.metadata().clone().unwrap_or_default();
    Ok((tensors, metadata))
}

/// A stable fingerprint of a dataset's content as training sees it: scan
/// ids, shapes and labels, and the class names (not the values: reading them
/// all would cost as much as loading). 64-bit FNV-1a, as 16 hex digits.
pub fn data_fingerprint(dataset: &Dataset) -> String {
    let mut h = Fnv1a::new();
    h.bytes(b"stptf-data-v1");
    h.u64(dataset.n_regions as u64);
    h.u64(dataset.class_names.len() as u64);
    for name in &dataset.class_names {
        h.str(name);
    }
    h.u64(dataset.scans.len() as u64);
    for scan in &dataset.scans {
        h.str(&scan.id);
        h.u64(scan.regions() as u64);
        h.u64(scan.length() as u64);
        h.u64(u64::from(scan.label));
    }
    format!("fnv1a64:{:016x}", h.0)
}

struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
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

    fn sample(step: u64) -> Checkpoint {
        let w1 = NamedTensor::new(
            "static.gcn1.weight",
            vec![2, 3],
            (0..6).map(|i| i as f32 * 0.5 - 1.0).collect(),
        )
        .unwrap();
        let b1 = NamedTensor::new(
            "static.gcn1.bias",
            vec![3],
            vec![0.25, -0.0, f32::MIN_POSITIVE],
        )
        .unwrap();
        let alpha = NamedTensor::new("fusion.alpha", vec![2], vec![step as f32, 1e-30]).unwrap();
        let weights = vec![alpha, b1, w1];
        let moments = |scale: f32| -> Vec<NamedTensor> {
            weights
                .iter()
                .map(|t| NamedTensor {
                    data: t.data.iter().map(|v| v * scale + 1.0).collect(),
                    ..t.clone()
                })
                .collect()
        };
        Checkpoint {
            meta: CheckpointMeta {
                format: FORMAT_VERSION,
                phase: "pretrain".to_string(),
                seed: 7,
                step,
                epoch: step / 10,
                data_fingerprint: "fnv1a64:0123456789abcdef".to_string(),
                config: Config::default(),
            },
            optimizer: Some(OptimizerState {
                step,
                m: moments(0.1),
                v: moments(0.01),
            }),
            weights,
        }
    }

    fn sorted(mut c: Checkpoint) -> Checkpoint {
        c.weights.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(o) = &mut c.optimizer {
            o.m.sort_by(|a, b| a.name.cmp(&b.name));
            o.v.sort_by(|a, b| a.name.cmp(&b.name));
        }
        c
    }

    #[test]
    fn round_trip_is_exact_and_reproducible() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let c = sample(30);
        save(&dir, &c).unwrap();
        let back = load(&dir).unwrap();
        assert_eq!(back, sorted(c.clone()));
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
        // Nothing left beside it.
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ckpt")]);
        // Weights only.
        let mut w = c.clone();
        w.optimizer = None;
        save(&dir, &w).unwrap();
        assert!(!dir.join(OPTIMIZER_FILE).exists());
        assert_eq!(load(&dir).unwrap(), sorted(w));
    }

    #[test]
    fn interrupted_save_leaves_the_last_good_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        save(&dir, &sample(10)).unwrap();

        // A kill while writing the new files: a partial directory with a
        // half-written weights file and stray temp files.
        let (partial, previous) = siblings(&dir);
        fs::create_dir(&partial).unwrap();
        fs::write(partial.join(WEIGHTS_FILE), b"\x10\x00\x00").unwrap();
        fs::write(partial.join(".checkpoint.json.tmp-1"), b"{").unwrap();
        fs::write(dir.join(".weights.safetensors.tmp-99"), b"junk").unwrap();
        assert_eq!(load(&dir).unwrap().meta.step, 10);

        // The next save cleans up and replaces.
        save(&dir, &sample(20)).unwrap();
        assert!(!partial.exists());
        assert_eq!(load(&dir).unwrap().meta.step, 20);

        // A kill between the two renames of the swap: only `previous` exists.
        fs::rename(&dir, &previous).unwrap();
        fs::create_dir(&partial).unwrap();
        assert_eq!(load(&dir).unwrap().meta.step, 20);
        // And saving from that state works and tidies both.
        save(&dir, &sample(30)).unwrap();
        assert_eq!(load(&dir).unwrap().meta.step, 30);
        assert!(!partial.exists() && !previous.exists());
    }

    #[test]
    fn corrupt_files_are_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        save(&dir, &sample(5)).unwrap();
        let weights = dir.join(WEIGHTS_FILE);
        let bytes = fs::read(&weights).unwrap();
        fs::write(&weights, &bytes[..bytes.len() - 7]).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&weights.display().to_string()) && e.contains("truncated or corrupt"),
            "{e}"
        );
        fs::write(&weights, b"").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("weights.safetensors"), "{e}");

        save(&dir, &sample(5)).unwrap();
        fs::write(
            dir.join(OPTIMIZER_FILE),
            b"\xff\xff\xff\xff\xff\xff\xff\xff{}",
        )
        .unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("optimizer.safetensors"), "{e}");

        save(&dir, &sample(5)).unwrap();
        fs::write(dir.join(META_FILE), b"{\"format\": 1").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("checkpoint.json"), "{e}");

        let e = load(&root.path().join("nothing")).unwrap_err().to_string();
        assert!(e.contains("no checkpoint here"), "{e}");
    }

    #[test]
    fn inconsistent_state_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut c = sample(1);
        c.optimizer.as_mut().unwrap().m.pop();
        let e = save(&root.path().join("a"), &c).unwrap_err().to_string();
        assert!(e.contains("optimizer has m for 2 of 3 parameters"), "{e}");
        let mut c = sample(1);
        c.weights.push(c.weights[0].clone());
        assert!(matches!(
            save(&root.path().join("b"), &c),
            Err(CheckpointError::Duplicate { .. })
        ));
        assert!(matches!(
            NamedTensor::new("x", vec![2, 2], vec![1.0]),
            Err(CheckpointError::Shape {
                expected: 4,
                found: 1,
                ..
            })
        ));
    }

    #[test]
    fn fingerprint_sees_ids_shapes_and_labels() {
        let make = |labels: Vec<u32>, length: usize| {
            let arrays = (0..4)
                .map(|i| {
                    Array2::from_shape_fn((3, length), |(r, t)| (r * 7 + t * 3 + i) as f32 % 5.0)
                })
                .collect();
            Dataset::from_arrays(arrays, labels, vec!["a".into(), "b".into()], 8).unwrap()
        };
        let base = data_fingerprint(&make(vec![0, 1, 0, 1], 10));
        assert_eq!(base, data_fingerprint(&make(vec![0, 1, 0, 1], 10)));
        assert!(base.starts_with("fnv1a64:") && base.len() == 8 + 16);
        assert_ne!(base, data_fingerprint(&make(vec![1, 1, 0, 0], 10)));
        assert_ne!(base, data_fingerprint(&make(vec![0, 1, 0, 1], 11)));
        let mut renamed = make(vec![0, 1, 0, 1], 10);
        renamed.scans[0].id = "other".into();
        assert_ne!(base, data_fingerprint(&renamed));
    }
}
