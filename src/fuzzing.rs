//! What the fuzz targets (`fuzz/`) and their regression test
//! (`tests/fuzz_regressions.rs`) feed the parsers: one function per target,
//! taking the raw fuzz input. The first byte picks the variant (file
//! extension, orientation, which file of a checkpoint, ...), the rest is the
//! file's bytes, so one input is replayed identically by both.
//!
//! Each function returns the parser's error as the CLI prints it (message
//! and causes, joined by ": "), so the regression test can check the exact
//! text. A panic or an abort is the bug the fuzzers look for; an `Err` is the
//! expected outcome for bad input.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::Config;
use crate::data::config::{Format, Orientation, SkipColumns};
use crate::data::formats::{parse_scan, ReadOptions};
use crate::data::DatasetConfig;
use crate::model::HostTensor;
use crate::train::checkpoint::{
    self, Checkpoint, CheckpointMeta, DataPrint, OptimizerState, ScanPrint, META_FILE,
    OPTIMIZER_FILE, WEIGHTS_FILE,
};

/// The outcome of one fuzz input: `Err` holds the full message.
pub type Outcome = Result<(), String>;

/// The message and its causes, as the CLI prints them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn split(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (first, rest),
        None => (0, &[]),
    }
}

fn orientation(bit: bool) -> Orientation {
    if bit {
        Orientation::RegionByTime
    } else {
        Orientation::TimeByRegion
    }
}

/// Text tables. First byte: bits 0-1 the extension (.1D, .txt, .csv, .tsv),
/// bit 2 the orientation, bits 3-4 `skip_columns` (none, 1, 2, the ADHD-200
/// names `["File", "Sub-brick"]`).
pub fn text_table(data: &[u8]) -> Outcome {
    let (selector, bytes) = split(data);
    let extension = ["1D", "txt", "csv", "tsv"][usize::from(selector & 3)];
    let skip_columns = match (selector >> 3) & 3 {
        0 => SkipColumns::None,
        1 => SkipColumns::Count(1),
        2 => SkipColumns::Count(2),
        _ => SkipColumns::Names(vec!["File".into(), "Sub-brick".into()]),
    };
    let options = ReadOptions {
        format: Format::Auto,
        orientation: orientation(selector & 4 != 0),
        array_name: None,
        skip_columns,
    };
    let path = PathBuf::from(format!("scan.{extension}"));
    scan(&path, bytes, &options)
}

/// `.npy` and `.npz`. First byte: bit 0 `.npz` (else `.npy`), bit 1 the
/// orientation, bit 2 `array_name = "ts"` (else none).
pub fn npy(data: &[u8]) -> Outcome {
    let (selector, bytes) = split(data);
    let path = Path::new(if selector & 1 != 0 {
        "scan.npz"
    } else {
        "scan.npy"
    });
    let options = ReadOptions {
        format: Format::Auto,
        orientation: orientation(selector & 2 != 0),
        array_name: (selector & 4 != 0).then(|| "ts".to_string()),
        skip_columns: SkipColumns::None,
    };
    scan(path, bytes, &options)
}

/// `.mat`. First byte: bit 0 the orientation, bit 1 `array_name = "ts"`
/// (else none).
pub fn mat(data: &[u8]) -> Outcome {
    let (selector, bytes) = split(data);
    let options = ReadOptions {
        format: Format::Auto,
        orientation: orientation(selector & 1 != 0),
        array_name: (selector & 2 != 0).then(|| "ts".to_string()),
        skip_columns: SkipColumns::None,
    };
    scan(Path::new("scan.mat"), bytes, &options)
}

fn scan(path: &Path, bytes: &[u8], options: &ReadOptions) -> Outcome {
    let scan = parse_scan(path, bytes.to_vec(), options).map_err(|e| chain(&e))?;
    if scan.iter().any(|v| !v.is_finite()) {
        panic!("{}: a non-finite value was accepted", path.display());
    }
    Ok(())
}

/// The TOML files. First byte: bit 0 the experiment config (else the
/// dataset description). The rest must be UTF-8 (as `from_file` requires);
/// other bytes are not a TOML input and are skipped (`Ok`).
pub fn toml(data: &[u8]) -> Outcome {
    let (selector, bytes) = split(data);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(());
    };
    if selector & 1 != 0 {
        let config =
            Config::from_toml_str(text, Path::new("config.toml")).map_err(|e| chain(&e))?;
        // What a run directory records must read back as the same config.
        let written = config.to_toml_string().map_err(|e| chain(&e))?;
        let again = Config::from_toml_str(&written, Path::new("written.toml"))
            .unwrap_or_else(|e| panic!("the written config does not parse: {}", chain(&e)));
        assert_eq!(again, config, "the written config reads back differently");
    } else {
        DatasetConfig::from_toml_str(text, Path::new("dataset.toml")).map_err(|e| chain(&e))?;
    }
    Ok(())
}

