//! The `vmm` command line: the VMM process (Firecracker's process interface and `vmm run`),
//! and client subcommands that drive a running `vmm` through its API socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use vmm::api::client::Client;
use vmm::api::model::LogLevel;
use vmm::config::{DEFAULT_CMDLINE, ResetPolicy, VmConfig};
use vmm::console::ConsoleConfig;

mod cli_migration;
mod cli_snapshot;

/// Exit status when the guest kernel panicked.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
const EXIT_GUEST_PANIC: u8 = 3;
/// Exit status on a VMM error.
const EXIT_VMM_ERROR: u8 = 1;
/// Exit status on bad arguments or configuration.
const EXIT_USAGE: u8 = 2;

/// A lightweight Arm64 virtual machine monitor on KVM, driven like Firecracker.
///
/// Without a subcommand, vmm is the VMM process: it serves the API on --api-sock, boots from
/// --config-file, or both. `vmm run` boots from command-line options. The other subcommands
/// are clients of a running vmm's API socket.
///
/// Exit status of the VMM process: 0 when the guest powers off (or resets, with the exit
/// policy), 1 on a VMM error, 2 on bad arguments or configuration, 3 when the guest kernel
/// panics, 128+N when stopped by signal N.
#[derive(Parser, Debug)]
#[command(name = "vmm", version = vmm::VERSION, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    process: ProcessArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ProcessArgs {
    /// Serve the HTTP API on this Unix socket (removed on exit).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// The instance id that `GET /` reports.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Boot at once from a Firecracker-style JSON config file (boot-source, machine-config).
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Do not serve the API (needs --config-file).
    #[arg(long, conflicts_with = "api_sock")]
    no_api: bool,
    /// Write the log to this file or FIFO instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_path: Option<PathBuf>,
    /// Log level: Off, Error, Warning, Info, Debug or Trace.
    #[arg(long, default_value = "Info")]
    level: LogLevel,
    /// Write metrics (one JSON line per flush) to this file or FIFO.
    #[arg(long, value_name = "PATH")]
    metrics_path: Option<PathBuf>,
    /// Log the guest's boot time when it writes to the boot-timer device.
    #[arg(long)]
    boot_timer: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a guest from a kernel (and initrd) given on the command line.
    Run(RunArgs),
    /// Show a running vmm's instance: id, state and version (GET /).
    Info(ClientArgs),
    /// Show a running vmm's full configuration (GET /vm/config).
    Config(ClientArgs),
    /// Set the kernel, initrd and command line of a vmm that has not started (PUT /boot-source).
    BootSource(BootSourceArgs),
    /// Set vCPUs and memory of a vmm that has not started (PATCH /machine-config).
    MachineConfig(MachineArgs),
    /// Boot the configured guest (PUT /actions InstanceStart).
    Start(ClientArgs),
    /// Pause every vCPU (PATCH /vm Paused).
    Pause(ClientArgs),
    /// Resume a paused guest (PATCH /vm Resumed).
    Resume(ClientArgs),
    /// Create, load, inspect and rebase snapshots.
    #[command(subcommand)]
    Snapshot(cli_snapshot::SnapshotCommand),
    /// Wait for one incoming live migration, then run the guest (console on stdio).
    Receive(cli_migration::ReceiveArgs),
    /// Live-migrate a running vmm's guest to a destination and follow it to the end.
    Send(cli_migration::SendArgs),
    /// Show or cancel a running vmm's migration.
    #[command(subcommand)]
    Migration(cli_migration::MigrationCommand),
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// The API socket of the vmm to talk to.
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
    /// Print the JSON answer instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct BootSourceArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The kernel: an arm64 Image, raw or gzip-compressed.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// An initrd to load.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, value_name = "ARGS")]
    cmdline: Option<String>,
}

#[derive(Args, Debug)]
struct MachineArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u32>,
}

#[derive(Args, Debug)]
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
    /// A block device, repeatable: id=ID,path=PATH[,root][,ro][,cache=unsafe|writeback][,bw=BYTES_PER_S].
    #[arg(long, value_name = "SPEC", value_parser = vmm::config::parse_drive_arg)]
    drive: Vec<vmm::api::model::Drive>,
    /// Give the guest a virtio entropy device.
    #[arg(long)]
    entropy: bool,
    /// A network interface on a host tap, repeatable: id=ID,tap=TAP[,mac=MAC].
    #[arg(long, value_name = "SPEC", value_parser = vmm::config::parse_net_arg)]
    net: Vec<vmm::api::model::NetworkInterface>,
    /// A vsock device: cid=CID,path=UDS_PATH (hybrid vsock, as Firecracker's).
    #[arg(long, value_name = "SPEC", value_parser = vmm::config::parse_vsock_arg)]
    vsock: Option<vmm::api::model::Vsock>,
    /// Also serve the API on this Unix socket.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnReset {
    /// Exit the VMM.
    Exit,
    /// Boot the guest again.
    Reboot,
}

