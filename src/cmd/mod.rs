//! Subcommand bodies of the `stptf` binary.
pub mod info;
