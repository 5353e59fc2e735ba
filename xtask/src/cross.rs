//! Cross builds for aarch64: the `vmm` binary and the integration-test binaries that run
//! inside an emulated host.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::setup::AARCH64_TARGET;
use crate::sh::describe;

/// The target to build for: the native one on aarch64, else the static musl one.
fn target() -> &'static str {
    AARCH64_TARGET
}

/// Runs cargo with JSON messages and returns the executables it produced, as
/// (target name, path, is a test).
fn cargo_executables(args: &[&str]) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut c =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args)
        .args([
            "--target",
            target(),
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(crate::workspace_root())
        .stdout(Stdio::piped());
    let out = c
        .output()
        .with_context(|| format!("cannot run `{}`", describe(&c)))?;
    if !out.status.success() {
        bail!("`{}` failed", describe(&c));
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let Some(exe) = msg["executable"].as_str() {
            let name = msg["target"]["name"]
                .as_str()
                .unwrap_or("unknown")
                .to_string();
            let test = msg["profile"]["test"].as_bool().unwrap_or(false);
            exes.push((name, PathBuf::from(exe), test));
        }
    }
    Ok(exes)
}

/// Builds the aarch64 `vmm` binary.
pub fn build_vmm() -> Result<PathBuf> {
    eprintln!("xtask: building vmm for {}", target());
    cargo_executables(&["build", "--package", "vmm", "--bin", "vmm"])?
        .into_iter()
        .find(|(n, _, test)| n == "vmm" && !test)
        .map(|(_, p, _)| p)
        .context("cargo built no vmm binary")
}

/// Builds the aarch64 integration-test binaries, as (name, path).
pub fn build_tests() -> Result<Vec<(String, PathBuf)>> {
    eprintln!("xtask: building the integration tests for {}", target());
    let exes = cargo_executables(&["test", "--package", "vmm-tests", "--no-run"])?;
    let tests: Vec<(String, PathBuf)> = exes
        .into_iter()
        .filter(|(_, _, t)| *t)
        .map(|(n, p, _)| (n, p))
        .collect();
    if tests.is_empty() {
        bail!("cargo built no integration-test binary");
    }
    Ok(tests)
}

/// Builds a helper binary of the vmm-tests package: `api-load` (the benchmark's API client)
/// or `vmm-guest-tool` (what the test guest needs beyond busybox).
pub fn build_test_bin(name: &str) -> Result<PathBuf> {
    cargo_executables(&["build", "--package", "vmm-tests", "--bin", name])?
        .into_iter()
        .find(|(n, _, test)| n == name && !test)
        .map(|(_, p, _)| p)
        .with_context(|| format!("cargo built no {name} binary"))
}

/// Builds the aarch64 `vmm` binary optimized, as users run it (for benchmarks).
pub fn build_vmm_release() -> Result<PathBuf> {
    eprintln!("xtask: building vmm --release for {}", target());
    cargo_executables(&["build", "--release", "--package", "vmm", "--bin", "vmm"])?
        .into_iter()
        .find(|(n, _, test)| n == "vmm" && !test)
        .map(|(_, p, _)| p)
        .context("cargo built no release vmm binary")
}
