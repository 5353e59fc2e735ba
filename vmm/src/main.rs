//! The `vmm` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use vmm::config::{DEFAULT_CMDLINE, ResetPolicy, VmConfig};
use vmm::console::ConsoleConfig;

/// Exit status when the guest kernel panicked.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
const EXIT_GUEST_PANIC: u8 = 3;
/// Exit status when the VM could not be built or failed while running.
const EXIT_VMM_ERROR: u8 = 1;

/// A lightweight Arm64 virtual machine monitor on KVM.
///
/// Exit status: 0 when the guest powers off (or resets, with --on-reset exit), 1 on a VMM
/// error, 2 on bad arguments, 3 when the guest kernel panics, 128+N when stopped by signal N.
#[derive(Parser, Debug)]
#[command(name = "vmm", version = vmm::VERSION, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Boot from a Firecracker-style JSON config file (boot-source, machine-config).
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Do not serve the API (the API socket is not available yet, so this is implied).
    #[arg(long)]
    no_api: bool,
    /// Log the guest's boot time when it writes to the boot-timer device.
    #[arg(long)]
    boot_timer: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a guest from a kernel (and initrd) given on the command line.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The kernel: an arm64 Image, raw or gzip-compressed.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// An initrd (initramfs) to load.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, value_name = "ARGS", default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = vmm::config::DEFAULT_VCPUS)]
    vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = vmm::config::DEFAULT_MEM_MIB)]
    memory: u32,
    /// Serial console: stdio, file:PATH or none.
    #[arg(long, default_value = "stdio")]
    console: ConsoleConfig,
    /// What a guest reset does.
    #[arg(long, value_enum, default_value_t = OnReset::Exit)]
    on_reset: OnReset,
    /// Log the guest's boot time when it writes to the boot-timer device.
    #[arg(long)]
    boot_timer: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnReset {
    /// Exit the VMM.
    Exit,
    /// Boot the guest again.
    Reboot,
}

fn config_from(cli: &Cli) -> anyhow::Result<VmConfig> {
    if let Some(Command::Run(a)) = &cli.command {
        let mut c = VmConfig::new(a.kernel.clone());
        c.initrd.clone_from(&a.initrd);
        c.cmdline.clone_from(&a.cmdline);
        c.vcpus = a.vcpus;
        c.mem_mib = a.memory;
        c.console = a.console.clone();
        c.on_reset = match a.on_reset {
            OnReset::Exit => ResetPolicy::Exit,
            OnReset::Reboot => ResetPolicy::Reboot,
        };
        c.boot_timer = a.boot_timer || cli.boot_timer;
        c.validate()?;
        return Ok(c);
    }
    if let Some(path) = &cli.config_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let mut c = VmConfig::from_firecracker_json(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        c.boot_timer = cli.boot_timer;
        return Ok(c);
    }
    anyhow::bail!(
        "nothing to run: give `vmm run --kernel PATH` or `vmm --config-file FILE` (see `vmm --help`)"
    )
}

fn main() -> ExitCode {
    let start = std::time::Instant::now();
    let cli = Cli::parse();
    vmm::logger::init(log::LevelFilter::Info);
    let cfg = match config_from(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmm: {e:#}");
            return ExitCode::from(2);
        }
    };
    run(&cfg, start)
}

#[cfg(target_arch = "aarch64")]
fn run(cfg: &VmConfig, start: std::time::Instant) -> ExitCode {
    use vmm::runner::{self, Outcome};
    let mut term = (cfg.console == ConsoleConfig::Stdio).then(vmm::console::RawTerminal::enter);
    let result = runner::run(cfg, start);
    if let Some(t) = term.as_mut() {
        t.restore();
    }
    match result {
        Ok(Outcome::Shutdown) => ExitCode::SUCCESS,
        Ok(Outcome::Reset) => {
            eprintln!("vmm: the guest reset; exiting (use --on-reset reboot to boot it again)");
            ExitCode::SUCCESS
        }
        Ok(Outcome::GuestPanic(msg)) => {
            eprintln!("vmm: the guest kernel panicked: {msg}");
            ExitCode::from(EXIT_GUEST_PANIC)
        }
        Ok(Outcome::VcpuFailed(msg)) => {
            eprintln!("vmm: {msg}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
        Ok(Outcome::Signal(sig)) => {
            eprintln!("vmm: stopped by signal {sig}");
            ExitCode::from(128u8.saturating_add(sig as u8))
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn run(_cfg: &VmConfig, _start: std::time::Instant) -> ExitCode {
    eprintln!("vmm: running guests needs an aarch64 host with KVM");
    ExitCode::from(EXIT_VMM_ERROR)
}
