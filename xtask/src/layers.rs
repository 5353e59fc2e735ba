//! `cargo xtask test`: the project's one test command, in three layers, each ending with a
//! `LAYER: N passed, N failed` line.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::artifacts::{self, Artifacts};
use crate::cache::Cache;
use crate::cross;
use crate::libtest::LibtestCounter;
use crate::qemu::{self, HostSpec, Link, Payload};
use crate::setup::{self, AARCH64_TARGET};
use crate::sh::{self, describe};

pub use crate::libtest::Tally;

fn cargo_ok(args: &[&str]) -> bool {
    let mut c = cargo();
    c.args(args);
    eprintln!("xtask: {}", describe(&c));
    c.status().map(|s| s.success()).unwrap_or(false)
}

fn report(layer: &str, t: Tally) {
    println!("{layer}: {} passed, {} failed", t.passed, t.failed);
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(crate::workspace_root());
    c
}

/// Ends a layer's count and prints why each binary-level failure was counted.
fn finish(layer: &str, counter: LibtestCounter, complete: bool) -> Tally {
    let (t, notes) = counter.finish(complete);
    for n in notes {
        println!("{layer}: FAILED: {n}");
    }
    t
}

/// Layer (a): host unit tests. Built first (unbounded: compiling is not running), then run
/// with `--no-fail-fast`, so every binary runs and counts, each binary under coreutils'
/// `timeout` as cargo's runner (`binary_limit`), the whole run within `run_limit`.
pub fn unit(run_limit: Duration, binary_limit: Duration) -> Result<Tally> {
    if !cargo_ok(&["test", "--workspace", "--no-run"]) {
        println!("unit: FAILED: the tests did not build");
        let t = Tally {
            passed: 0,
            failed: 1,
        };
        report("unit", t);
        return Ok(t);
    }
    let c = unit_command(binary_limit);
    eprintln!("xtask: {}", describe(&c));
    let mut counter = LibtestCounter::default();
    // stderr too: cargo names each binary there, and says there which one exited non-zero.
    let run = sh::run_lines(c, true, run_limit, &mut |l| {
        println!("{l}");
        counter.line(l);
    })?;
    let mut t = finish("unit", counter, !run.timed_out);
    if !run.status.success() && t.failed == 0 {
        println!("unit: FAILED: cargo test ended with {}", run.status);
        t.failed += 1;
    }
    report("unit", t);
    Ok(t)
}

/// The unit layer's test run: every binary, even after one fails, each under coreutils'
/// `timeout` as cargo's runner, killed at `binary_limit`. In the foreground, so an interrupt
/// from the terminal still reaches the tests.
fn unit_command(binary_limit: Duration) -> Command {
    let mut c = cargo();
    c.args(["test", "--workspace", "--no-fail-fast", "--config"])
        .arg(format!(
            "target.'cfg(all())'.runner = ['timeout', '--foreground', '--kill-after=10', '{}']",
            binary_limit.as_secs()
        ));
    c
}

/// Layer (b): the aarch64 cross build and clippy, warnings denied.
pub fn cross_layer() -> Result<Tally> {
    setup::ensure_rust()?;
    let mut t = Tally::default();
    t.check(cargo_ok(&[
        "build",
        "--workspace",
        "--all-targets",
        "--target",
        AARCH64_TARGET,
    ]));
    t.check(cargo_ok(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--target",
        AARCH64_TARGET,
        "--",
        "-D",
        "warnings",
    ]));
    report("cross", t);
    Ok(t)
}

/// Runs each test binary in the emulated host, killed (busybox `timeout`) at
/// `XT_BINARY_TIMEOUT` seconds, between the markers [`LibtestCounter`] reads.
fn in_host_test_script() -> &'static str {
    "for t in /xt/tests/*; do\n\
     \x20 echo \"XT_BINARY_START $(basename \"$t\")\"\n\
     \x20 timeout -s KILL \"$XT_BINARY_TIMEOUT\" \"$t\" --test-threads=1 $XT_FILTER\n\
     \x20 echo \"XT_BINARY_END $(basename \"$t\") $?\"\n\
     done\n"
}

/// Whether this machine runs Arm64 KVM itself (no emulation needed).
pub fn native_kvm() -> bool {
    std::env::consts::ARCH == "aarch64" && std::path::Path::new("/dev/kvm").exists()
}

/// The guest artifacts as the environment tests expect.
pub fn guest_env(art: &Artifacts) -> Vec<(String, String)> {
    vec![
        (
            "GUEST_KERNEL".into(),
            art.guest_kernel.display().to_string(),
        ),
        (
            "GUEST_INITRD".into(),
            art.guest_initrd.display().to_string(),
        ),
        (
            "GUEST_ROOTFS".into(),
            art.guest_rootfs.display().to_string(),
        ),
    ]
}

