//! Crash safety of a real training run (the `stptf` binary on a tiny
//! synthetic dataset): `kill -9` at every stage of the checkpoint swap and at
//! random points, and a full disk while saving. After every kill the last
//! checkpoint loads with `finetune --from` and `pretrain --resume`, and the
//! resumed run's directory equals an uninterrupted run's: final weights and
//! AdamW state byte for byte, every metrics row, the summary (but for wall
//! time), the loss plot, and no debris.
//!
//! The stages are reached through `STPTF_FAULT=pause@<stage>#2` (the second
//! checkpoint save, so a previous one exists): the process announces the
//! pause on stderr and the test kills it with SIGKILL there.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stptf::train::checkpoint;

/// Every fault point of `checkpoint::save`, in order.
const STAGES: [&str; 8] = [
    "checkpoint-begin",
    "checkpoint-write-weights",
    "checkpoint-write-optimizer",
    "checkpoint-write-meta",
    "checkpoint-written",
    "checkpoint-staged",
    "checkpoint-linked",
    "checkpoint-switched",
];

/// 16 scans, batch 8: 2 steps per epoch, 3 epochs, a checkpoint per epoch.
const EPOCHS: u64 = 3;
const STEPS_PER_EPOCH: u64 = 2;

fn stptf() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stptf"));
    c.env_remove("STPTF_FAULT");
    c
}

fn ok(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stptf failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

struct Fixture {
    tmp: tempfile::TempDir,
    dataset: String,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("data");
        ok(&stptf()
            .args(["synth", "--out", out.to_str().unwrap()])
            .args(["--scans", "16", "--regions", "6", "--length", "36"])
            .args(["--seed", "1", "--difficulty", "0.1"])
            .output()
            .unwrap());
        let dataset = out.join("dataset.toml").display().to_string();
        Fixture { tmp, dataset }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `stptf pretrain` of the tiny experiment into `out`.
    fn pretrain(&self, out: &Path) -> Command {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs/tiny.toml");
        let mut c = stptf();
        c.arg("pretrain")
            .arg("--config")
            .arg(config)
            .args(["--dataset", &self.dataset, "--quiet"])
            .arg("--out")
            .arg(out)
            .args(["--set", &format!("pretrain.epochs={EPOCHS}")])
            .args(["--set", "pretrain.batch=8"]);
        c
    }

    fn resume(&self, run: &Path) -> Output {
        stptf()
            .args(["pretrain", "--quiet", "--resume"])
            .arg(run)
            .output()
            .unwrap()
    }

    /// The checkpoint loads with `finetune --from` (one short epoch).
    fn finetune_from(&self, run: &Path, out: &Path) -> Output {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs/tiny.toml");
        stptf()
            .arg("finetune")
            .arg("--config")
            .arg(config)
            .args(["--dataset", &self.dataset, "--quiet"])
            .arg("--from")
            .arg(run)
            .arg("--out")
            .arg(out)
            .args(["--set", "finetune.epochs=1"])
            .output()
            .unwrap()
    }
}

/// What must be equal between a resumed run and an uninterrupted one.
#[derive(Debug, PartialEq)]
struct RunView {
    /// Top-level names (the versioned checkpoint folder by kind), sorted.
    names: Vec<String>,
    checkpoint_files: BTreeSet<String>,
    weights: Vec<u8>,
    optimizer: Vec<u8>,
    /// (phase, step, epoch, loss bits, lr bits) per metrics row.
    metrics: Vec<(String, u64, u64, u64, u64)>,
    /// summary.json without the wall-clock fields.
    summary: serde_json::Value,
    plot: String,
}

fn view(run: &Path) -> RunView {
    let mut names: Vec<String> = std::fs::read_dir(run)
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".checkpoint-pretrain.v") {
                ".checkpoint-pretrain.v<k>".to_string()
            } else {
                name
            }
        })
        .collect();
    names.sort();
    let ckpt = run.join("checkpoint-pretrain");
    let checkpoint_files = std::fs::read_dir(&ckpt)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["phase"].as_str().unwrap().to_string(),
                v["step"].as_u64().unwrap(),
                v["epoch"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap().to_bits(),
                v["lr"].as_f64().unwrap().to_bits(),
            )
        })
        .collect();
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    for timing in ["seconds", "scans_per_s"] {
        assert!(summary[timing].as_f64().unwrap() > 0.0, "{timing}");
        summary[timing] = serde_json::Value::Null;
    }
    RunView {
        names,
        checkpoint_files,
        weights: std::fs::read(ckpt.join("weights.safetensors")).unwrap(),
        optimizer: std::fs::read(ckpt.join("optimizer.safetensors")).unwrap(),
        metrics,
        summary,
        plot: std::fs::read_to_string(run.join("loss_pretrain.svg")).unwrap(),
    }
}