/// What the VMM process will do.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct Plan {
    id: String,
    /// Boot at once with this configuration.
    boot: Option<VmConfig>,
    /// Defaults for an API-configured VM.
    base: VmConfig,
    api_sock: Option<PathBuf>,
    metrics_path: Option<PathBuf>,
    /// Wait for an incoming migration at once.
    receive: Option<vmm::api::migration::ReceiveParams>,
}

fn plan_run(a: &RunArgs, p: &ProcessArgs) -> anyhow::Result<Plan> {
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
    c.boot_timer = a.boot_timer || p.boot_timer;
    c.drives.clone_from(&a.drive);
    c.entropy = a.entropy.then(vmm::api::model::Entropy::default);
    c.net.clone_from(&a.net);
    c.vsock.clone_from(&a.vsock);
    c.validate()?;
    vmm::config::validate_devices(&c).map_err(anyhow::Error::msg)?;
    Ok(Plan {
        id: p.id.clone(),
        base: c.clone(),
        boot: Some(c),
        api_sock: a.api_sock.clone(),
        metrics_path: None,
        receive: None,
    })
}

fn plan_process(p: &ProcessArgs) -> anyhow::Result<Plan> {
    let mut base = VmConfig::new(PathBuf::new());
    base.boot_timer = p.boot_timer;
    let boot = match &p.config_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
            let mut c = VmConfig::from_firecracker_json(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            c.boot_timer = p.boot_timer;
            Some(c)
        }
        None => None,
    };
    if boot.is_none() && p.api_sock.is_none() {
        anyhow::bail!(
            "nothing to run: give --api-sock PATH, --config-file FILE --no-api, or `vmm run --kernel PATH` (see `vmm --help`)"
        );
    }
    Ok(Plan {
        id: p.id.clone(),
        base: boot.clone().unwrap_or(base),
        boot,
        api_sock: p.api_sock.clone(),
        metrics_path: p.metrics_path.clone(),
        receive: None,
    })
}