/// Layer (c): integration tests inside an emulated Arm64 host, or natively on Arm64 KVM.
/// Each test binary is killed at `binary_limit`; the emulated host at `timeout`.
pub fn emulated(timeout: Duration, binary_limit: Duration, filter: Option<&str>) -> Result<Tally> {
    setup::ensure_rust()?;
    let cache = Cache::open()?;
    let art = artifacts::ensure(&cache)?;
    let tests = cross::build_tests()?;
    let mut counter = LibtestCounter::expecting(tests.iter().map(|(n, _)| n.clone()));
    let vmm = cross::build_vmm()?;
    let mut payload = Payload::default();
    let tool_initrd = crate::add_guest_tool(&mut payload, &art)?;
    if native_kvm() {
        for (name, path) in &tests {
            let mut c = Command::new(path);
            c.arg("--test-threads=1")
                .args(filter)
                .envs(guest_env(&art))
                .env("GUEST_INITRD", &tool_initrd);
            counter.line(&format!("XT_BINARY_START {name}"));
            let run = sh::run_lines(c, false, binary_limit, &mut |l| {
                println!("{l}");
                counter.line(l);
            })?;
            // Killed at the limit: no exit code, so the binary reports none.
            let rc = run
                .status
                .code()
                .filter(|_| !run.timed_out)
                .map_or("killed".to_string(), |c| c.to_string());
            counter.line(&format!("XT_BINARY_END {name} {rc}"));
        }
        let t = finish("emulated", counter, true);
        report("emulated", t);
        return Ok(t);
    }
    payload
        .env
        .push(("XT_FILTER".into(), filter.unwrap_or_default().to_string()));
    payload.env.push((
        "XT_BINARY_TIMEOUT".into(),
        binary_limit.as_secs().max(1).to_string(),
    ));
    let vmm_bin = vmm.clone();
    payload.files.push(("usr/local/bin/vmm".into(), vmm, 0o755));
    for (name, path) in &tests {
        payload
            .files
            .push((format!("xt/tests/{name}"), path.clone(), 0o755));
    }
    let spec = HostSpec {
        name: "host".into(),
        cpu: "max".into(),
        cntfrq: None,
        smp: 2,
        mem_mib: 3072,
        icount: false,
        timeout,
        link: None,
        forwards: Vec::new(),
    };
    let mut sink = |l: &str| {
        println!("{l}");
        counter.line(l);
    };
    let host = qemu::run(&spec, &art, &payload, in_host_test_script(), &mut sink);
    let mut t = finish("emulated", counter, true);
    match host {
        Ok(o) if o.status != 0 && t.failed == 0 => {
            println!(
                "emulated: FAILED: the test script ended with status {}",
                o.status
            );
            t.failed += 1;
        }
        Ok(_) => {}
        Err(e) => {
            println!("emulated: FAILED: {e:#}");
            t.failed += 1;
        }
    }
    if filter.is_none() {
        t.check(command_status_passes_through(&art, &spec));
        let pairs = crate::pair_checks::run(&art, &vmm_bin, timeout);
        t.passed += pairs.passed;
        t.failed += pairs.failed;
    }
    report("emulated", t);
    Ok(t)
}

/// `cargo xtask host` reports the command's own output and exit status.
fn command_status_passes_through(art: &Artifacts, spec: &HostSpec) -> bool {
    let mut seen = false;
    let mut sink = |l: &str| seen |= l == "output of a failing command";
    let script = "echo 'output of a failing command'; exit 7\n";
    let ok = match qemu::run(spec, art, &Payload::default(), script, &mut sink) {
        Ok(o) => o.status == 7 && seen,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            false
        }
    };
    println!(
        "failing command passes its status and output through: {}",
        if ok { "ok" } else { "FAILED" }
    );
    ok
}

/// Specs for two hosts joined by a loopback UDP link.
#[allow(clippy::too_many_arguments)]
pub fn pair_specs(
    a: (&str, Option<u64>),
    b: (&str, Option<u64>),
    smp: u32,
    mem_mib: u32,
    icount: bool,
    timeout: Duration,
    port_a: u16,
    port_b: u16,
) -> (HostSpec, HostSpec) {
    let mk = |name: &str,
              (cpu, cntfrq): (&str, Option<u64>),
              local,
              remote,
              me: &str,
              peer: &str,
              mac: &str| HostSpec {
        name: name.into(),
        cpu: cpu.into(),
        cntfrq,
        smp,
        mem_mib,
        icount,
        timeout,
        forwards: Vec::new(),
        link: Some(Link {
            local_port: local,
            remote_port: remote,
            mac: mac.into(),
            self_addr: me.into(),
            peer_addr: peer.into(),
        }),
    };
    (
        mk(
            "a",
            a,
            port_a,
            port_b,
            PAIR_ADDRS[0],
            PAIR_ADDRS[1],
            "52:54:00:76:6d:0a",
        ),
        mk(
            "b",
            b,
            port_b,
            port_a,
            PAIR_ADDRS[1],
            PAIR_ADDRS[0],
            "52:54:00:76:6d:0b",
        ),
    )
}

/// Addresses of the two hosts on their private virtual link (it exists only between the two
/// QEMU processes).
pub const PAIR_ADDRS: [&str; 2] = ["10.99.0.1", "10.99.0.2"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_runs_and_under_a_time_limit() {
        let script = in_host_test_script();
        assert!(
            script.contains("timeout -s KILL \"$XT_BINARY_TIMEOUT\" \"$t\""),
            "{script}"
        );
        let unit = describe(&unit_command(Duration::from_secs(600)));
        assert!(
            unit.ends_with(" test --workspace --no-fail-fast --config target.'cfg(all())'.runner = ['timeout', '--foreground', '--kill-after=10', '600']"),
            "{unit}"
        );
    }
}
