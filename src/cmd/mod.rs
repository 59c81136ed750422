//! One module per subcommand: its clap arguments and its `run`.
pub mod baseline;
pub mod bench;
pub mod info;
pub mod inspect;
pub mod synth;
pub mod train;