fn client(
    args: &ClientArgs,
    method: &str,
    uri: &str,
    body: Option<String>,
    done: &str,
) -> ExitCode {
    let c = Client::new(&args.api_sock);
    match c.request(method, uri, body.as_deref()) {
        Ok((status, json)) if status < 300 => {
            if args.json {
                println!("{}", json.unwrap_or_else(|| serde_json::json!({})));
            } else if let Some(v) = json {
                print_human(&v, "");
            } else {
                println!("{done}");
            }
            ExitCode::SUCCESS
        }
        Ok((status, json)) => {
            let msg = json
                .as_ref()
                .and_then(|j| j["fault_message"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("HTTP {status}"));
            if args.json {
                println!(
                    "{}",
                    json.unwrap_or_else(|| serde_json::json!({"status": status}))
                );
            }
            eprintln!("vmm: {msg}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}

/// Prints JSON as indented `key: value` lines.
fn print_human(v: &serde_json::Value, indent: &str) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match v {
                    serde_json::Value::Object(o) if !o.is_empty() => {
                        println!("{indent}{k}:");
                        print_human(v, &format!("{indent}  "));
                    }
                    serde_json::Value::Null => println!("{indent}{k}: -"),
                    serde_json::Value::String(s) => println!("{indent}{k}: {s}"),
                    other => println!("{indent}{k}: {other}"),
                }
            }
        }
        other => println!("{indent}{other}"),
    }
}

fn main() -> ExitCode {
    let start = std::time::Instant::now();
    let cli = Cli::parse();
    let p = &cli.process;
    let plan = match &cli.command {
        None => plan_process(p),
        Some(Command::Run(a)) => plan_run(a, p),
        Some(Command::Receive(a)) => cli_migration::plan_receive(a, p),
        Some(Command::Send(a)) => return cli_migration::send(a),
        Some(Command::Migration(c)) => return cli_migration::run_command(c),
        Some(Command::Info(a)) => return client(a, "GET", "/", None, ""),
        Some(Command::Snapshot(c)) => return cli_snapshot::run(c),
        Some(Command::Config(a)) => return client(a, "GET", "/vm/config", None, ""),
        Some(Command::Start(a)) => {
            return client(
                a,
                "PUT",
                "/actions",
                Some(r#"{"action_type": "InstanceStart"}"#.into()),
                "started",
            );
        }
        Some(Command::Pause(a)) => {
            return client(
                a,
                "PATCH",
                "/vm",
                Some(r#"{"state": "Paused"}"#.into()),
                "paused",
            );
        }
        Some(Command::Resume(a)) => {
            return client(
                a,
                "PATCH",
                "/vm",
                Some(r#"{"state": "Resumed"}"#.into()),
                "resumed",
            );
        }
        Some(Command::BootSource(a)) => {
            // The API's own model, which leaves out an absent initrd.
            let body = serde_json::to_string(&vmm::api::model::BootSource {
                kernel_image_path: a.kernel.display().to_string(),
                boot_args: Some(
                    a.cmdline
                        .clone()
                        .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
                ),
                initrd_path: a.initrd.as_ref().map(|p| p.display().to_string()),
            })
            .unwrap_or_default();
            return client(
                &a.client,
                "PUT",
                "/boot-source",
                Some(body),
                "boot source set",
            );
        }
        Some(Command::MachineConfig(a)) => {
            let mut body = serde_json::Map::new();
            if let Some(v) = a.vcpus {
                body.insert("vcpu_count".into(), v.into());
            }
            if let Some(m) = a.memory {
                body.insert("mem_size_mib".into(), m.into());
            }
            return client(
                &a.client,
                "PATCH",
                "/machine-config",
                Some(serde_json::Value::Object(body).to_string()),
                "machine configuration set",
            );
        }
    };
    vmm::logger::init(p.level.filter());
    if let Some(path) = &p.log_path {
        if let Err(e) = vmm::logger::configure(path.to_str(), None, None, None, None) {
            eprintln!("vmm: cannot open log file {}: {e}", path.display());
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let plan = match plan {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmm: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    vmm::metrics::METRICS
        .api_server
        .process_startup_time_us
        .set(start.elapsed().as_micros() as u64);
    serve(plan, start)
}

#[cfg(target_arch = "aarch64")]
fn serve(plan: Plan, start: std::time::Instant) -> ExitCode {
    use vmm::api::server;
    use vmm::controller::Controller;
    use vmm::runner::{self, KvmBackend, LoopInputs, Outcome};

    let fail = |msg: String| {
        eprintln!("vmm: {msg}");
        ExitCode::from(EXIT_VMM_ERROR)
    };
    // Before any thread exists, so that every thread inherits the blocked signals.
    let signals = match runner::termination_signals() {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot set up signal handling: {e}")),
    };
    let (tx, rx) = match vmm::events::channel() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot create the event channel: {e}")),
    };
    let backend = KvmBackend::new(tx, start);
    let mut ctl = match &plan.boot {
        Some(c) => Controller::configured(plan.id.clone(), backend, c.clone()),
        None => Controller::new(plan.id.clone(), backend, plan.base.clone()),
    };
    if let Some(m) = &plan.metrics_path {
        if let Err(e) = ctl.set_metrics(&m.display().to_string()) {
            return fail(e);
        }
    }
    let mut _socket = None;
    let api = match &plan.api_sock {
        Some(path) => {
            let listener = match server::bind(path) {
                Ok(l) => l,
                Err(e) => return fail(e.to_string()),
            };
            _socket = Some(server::SocketGuard(path.clone()));
            let (atx, arx) = match server::channel() {
                Ok(c) => c,
                Err(e) => return fail(format!("cannot create the API channel: {e}")),
            };
            if let Err(e) = server::spawn(listener, atx) {
                return fail(format!("cannot start the API thread: {e}"));
            }
            log::info!(
                "API ready on {} after {} us",
                path.display(),
                start.elapsed().as_micros()
            );
            Some(arx)
        }
        None => None,
    };
    let stdin_console = plan.base.console == ConsoleConfig::Stdio;
    let mut term = stdin_console.then(vmm::console::RawTerminal::enter);
    if let Some(r) = &plan.receive {
        let resp = ctl.handle(vmm::api::router::ApiRequest::PutMigrationReceive(r.clone()));
        if resp.status >= 300 {
            if let Some(t) = term.as_mut() {
                t.restore();
            }
            let msg = resp
                .body
                .as_ref()
                .and_then(|b| b["fault_message"].as_str().map(str::to_string))
                .unwrap_or_default();
            return fail(msg);
        }
    }
    if plan.boot.is_some() {
        if let Err(e) = ctl.start() {
            if let Some(t) = term.as_mut() {
                t.restore();
            }
            return fail(e);
        }
    }
    let io = LoopInputs {
        events: &rx,
        api: api.as_ref(),
        signals: &signals,
        stdin_console,
    };
    let result = runner::run(&mut ctl, &io);
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
        Ok(Outcome::VcpuFailed(msg)) => fail(msg),
        Ok(Outcome::Signal(sig)) => {
            eprintln!("vmm: stopped by signal {sig}");
            ExitCode::from(128u8.saturating_add(sig as u8))
        }
        Ok(Outcome::Migrated(to)) => {
            eprintln!("vmm: the guest migrated to {to} and runs there");
            ExitCode::SUCCESS
        }
        Ok(Outcome::MigrationUnconfirmed(msg)) => fail(msg),
        Ok(Outcome::IncomingFailed(msg)) => fail(format!("incoming migration: {msg}")),
        Err(e) => fail(e.to_string()),
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn serve(_plan: Plan, _start: std::time::Instant) -> ExitCode {
    eprintln!("vmm: running guests needs an aarch64 host with KVM");
    ExitCode::from(EXIT_VMM_ERROR)
}
