//! `cargo xtask test`: the project's one test command, in three layers, each ending with a
//! `LAYER: N passed, N failed` line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::artifacts::{self, Artifacts};
use crate::cache::Cache;
use crate::cross;
use crate::qemu::{self, HostSpec, Link, Payload};
use crate::setup::{self, AARCH64_TARGET};
use crate::sh::describe;

/// Pass and fail counts of one layer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u32,
    pub failed: u32,
}

impl Tally {
    fn check(&mut self, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// Reads libtest's output: `test result:` lines and per-binary exit markers, which catch
/// binaries that crash before printing a result. Ignored tests count as failures: a skip is
/// never a pass here.
#[derive(Debug, Default)]
pub struct LibtestCounter {
    pub tally: Tally,
    results_in_binary: u32,
}

impl LibtestCounter {
    /// Feeds one output line.
    pub fn line(&mut self, l: &str) {
        if let Some(rest) = l.trim().strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)
                            .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u32>().ok())
                    })
                    .unwrap_or(0)
            };
            self.tally.passed += num(" passed");
            self.tally.failed += num(" failed") + num(" ignored");
            if rest.starts_with("FAILED") && num(" failed") == 0 {
                self.tally.failed += 1;
            }
            self.results_in_binary += 1;
        } else if let Some(rest) = l.strip_prefix("XT_BINARY_END ") {
            let rc = rest
                .rsplit(' ')
                .next()
                .and_then(|r| r.parse::<i32>().ok())
                .unwrap_or(-1);
            if rc != 0 && self.results_in_binary == 0 {
                self.tally.failed += 1;
            }
            self.results_in_binary = 0;
        }
    }
}

fn report(layer: &str, t: Tally) {
    println!("{layer}: {} passed, {} failed", t.passed, t.failed);
}

/// Runs cargo, echoing its stdout and counting libtest results.
fn cargo_counted(args: &[&str]) -> Result<(bool, Tally)> {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args)
        .current_dir(crate::workspace_root())
        .stdout(Stdio::piped());
    let mut child = c
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(&c)))?;
    let mut counter = LibtestCounter::default();
    for line in BufReader::new(child.stdout.take().context("no stdout")?).lines() {
        let line = line?;
        println!("{line}");
        counter.line(&line);
    }
    let ok = child.wait()?.success();
    Ok((ok, counter.tally))
}

fn cargo_ok(args: &[&str]) -> bool {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args).current_dir(crate::workspace_root());
    eprintln!("xtask: {}", describe(&c));
    c.status().map(|s| s.success()).unwrap_or(false)
}

/// Layer (a): host unit tests.
pub fn unit() -> Result<Tally> {
    let (ok, mut t) = cargo_counted(&["test", "--workspace"])?;
    if !ok && t.failed == 0 {
        t.failed += 1; // the build itself failed
    }
    report("unit", t);
    Ok(t)
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

fn in_host_test_script() -> &'static str {
    "for t in /xt/tests/*; do\n\
     \x20 echo \"XT_BINARY_START $(basename \"$t\")\"\n\
     \x20 \"$t\" --test-threads=1 $XT_FILTER\n\
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
pub fn emulated(timeout: Duration, filter: Option<&str>) -> Result<Tally> {
    setup::ensure_rust()?;
    let cache = Cache::open()?;
    let art = artifacts::ensure(&cache)?;
    let tests = cross::build_tests()?;
    let mut counter = LibtestCounter::default();
    let vmm = cross::build_vmm()?;
    let mut payload = Payload::default();
    let tool_initrd = crate::add_guest_tool(&mut payload, &art)?;
    if native_kvm() {
        for (name, path) in &tests {
            let mut c = Command::new(path);
            c.arg("--test-threads=1")
                .args(filter)
                .envs(guest_env(&art))
                .env("GUEST_INITRD", &tool_initrd)
                .stdout(Stdio::piped());
            let mut child = c.spawn()?;
            for line in BufReader::new(child.stdout.take().context("no stdout")?).lines() {
                let line = line?;
                println!("{line}");
                counter.line(&line);
            }
            let rc = child.wait()?.code().unwrap_or(-1);
            counter.line(&format!("XT_BINARY_END {name} {rc}"));
        }
        report("emulated", counter.tally);
        return Ok(counter.tally);
    }
    payload
        .env
        .push(("XT_FILTER".into(), filter.unwrap_or_default().to_string()));
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
    match qemu::run(&spec, &art, &payload, in_host_test_script(), &mut sink) {
        Ok(o) if o.status != 0 && counter.tally.failed == 0 => counter.tally.failed += 1,
        Ok(_) => {}
        Err(e) => {
            eprintln!("xtask: {e:#}");
            counter.tally.failed += 1;
        }
    }
    let mut t = counter.tally;
    if filter.is_none() {
        t.check(command_status_passes_through(&art, &spec));
        t.check(two_host_link(&art, timeout));
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

/// The two-host form: hosts of different generations and counter frequencies see their own
/// CPU and reach each other over the virtual link.
fn two_host_link(art: &Artifacts, timeout: Duration) -> bool {
    let result = (|| -> Result<bool> {
        let (pa, pb) = qemu::free_udp_ports()?;
        let (a, b) = pair_specs(
            ("neoverse-n1", None),
            ("neoverse-v1", Some(1_000_000_000)),
            1,
            1024,
            false,
            timeout,
            pa,
            pb,
        );
        // Each host checks its own CPU and counter, waits for the link, then they exchange a
        // message over TCP; the listener waits for the sender, so neither powers off early.
        let check = |part: &str, mhz: &str, exchange: &str| {
            format!(
                "set -e\ngrep -q 'CPU part.*: {part}' /proc/cpuinfo\n\
                 dmesg | grep -q 'arch_timer.*running at {mhz}MHz'\n\
                 for i in $(seq 120); do ping -c 1 -W 1 \"$PEER_ADDR\" >/dev/null && break; done\n\
                 ping -c 1 -W 5 \"$PEER_ADDR\" >/dev/null\n{exchange}\n\
                 echo \"$(hostname): cpu {part}, {mhz} MHz, link to $PEER_ADDR ok\"\n"
            )
        };
        let listen = "got=$(timeout 300 socat -u TCP-LISTEN:7000,reuseaddr -)\n[ \"$got\" = \"hello from b\" ]";
        let send = "for i in $(seq 300); do echo 'hello from b' | socat -u - TCP:$PEER_ADDR:7000 2>/dev/null && break; sleep 1; done\n[ $i -lt 300 ]";
        let (sa, sb) = (
            check("0xd0c", "62.50", listen),
            check("0xd40", "1000.00", send),
        );
        let [ra, rb] = qemu::run_pair(&[a, b], art, &Payload::default(), [&sa, &sb])?;
        Ok(ra?.status == 0 && rb?.status == 0)
    })();
    match result {
        Ok(ok) => {
            println!("two-host link check: {}", if ok { "ok" } else { "FAILED" });
            ok
        }
        Err(e) => {
            eprintln!("xtask: two-host check failed: {e:#}");
            false
        }
    }
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
    fn counts_results_and_crashes() {
        let mut c = LibtestCounter::default();
        for l in [
            "XT_BINARY_START a",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s",
            "XT_BINARY_END a 0",
            "XT_BINARY_START b",
            "test result: FAILED. 1 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out",
            "XT_BINARY_END b 101",
            "XT_BINARY_START c",
            "XT_BINARY_END c 139",
        ] {
            c.line(l);
        }
        assert_eq!(
            c.tally,
            Tally {
                passed: 5,
                failed: 4
            }
        );
    }
}
