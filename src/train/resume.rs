//! Whether a run may be resumed from its checkpoint: the config and the data
//! must be the ones it started with, or the resumed run would silently be a
//! different experiment.
//!
//! Every config key must be equal, run-length keys (`*.epochs`) included:
//! the learning-rate schedule spans the configured epochs, so a run resumed
//! with other epochs would equal no uninterrupted run. The one exception is
//! `data.dataset`, a path: the data is compared by content instead (the
//! checkpoint's `DataPrint`: scan ids, shapes, labels, a hash of the values),
//! so a dataset moved elsewhere resumes, and changed scans are named.

use std::collections::BTreeMap;

use thiserror::Error;

use super::checkpoint::{Checkpoint, DataPrint};
use super::rundir::RunDir;
use crate::config::{Config, ConfigError};
use crate::data::Dataset;

#[derive(Debug, Error)]
pub enum ResumeError {
    #[error(
        "cannot resume {run}: the config differs from the one the run started with ({}); \
         a resumed run must use its own config (RUN/config.toml), so drop these --set/--config \
         changes or start a new run",
        differences.join("; ")
    )]
    Config {
        run: String,
        differences: Vec<String>,
    },
    #[error(
        "cannot resume {run}: the data differs from what the run trained on ({}); \
         resume with the same dataset, or start a new run",
        differences.join("; ")
    )]
    Data {
        run: String,
        differences: Vec<String>,
    },
}

/// Keys compared by other means (see the module notes).
const NOT_COMPARED: [&str; 1] = ["data.dataset"];

/// `config key K: checkpoint A, now B` for every key whose value differs.
pub fn config_differences(checkpoint: &Config, now: &Config) -> Vec<String> {
    let (then, now) = (flatten(checkpoint), flatten(now));
    let keys: std::collections::BTreeSet<&String> = then.keys().chain(now.keys()).collect();
    keys.into_iter()
        .filter(|k| !NOT_COMPARED.contains(&k.as_str()))
        .filter_map(|k| {
            let (a, b) = (then.get(k), now.get(k));
            (a != b).then(|| {
                let show = |v: Option<&serde_json::Value>| {
                    v.map_or_else(|| "(not set)".to_string(), |v| v.to_string())
                };
                format!("config key {k}: checkpoint {}, now {}", show(a), show(b))
            })
        })
        .collect()
}

/// Dotted key → value of every leaf of the config.
fn flatten(config: &Config) -> BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, v: serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf);
            }
        }
    }
    let mut out = BTreeMap::new();
    // A config always serializes (plain structs, no maps).
    if let Ok(value) = serde_json::to_value(config) {
        walk("", value, &mut out);
    }
    out
}

/// The config a run started with: its `config.toml` (which the user may
/// have edited; `check` then names the edit), or the checkpoint's own if
/// that file is gone.
pub fn recorded_config(run: &RunDir, checkpoint: &Checkpoint) -> Result<Config, ConfigError> {
    let recorded = run.file("config.toml");
    if recorded.is_file() {
        Config::from_file(&recorded)
    } else {
        Ok(checkpoint.meta.config.clone())
    }
}

/// Refuses to resume `checkpoint` (of the run in `run`) with the config
/// `now` on `dataset` if either differs from what the run started with.
pub fn check(
    run: &std::path::Path,
    checkpoint: &Checkpoint,
    now: &Config,
    dataset: &Dataset,
) -> Result<(), ResumeError> {
    let run = run.display().to_string();
    let differences = config_differences(&checkpoint.meta.config, now);
    if !differences.is_empty() {
        return Err(ResumeError::Config { run, differences });
    }
    let differences = checkpoint.meta.data.differences(&DataPrint::of(dataset));
    if !differences.is_empty() {
        return Err(ResumeError::Data { run, differences });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_key_and_both_values() {
        let a = Config::default();
        assert!(config_differences(&a, &a).is_empty());
        let mut b = a.clone();
        b.model.width = a.model.width / 2;
        b.pretrain.epochs += 1;
        b.data.dataset = Some("moved/dataset.toml".into());
        assert_eq!(
            config_differences(&a, &b),
            vec![
                format!(
                    "config key model.width: checkpoint {}, now {}",
                    a.model.width, b.model.width
                ),
                format!(
                    "config key pretrain.epochs: checkpoint {}, now {}",
                    a.pretrain.epochs, b.pretrain.epochs
                ),
            ]
        );
    }
}
