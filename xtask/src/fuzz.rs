//! `cargo xtask fuzz`: runs the libFuzzer targets in `fuzz/` with cargo-fuzz (installed if
//! missing) on the stable toolchain, and reports each target's executions and any crash.
//!
//! Stable rustc is enough: with `--sanitizer none` cargo-fuzz passes only stable `-C`
//! flags (`-Cpasses=sancov-module` and the `sanitizer-coverage` LLVM options).
//! `RUSTC_BOOTSTRAP=1` is set anyway, for the `-Zsanitizer` that `--sanitizer address` needs.
//!
//! New inputs go to a scratch corpus (`fuzz/target/corpus/<target>`) that persists between
//! runs; the checked-in seeds in `fuzz/corpus/<target>` are only read.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::sh::{describe, run};

/// Every fuzz target, as named in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "block_request",
    "vsock_packet",
    "vsock_connect_line",
    "vsock_tx",
    "rng_queue",
    "net_queue",
    "api_request",
    "config_file",
    "kernel_image",
    "snapshot_file",
    "snapshot_state",
    "migration_stream",
];

/// How long each target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// This many executions (libFuzzer `-runs`).
    Runs(u64),
    /// This many seconds (libFuzzer `-max_total_time`).
    Seconds(u64),
}

/// Seconds one input may run before libFuzzer reports it as a hang (`timeout-*` input,
/// non-zero exit): without it, a hang would only end with the whole budget, unreported.
const INPUT_TIMEOUT_SECS: u32 = 10;

impl Budget {
    fn libfuzzer_arg(self) -> String {
        match self {
            Self::Runs(n) => format!("-runs={n}"),
            Self::Seconds(s) => format!("-max_total_time={s}"),
        }
    }

    /// libFuzzer's arguments for a run: the budget and the per-input time limit.
    fn libfuzzer_args(self) -> [String; 2] {
        [
            self.libfuzzer_arg(),
            format!("-timeout={INPUT_TIMEOUT_SECS}"),
        ]
    }
}

/// What one target's run gave.
#[derive(Debug, Default, PartialEq, Eq)]
struct Report {
    /// Executions libFuzzer reported (its `Done N runs` line).
    runs: Option<u64>,
    /// The input that crashed, hung or ran out of memory.
    artifact: Option<String>,
}

/// Reads libFuzzer's output.
fn parse_log(log: &str) -> Report {
    let mut r = Report::default();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("Done ") {
            r.runs = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            r.artifact = Some(path.trim().to_string());
        }
    }
    r
}

/// The part of a failed run's output worth showing: from the panic or libFuzzer's error
/// (with the backtrace and the input), else the end.
fn excerpt(log: &str) -> Vec<&str> {
    const LINES: usize = 45;
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .position(|l| {
            l.contains("panicked at") || l.contains("ERROR: libFuzzer") || l.contains("ALARM:")
        })
        .unwrap_or(lines.len().saturating_sub(LINES));
    lines[start..].iter().take(LINES).copied().collect()
}

fn fuzz_dir() -> PathBuf {
    crate::workspace_root().join("fuzz")
}

/// Installs cargo-fuzz unless `cargo fuzz` already works.
fn ensure_cargo_fuzz() -> Result<()> {
    let works = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!("xtask: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn cargo_fuzz(dir: &Path, sub: &str, sanitizer: &str) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", sub, "--sanitizer", sanitizer]);
    c
}

