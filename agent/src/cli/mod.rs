//! The command line: flags turned into a checked configuration, and the
//! commands that are not the agent itself (`inspect`, `leaks`).

pub mod config;
pub mod inspect;
pub mod leaks;
mod probes;
