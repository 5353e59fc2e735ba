//! Developer tasks for the vmm workspace. See docs/testing.md.
//!
//! - `cargo xtask test`: the one test command (unit, cross, emulated layers).
//! - `cargo xtask host`: one emulated Arm64 KVM host running a command.
//! - `cargo xtask pair`: two linked emulated hosts of different CPU generations.
//!   With `--checks`, the emulated layer's checks with linked hosts (snapshot and live
//!   migration between hosts, and their refusals).
//! - `cargo xtask artifacts`: build (or verify) the cached test artifacts and print their paths.
//! - `cargo xtask fuzz`: run the libFuzzer targets in fuzz/ on the host.

mod artifacts;
mod bench;
mod cache;
mod cpio;
mod cross;
mod debian;
mod fuzz;
mod fuzz_api;
mod kmod;
mod layers;
mod libtest;
mod pair_checks;
mod qemu;
mod setup;
mod sh;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "Developer tasks for vmm")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Run every test layer: unit (host), cross (aarch64 build + clippy), emulated (KVM).
    Test {
        /// Run only these layers.
        #[arg(long, value_parser = ["unit", "cross", "emulated"])]
        layer: Vec<String>,
        /// Time limit of each emulated host, and of the unit layer's test run, in seconds.
        #[arg(long, default_value_t = 2400)]
        timeout: u64,
        /// Time limit of each test binary (unit and emulated), in seconds; one past it is
        /// killed and counted as a failure, and the other binaries still run.
        #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
        binary_timeout: u64,
        /// Run only the emulated tests whose names contain this (libtest's filter).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Boot one emulated Arm64 KVM host and run COMMAND in it as root.
    Host {
        #[command(flatten)]
        machine: Machine,
        /// CPU model (a CPU generation).
        #[arg(long, default_value = "max", value_parser = qemu::parse_cpu)]
        cpu: String,
        /// Counter frequency in Hz (CNTFRQ), instead of the model's default.
        #[arg(long)]
        cntfrq: Option<u64>,
        /// Forward 127.0.0.1:HERE on this machine to port THERE in the host (10.0.2.15).
        #[arg(long, value_name = "HERE:THERE", value_parser = parse_forward)]
        forward: Vec<(u16, u16)>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Boot two emulated hosts joined by a virtual link and run a command in each.
    ///
    /// Inside each host, SELF_ADDR and PEER_ADDR give the two link addresses.
    Pair {
        #[command(flatten)]
        machine: Machine,
        /// CPU model of host a.
        #[arg(long, default_value = "neoverse-n1", value_parser = qemu::parse_cpu)]
        cpu_a: String,
        /// CPU model of host b.
        #[arg(long, default_value = "neoverse-v1", value_parser = qemu::parse_cpu)]
        cpu_b: String,
        /// Counter frequency of host a, in Hz.
        #[arg(long)]
        cntfrq_a: Option<u64>,
        /// Counter frequency of host b, in Hz.
        #[arg(long)]
        cntfrq_b: Option<u64>,
        /// Shell command for host a.
        #[arg(long = "a", value_name = "COMMAND", required_unless_present = "checks")]
        cmd_a: Option<String>,
        /// Shell command for host b.
        #[arg(long = "b", value_name = "COMMAND", required_unless_present = "checks")]
        cmd_b: Option<String>,
        /// Instead of commands, run the emulated layer's checks with linked hosts (snapshot
        /// and live migration between hosts, and their refusals); the CPU models, frequencies
        /// and sizes are theirs, only --timeout applies.
        #[arg(long, conflicts_with_all = ["cmd_a", "cmd_b"])]
        checks: bool,
    },
    /// Build vmm, boot a guest in one host and live-migrate it to a second one with
    /// `vmm send` (progress shown), where it carries on (its uptime and a file it wrote).
    ///
    /// Two linked emulated Arm64 hosts on x86_64; natively on an Arm64 host with /dev/kvm,
    /// two vmm processes over loopback.
    Demo {
        #[command(flatten)]
        machine: Machine,
    },
    /// Boot, device and snapshot benchmarks inside emulated hosts with -icount, against Debian's
    /// arm64 QEMU (and, for snapshots, Firecracker's figures from the same setup).
    ///
    /// Prints a table, writes target/bench/boot.json, and fails if a target is missed.
    Bench {
        /// Boots per VMM; the median is reported.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        runs: u32,
        /// Time limit in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Run only these phases (comma-separated: boot, blk, net, vsock, snapshot, migrate); only
        /// their targets are judged.
        #[arg(long, value_delimiter = ',', value_parser = ["boot", "blk", "net", "vsock", "snapshot", "migrate"])]
        only: Vec<String>,
    },
    /// Fuzz the API with schemathesis from docs/api/openapi.json against the real server in
    /// an emulated host; fails on any 5xx, schema violation or crash.
    FuzzApi {
        /// Examples per operation.
        #[arg(long, default_value_t = 200)]
        examples: u32,
    },
    /// Run the libFuzzer targets in fuzz/ on the host with cargo-fuzz (installed if missing);
    /// reports each target's executions and any crash input, and fails if one crashed.
    Fuzz {
        /// Only this target (repeatable); all by default.
        #[arg(long = "target", value_name = "NAME",
              value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS.iter().copied()))]
        targets: Vec<String>,
        /// Executions per target (libFuzzer -runs); 20000 when neither this nor --seconds is given.
        #[arg(long, conflicts_with = "seconds")]
        runs: Option<u64>,
        /// Seconds per target (libFuzzer -max_total_time).
        #[arg(long)]
        seconds: Option<u64>,
        /// cargo-fuzz sanitizer; `address` needs -Zsanitizer, enabled through RUSTC_BOOTSTRAP.
        #[arg(long, default_value = "none", value_parser = ["none", "address"])]
        sanitizer: String,
    },
    /// Build (or verify) the cached artifacts and print their paths.
    Artifacts,
}