/// Fuzzes `targets` (all when empty) for `budget` each; fails if any target fails.
pub fn run_fuzz(targets: &[String], budget: Budget, sanitizer: &str) -> Result<ExitCode> {
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    ensure_cargo_fuzz()?;
    let dir = fuzz_dir();
    // One build for all targets, so a compile error is reported as one.
    let mut build = cargo_fuzz(&dir, "build", sanitizer);
    if let [one] = targets.as_slice() {
        build.arg(one);
    }
    run(&mut build)?;
    let logs = dir.join("target/fuzz-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut results = Vec::new();
    for t in &targets {
        let scratch = dir.join("target/corpus").join(t);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        let log_path = logs.join(format!("{t}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut c = cargo_fuzz(&dir, "run", sanitizer);
        c.arg(t)
            .arg(&scratch)
            .arg(dir.join("corpus").join(t))
            .arg("--")
            .args(budget.libfuzzer_args())
            .stdout(log.try_clone()?)
            .stderr(log);
        println!("== {t}: {}", describe(&c));
        let start = Instant::now();
        let status = c
            .status()
            .with_context(|| format!("cannot start `{}`", describe(&c)))?;
        let secs = start.elapsed().as_secs_f64();
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let report = parse_log(&text);
        let ok = status.success() && report.artifact.is_none() && report.runs.is_some();
        let runs = report
            .runs
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        if ok {
            println!("{t}: ok, {runs} runs in {secs:.0} s");
        } else {
            println!(
                "{t}: FAILED ({status}) after {secs:.0} s; log {}",
                log_path.display()
            );
            for l in excerpt(&text) {
                println!("  | {l}");
            }
            if let Some(a) = &report.artifact {
                println!(
                    "{t}: crash input {a}\n  reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer {sanitizer} {t} {a})"
                );
            }
        }
        results.push((t.to_string(), ok, runs, report.artifact));
    }
    println!("\n== fuzz summary ==");
    for (t, ok, runs, artifact) in &results {
        let verdict = if *ok { "ok" } else { "FAILED" };
        match artifact {
            Some(a) => println!("{t}: {verdict}, {runs} runs, crash input {a}"),
            None => println!("{t}: {verdict}, {runs} runs"),
        }
    }
    let failed = results.iter().filter(|r| !r.1).count();
    if failed > 0 {
        bail!("{failed} of {} fuzz targets failed", results.len());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_list_matches_fuzz_cargo_toml() {
        let toml = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        let mut bins: Vec<&str> = toml
            .split("[[bin]]")
            .skip(1)
            .filter_map(|b| b.lines().find_map(|l| l.trim().strip_prefix("name = ")))
            .map(|n| n.trim_matches('"'))
            .collect();
        let mut want = TARGETS.to_vec();
        bins.sort_unstable();
        want.sort_unstable();
        assert_eq!(bins, want);
        for t in TARGETS {
            assert!(
                fuzz_dir()
                    .join("fuzz_targets")
                    .join(format!("{t}.rs"))
                    .is_file()
            );
            let seeds = fuzz_dir().join("corpus").join(t);
            assert!(
                std::fs::read_dir(&seeds).is_ok_and(|mut d| d.next().is_some()),
                "{} has seeds",
                seeds.display()
            );
        }
    }

    #[test]
    fn libfuzzer_output_is_read() {
        let done = "#20000\tDONE   cov: 12 ft: 14 corp: 2/45b\nDone 20000 runs in 0 second(s)\n";
        assert_eq!(
            parse_log(done),
            Report {
                runs: Some(20000),
                artifact: None
            }
        );
        let crash = "thread '<unnamed>' panicked at devices/src/x.rs:1:1:\n\
            ==1== ERROR: libFuzzer: deadly signal\n\
            artifact_prefix='/w/fuzz/artifacts/vsock_tx/'; Test unit written to /w/fuzz/artifacts/vsock_tx/crash-da39a3ee\n\
            Base64: AAAA\n";
        assert_eq!(
            parse_log(crash),
            Report {
                runs: None,
                artifact: Some("/w/fuzz/artifacts/vsock_tx/crash-da39a3ee".into())
            }
        );
    }

    #[test]
    fn the_excerpt_starts_at_the_panic() {
        let mut log: Vec<String> = (0..100).map(|i| format!("#{i} NEW")).collect();
        log.push("thread '<unnamed>' panicked at devices/src/x.rs:1:1:".into());
        log.push("boom".into());
        let log = log.join("\n");
        assert_eq!(excerpt(&log)[1], "boom");
        let quiet: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let quiet = quiet.join("\n");
        let got = excerpt(&quiet);
        assert_eq!((got.len(), got[0]), (45, "line 55"));
    }

    #[test]
    fn budgets_become_libfuzzer_flags() {
        assert_eq!(Budget::Runs(5).libfuzzer_arg(), "-runs=5");
        assert_eq!(Budget::Seconds(60).libfuzzer_arg(), "-max_total_time=60");
        // Every run bounds each input, so a hang is reported as a failure.
        assert_eq!(Budget::Runs(5).libfuzzer_args()[1], "-timeout=10");
        assert_eq!(Budget::Seconds(60).libfuzzer_args()[1], "-timeout=10");
    }

    #[test]
    fn a_hang_is_reported_with_its_input() {
        let hang = "#1024\tpulse  cov: 12 ft: 14 corp: 2/45b\n\
            ALARM: working on the last Unit for 10 seconds\n\
            ==7== ERROR: libFuzzer: timeout after 10 seconds\n\
            artifact_prefix='/w/fuzz/artifacts/net_queue/'; Test unit written to /w/fuzz/artifacts/net_queue/timeout-5ba93c9d\n";
        assert_eq!(
            parse_log(hang),
            Report {
                runs: None,
                artifact: Some("/w/fuzz/artifacts/net_queue/timeout-5ba93c9d".into())
            }
        );
        assert!(excerpt(hang)[0].starts_with("ALARM:"));
    }
}
