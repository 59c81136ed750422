//! The `stptf` command line. Each subcommand's body lives in `src/cmd/<name>.rs`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "stptf",
    version,
    about = "STPTF: spatio-temporal pre-trained foundation model for fMRI decoding, on any GPU via wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Functional-connectivity + logistic-regression baseline with stratified subject-level CV.
    Baseline(cmd::baseline::BaselineArgs),
    /// Time every kernel at the model's shapes (GFLOP/s, GB/s; median after warm-up).
    Bench(cmd::bench::BenchArgs),
    /// Self-supervised pretraining (STIGA views, PSTA encoder, FGCO loss). With no
    /// arguments: a few minutes on a synthetic dataset.
    Pretrain(cmd::pretrain::PretrainArgs),
    /// Fine-tune a linear head (or the whole network) on labeled scans.
    Finetune(cmd::finetune::FinetuneArgs),
    /// The paper's protocol: k-fold at subject level; per fold pretrain, fine-tune, score.
    Evaluate(cmd::evaluate::EvaluateArgs),
    /// Label scans with a fine-tuned model (CSV: id, predicted class, probabilities).
    Predict(cmd::predict::PredictArgs),
    /// One training step broken down by model stage and kernel family (GPU
    /// timestamps per dispatch), with dispatch, bind-group, submit and memory counts.
    Profile(cmd::profile::ProfileArgs),
    /// Which regions and which segments of time decided (occlusion importance per class).
    Explain(cmd::explain::ExplainArgs),
    /// Show the GPU adapter, its limits and optional features.
    Info,
    /// Load a dataset and print what is in it (scans, regions, lengths, classes, sites, exclusions).
    Inspect(cmd::inspect::InspectArgs),
    /// Write a synthetic dataset with planted spatial and temporal class differences.
    Synth(cmd::synth::SynthArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let command = Cli::parse().command;
    if let Some(ranks) = stptf::dist::launched_size().filter(|&p| p > 1) {
        if !matches!(command, Command::Pretrain(_)) {
            eprintln!(
                "error: an MPI launcher started this process as one of {ranks} ranks; only \
                 `stptf pretrain` runs data-parallel (spread evaluation folds as separate jobs \
                 with `stptf evaluate --fold K`, see assets/slurm/evaluate_array.sh)"
            );
            return ExitCode::FAILURE;
        }
    }
    let outcome = match command {
        Command::Baseline(args) => cmd::baseline::run(&args),
        Command::Bench(args) => cmd::bench::run(&args),
        Command::Pretrain(args) => cmd::pretrain::run(&args),
        Command::Finetune(args) => cmd::finetune::run(&args),
        Command::Evaluate(args) => cmd::evaluate::run(&args),
        Command::Predict(args) => cmd::predict::run(&args),
        Command::Profile(args) => cmd::profile::run(&args),
        Command::Explain(args) => cmd::explain::run(&args),
        Command::Info => cmd::info::run(),
        Command::Inspect(args) => cmd::inspect::run(&args),
        Command::Synth(args) => cmd::synth::run(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole cause chain on one line, without a backtrace: these are
            // input errors meant for the user, not crashes.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