#[derive(Args, Debug, Clone)]
struct Machine {
    /// Number of CPUs of the emulated host.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    smp: u32,
    /// Memory of the emulated host, in MiB.
    #[arg(long, default_value_t = 3072, value_parser = clap::value_parser!(u32).range(512..=16384))]
    mem: u32,
    /// Count instructions for time (-icount), for repeatable timing.
    #[arg(long)]
    icount: bool,
    /// Time limit in seconds; the host is stopped after it.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("expected HERE:THERE, got '{s}'"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("'{p}' is not a port number"))
    };
    Ok((port(a)?, port(b)?))
}

fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status.clamp(0, 255)).unwrap_or(1))
}

/// The files every emulated host gets: the freshly cross-built vmm, and the guest initramfs
/// with `vmm-guest-tool` as `GUEST_INITRD`.
pub fn host_payload(art: &artifacts::Artifacts) -> Result<qemu::Payload> {
    setup::ensure_rust()?;
    let mut payload = qemu::Payload {
        files: vec![("usr/local/bin/vmm".into(), cross::build_vmm()?, 0o755)],
        ..Default::default()
    };
    add_guest_tool(&mut payload, art)?;
    Ok(payload)
}

/// Adds the guest initramfs with `vmm-guest-tool` and points `GUEST_INITRD` at it; returns it.
pub fn add_guest_tool(payload: &mut qemu::Payload, art: &artifacts::Artifacts) -> Result<PathBuf> {
    let initrd = artifacts::guest_initrd_with_tool(art, &cross::build_test_bin("vmm-guest-tool")?)?;
    payload.files.push((
        "guest/initrd-with-tool.cpio.gz".into(),
        initrd.clone(),
        0o644,
    ));
    payload.env.push((
        "GUEST_INITRD".into(),
        "/guest/initrd-with-tool.cpio.gz".into(),
    ));
    Ok(initrd)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.task {
        Task::Test {
            layer,
            timeout,
            binary_timeout,
            filter,
        } => {
            let want = |l: &str| layer.is_empty() || layer.iter().any(|x| x == l);
            let (timeout, binary_timeout) = (
                Duration::from_secs(timeout),
                Duration::from_secs(binary_timeout),
            );
            let mut lines = Vec::new();
            if want("unit") {
                lines.push(("unit", layers::unit(timeout, binary_timeout)?));
            }
            if want("cross") {
                lines.push(("cross", layers::cross_layer()?));
            }
            if want("emulated") {
                let t = layers::emulated(timeout, binary_timeout, filter.as_deref())?;
                lines.push(("emulated", t));
            }
            // A layer passes only if something passed and nothing failed.
            let failed = lines.iter().any(|(_, t)| !t.ok());
            println!("\n== summary ==");
            let mut total = layers::Tally::default();
            for (name, t) in &lines {
                println!("{name}: {} passed, {} failed", t.passed, t.failed);
                total.passed += t.passed;
                total.failed += t.failed;
            }
            println!("total: {} passed, {} failed", total.passed, total.failed);
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Task::Host {
            machine,
            cpu,
            cntfrq,
            forward,
            command,
        } => {
            let cache = cache::Cache::open()?;
            let art = artifacts::ensure(&cache)?;
            let payload = host_payload(&art)?;
            let spec = qemu::HostSpec {
                name: "vmm-host".into(),
                cpu,
                cntfrq,
                smp: machine.smp,
                mem_mib: machine.mem,
                icount: machine.icount,
                timeout: Duration::from_secs(machine.timeout),
                link: None,
                forwards: forward,
            };
            let script: Vec<String> = command.iter().map(|w| sh::shell_quote(w)).collect();
            let mut sink = |l: &str| println!("{l}");
            let out = qemu::run(&spec, &art, &payload, &(script.join(" ") + "\n"), &mut sink)?;
            Ok(exit_code(out.status))
        }
        Task::Pair {
            machine,
            cpu_a,
            cpu_b,
            cntfrq_a,
            cntfrq_b,
            cmd_a,
            cmd_b,
            checks,
        } => {
            let cache = cache::Cache::open()?;
            let art = artifacts::ensure(&cache)?;
            if checks {
                setup::ensure_rust()?;
                let vmm = cross::build_vmm()?;
                let t = pair_checks::run(&art, &vmm, Duration::from_secs(machine.timeout));
                println!("pair: {} passed, {} failed", t.passed, t.failed);
                return Ok(exit_code(i32::from(t.failed > 0)));
            }
            let (Some(cmd_a), Some(cmd_b)) = (cmd_a, cmd_b) else {
                anyhow::bail!("--a and --b give the two hosts' commands");
            };
            let payload = host_payload(&art)?;
            let (pa, pb) = qemu::free_udp_ports()?;
            let (a, b) = layers::pair_specs(
                (&cpu_a, cntfrq_a),
                (&cpu_b, cntfrq_b),
                machine.smp,
                machine.mem,
                machine.icount,
                Duration::from_secs(machine.timeout),
                pa,
                pb,
            );
            let [ra, rb] =
                qemu::run_pair(&[a, b], &art, &payload, [&(cmd_a + "\n"), &(cmd_b + "\n")])?;
            let (ra, rb) = (ra?, rb?);
            println!("a exited {}, b exited {}", ra.status, rb.status);
            Ok(exit_code(if ra.status != 0 {
                ra.status
            } else {
                rb.status
            }))
        }
        Task::Demo { machine } => {
            let cache = cache::Cache::open()?;
            let art = artifacts::ensure(&cache)?;
            let payload = host_payload(&art)?;
            let source = include_str!("../../resources/demo-source.sh");
            let destination = include_str!("../../resources/demo-destination.sh");
            if layers::native_kvm() {
                // Both ends on this host, over loopback.
                let vmm_dir = payload.files[0]
                    .1
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default();
                let path = format!(
                    "{}:{}",
                    vmm_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                );
                let mut b = std::process::Command::new("bash")
                    .args(["-c", destination])
                    .env("PATH", &path)
                    .envs(layers::guest_env(&art))
                    .spawn()?;
                let a = std::process::Command::new("bash")
                    .args(["-c", source])
                    .env("PATH", &path)
                    .env("PEER_ADDR", "127.0.0.1")
                    .envs(layers::guest_env(&art))
                    .status()?;
                let b = b.wait()?;
                let code = if a.success() { b.code() } else { a.code() };
                return Ok(exit_code(code.unwrap_or(1)));
            }
            // Two emulated hosts of the same CPU model on one link.
            let (pa, pb) = qemu::free_udp_ports()?;
            let (a, b) = layers::pair_specs(
                ("max", None),
                ("max", None),
                machine.smp,
                machine.mem,
                machine.icount,
                Duration::from_secs(machine.timeout),
                pa,
                pb,
            );
            let [ra, rb] = qemu::run_pair(&[a, b], &art, &payload, [source, destination])?;
            let (ra, rb) = (ra?, rb?);
            println!("host a exited {}, host b exited {}", ra.status, rb.status);
            Ok(exit_code(if ra.status != 0 {
                ra.status
            } else {
                rb.status
            }))
        }
        Task::Bench {
            runs,
            timeout,
            only,
        } => bench::run(runs, Duration::from_secs(timeout), &only),
        Task::FuzzApi { examples } => fuzz_api::run_fuzz(examples),
        Task::Fuzz {
            targets,
            runs,
            seconds,
            sanitizer,
        } => {
            let budget = match seconds {
                Some(s) => fuzz::Budget::Seconds(s),
                None => fuzz::Budget::Runs(runs.unwrap_or(20_000)),
            };
            fuzz::run_fuzz(&targets, budget, &sanitizer)
        }
        Task::Artifacts => {
            let cache = cache::Cache::open()?;
            let a = artifacts::ensure(&cache)?;
            println!("host kernel   {}", a.host_kernel.display());
            println!("host initrd   {}", a.host_initrd.display());
            println!("guest kernel  {}", a.guest_kernel.display());
            println!("guest initrd  {}", a.guest_initrd.display());
            println!("guest rootfs  {}", a.guest_rootfs.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
