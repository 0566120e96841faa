//! The demo: `tests/src/bin/demo.rs` builds a branch router in four throwaway network
//! namespaces (the harness the end-to-end tests use), runs the agent on it, sends traffic and
//! shows where it went. It needs root and touches no host interface.

use crate::{cargo, run_command};

pub fn run() -> anyhow::Result<()> {
    run_command(cargo().args(["build", "--quiet", "--package", "classifier-user", "--bins"]))?;
    run_command(cargo().args(["run", "--quiet", "--package", "tests", "--bin", "demo"]))
}
