//! One module per subcommand: its clap arguments and its `run`; `common`
//! holds what the training subcommands share. The protocol itself lives in
//! the library (`stptf::train::protocol`).
pub mod baseline;
pub mod bench;
pub mod common;
pub mod evaluate;
pub mod explain;
pub mod finetune;
pub mod info;
pub mod inspect;
pub mod predict;
pub mod pretrain;
pub mod profile;
pub mod synth;