/// Spawns `cmd` with stderr piped; the receiver gets each stderr line.
fn spawn(mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// SIGKILL, as `kill -9`.
fn kill_9(child: &mut Child) {
    let _ = child.kill();
    child.wait().unwrap();
}

/// After a kill: the last checkpoint loads with --from and --resume, and the
/// resumed run ends as the uninterrupted one did.
fn recovers(fx: &Fixture, run: &Path, reference: &RunView, what: &str) {
    let ft = run.with_extension("ft");
    let out = fx.finetune_from(run, &ft);
    assert!(
        out.status.success(),
        "{what}: finetune --from failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fx.resume(run);
    assert!(
        out.status.success(),
        "{what}: --resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&view(run), reference, "{what}: the resumed run differs");
}

/// Polls until the run's first checkpoint exists.
fn wait_for_first_checkpoint(run: &Path) -> bool {
    let first = run.join("checkpoint-pretrain").join("checkpoint.json");
    let give_up = Instant::now() + Duration::from_secs(120);
    while !first.exists() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(2));
    }
    first.exists()
}

/// The uninterrupted run, and how long it ran after its first checkpoint
/// (the span the random kills are spread over, whatever the machine).
fn reference(fx: &Fixture) -> (RunView, Duration) {
    let whole = fx.path("whole");
    let (mut child, _lines) = spawn(fx.pretrain(&whole));
    assert!(wait_for_first_checkpoint(&whole));
    let first = Instant::now();
    assert!(child.wait().unwrap().success());
    let rest = first.elapsed();
    let v = view(&whole);
    assert_eq!(v.metrics.len() as u64, EPOCHS * STEPS_PER_EPOCH);
    (v, rest)
}

#[test]
fn kill_9_at_every_stage_of_the_swap_and_at_random_points_loses_nothing() {
    let started = Instant::now();
    let fx = Fixture::new();
    let (reference, rest) = reference(&fx);
    let mut kills = 0;

    for stage in STAGES {
        let run = fx.path(&format!("stage-{stage}"));
        let mut cmd = fx.pretrain(&run);
        cmd.env("STPTF_FAULT", format!("pause@{stage}#2"));
        let (mut child, lines) = spawn(cmd);
        let want = format!("stptf-fault: paused at {stage}");
        let reached = loop {
            match lines.recv_timeout(Duration::from_secs(120)) {
                Ok(line) if line == want => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        kill_9(&mut child);
        assert!(reached, "{stage}: the fault point was never reached");
        kills += 1;
        // Killed during the second save: the first checkpoint, or (from
        // the switch on) the second, is what readers find.
        let step = checkpoint::load_for_phase(&run, "pretrain")
            .unwrap()
            .meta
            .step;
        let expected = if stage == "checkpoint-switched" { 2 } else { 1 };
        assert_eq!(step, expected * STEPS_PER_EPOCH, "{stage}");
        recovers(&fx, &run, &reference, stage);
    }

    // Random points of the run once its first checkpoint exists: inside
    // steps, inside saves, after the last save, while writing the summary.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut mid_run = 0;
    // The reference's remaining run time, shrunk whenever a kill finds the
    // run already finished: the reference may have run slower than these
    // runs do (it shares the machine with this binary's other test, and CI
    // with whatever else runs), and delays past the end test little.
    let mut span = rest;
    for trial in 0..12 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // A point in [0, 1.1) of the time the run is expected to go on.
        let delay = span.mul_f64(((state >> 33) % 1100) as f64 / 1000.0);
        let run = fx.path(&format!("random-{trial}"));
        let (mut child, _lines) = spawn(fx.pretrain(&run));
        assert!(
            wait_for_first_checkpoint(&run),
            "trial {trial}: no first checkpoint"
        );
        std::thread::sleep(delay);
        kill_9(&mut child);
        kills += 1;
        let step = checkpoint::load_for_phase(&run, "pretrain")
            .unwrap()
            .meta
            .step;
        if !run.join("summary.json").exists() {
            mid_run += 1;
        } else {
            span = span.min(delay).mul_f64(0.8);
        }
        eprintln!("random kill {trial} after {delay:?}: checkpoint at step {step}");
        recovers(
            &fx,
            &run,
            &reference,
            &format!("random kill {trial} after {delay:?}"),
        );
    }

    // Killed before the first checkpoint: --resume says so plainly.
    let run = fx.path("early");
    let (mut child, _lines) = spawn(fx.pretrain(&run));
    std::thread::sleep(Duration::from_millis(20));
    kill_9(&mut child);
    if checkpoint::load_for_phase(&run, "pretrain").is_err() {
        let out = fx.resume(&run);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && !stderr.contains("panicked"),
            "{stderr}"
        );
        assert!(
            stderr.contains("cannot resume")
                && (stderr.contains("no checkpoint here") || stderr.contains("does not exist")),
            "{stderr}"
        );
    }
    assert!(kills >= 20);
    // Most random kills must land before the run finished, or they test
    // little (the delays span the reference run's remaining length).
    assert!(
        mid_run >= 5,
        "only {mid_run} of 12 random kills hit a running run"
    );
    eprintln!(
        "{kills} kills ({mid_run} random ones mid-run) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_full_disk_while_saving_keeps_the_previous_checkpoint_and_leaves_no_partial() {
    let fx = Fixture::new();
    let (reference, _) = reference(&fx);
    for (stage, save) in [
        ("checkpoint-write-optimizer", 2),
        ("checkpoint-write-weights", 3),
        ("checkpoint-write-meta", 2),
    ] {
        let run = fx.path(&format!("full-{stage}"));
        let out = fx
            .pretrain(&run)
            .env("STPTF_FAULT", format!("enospc@{stage}#{save}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && !stderr.contains("panicked"),
            "{stderr}"
        );
        let file = stage.trim_start_matches("checkpoint-write-");
        let file = if file == "meta" {
            "checkpoint.json".to_string()
        } else {
            format!("{file}.safetensors")
        };
        assert!(
            stderr.contains(&format!(
                "{file}: cannot write: No space left on device (os error 28)"
            )),
            "{stage}: {stderr}"
        );
        // The previous checkpoint is where readers look, whole.
        let ckpt = checkpoint::load_for_phase(&run, "pretrain").unwrap();
        assert_eq!(ckpt.meta.step, (save - 1) * STEPS_PER_EPOCH, "{stage}");
        // No partial folder, no second version, no temporary link.
        let debris: Vec<String> = std::fs::read_dir(&run)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert_eq!(debris.len(), 1, "{stage}: {debris:?}");
        assert!(
            debris[0].starts_with(".checkpoint-pretrain.v"),
            "{debris:?}"
        );
        // Space again: the run resumes and ends as if nothing happened.
        let out = fx.resume(&run);
        ok(&out);
        assert_eq!(view(&run), reference, "{stage}");
    }
}