/// A small valid checkpoint, saved by `checkpoint::save` into a temporary
/// folder: the folder and its three files' bytes.
struct Reference {
    dir: PathBuf,
    meta: Vec<u8>,
    weights: Vec<u8>,
    optimizer: Vec<u8>,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let folder = std::env::temp_dir().join(format!("stptf-fuzz-{}", std::process::id()));
        let dir = folder.join("checkpoint");
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).expect("a temporary folder for the reference");
        checkpoint::save(&dir, &reference_checkpoint()).expect("saving the reference checkpoint");
        let read = |name: &str| std::fs::read(dir.join(name)).expect("reading the reference");
        let reference = Reference {
            meta: read(META_FILE),
            weights: read(WEIGHTS_FILE),
            optimizer: read(OPTIMIZER_FILE),
            dir: PathBuf::from("checkpoint"),
        };
        let _ = std::fs::remove_dir_all(&folder);
        reference
    })
}

/// The files of the reference checkpoint (checkpoint.json, weights,
/// optimizer): the seeds of the checkpoint target.
pub fn reference_files() -> [(&'static str, Vec<u8>); 3] {
    let r = reference();
    [
        (META_FILE, r.meta.clone()),
        (WEIGHTS_FILE, r.weights.clone()),
        (OPTIMIZER_FILE, r.optimizer.clone()),
    ]
}

fn reference_checkpoint() -> Checkpoint {
    let tensor = |name: &str, shape: Vec<usize>, offset: f32| {
        let len = shape.iter().product::<usize>();
        let data = (0..len).map(|i| i as f32 * 0.25 - offset).collect();
        HostTensor::new(name, shape, data).expect("a consistent tensor")
    };
    let weights = vec![
        tensor("fusion.alpha", vec![2], 0.0),
        tensor("static.gcn1.bias", vec![3], 0.5),
        tensor("static.gcn1.weight", vec![2, 3], 1.0),
    ];
    let moments = |offset: f32| {
        weights
            .iter()
            .map(|t| tensor(&t.name, t.shape.clone(), offset))
            .collect()
    };
    let data = DataPrint {
        regions: 3,
        classes: vec!["a".into(), "b".into()],
        scans: (0..2)
            .map(|i| ScanPrint {
                id: format!("s{i}"),
                regions: 3,
                length: 10,
                label: i,
                values: format!("fnv1a64:{i:016x}"),
            })
            .collect(),
    };
    Checkpoint {
        meta: CheckpointMeta::new("pretrain", 4, 1, &data, &Config::default()),
        optimizer: Some(OptimizerState {
            step: 4,
            m: moments(0.1),
            v: moments(-1.0),
        }),
        weights,
    }
}

/// The checkpoint loader. First byte, modulo 3: 0 the bytes are
/// `checkpoint.json` (loaded with the reference's other files if it parses),
/// 1 `weights.safetensors`, 2 `optimizer.safetensors` (with the reference's
/// other files).
pub fn checkpoint(data: &[u8]) -> Outcome {
    let (selector, bytes) = split(data);
    let r = reference();
    let meta_bytes = if selector % 3 == 0 { bytes } else { &r.meta };
    let meta = checkpoint::parse_meta(&r.dir.join(META_FILE), meta_bytes).map_err(|e| chain(&e))?;
    let (weights, optimizer) = match selector % 3 {
        1 => (bytes, &r.optimizer[..]),
        2 => (&r.weights[..], bytes),
        _ => (&r.weights[..], &r.optimizer[..]),
    };
    let loaded =
        checkpoint::from_parts(&r.dir, meta, weights, Some(optimizer)).map_err(|e| chain(&e))?;
    let all = loaded
        .weights
        .iter()
        .chain(loaded.optimizer.iter().flat_map(|o| o.m.iter().chain(&o.v)));
    for t in all {
        assert_eq!(
            t.shape.iter().product::<usize>(),
            t.data.len(),
            "{}",
            t.name
        );
        assert!(t.data.iter().all(|v| v.is_finite()), "{}", t.name);
    }
    Ok(())
}
