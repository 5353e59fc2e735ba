//! `vmm snapshot ...`: create and load go to a running vmm's API (Firecracker's
//! `PUT /snapshot/create` and `/snapshot/load`); inspect reads a state file and rebase lays a
//! Diff memory file over its base, both locally. Part of the binary, not of the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use crate::{ClientArgs, EXIT_VMM_ERROR, client};
use vmm::api::snapshot::{
    MemBackend, MemBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, VsockOverride,
};

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Snapshot a paused guest (PUT /snapshot/create).
    Create(CreateArgs),
    /// Load a snapshot into a vmm that has configured nothing (PUT /snapshot/load).
    Load(LoadArgs),
    /// Show what a snapshot state file holds: format, sections, vCPUs, memory, ID registers.
    Inspect(InspectArgs),
    /// Lay a Diff memory file over its base, in place, so the base holds the later memory.
    Rebase(RebaseArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Kind {
    /// All of guest memory.
    Full,
    /// The pages dirtied since the previous snapshot (needs track_dirty_pages).
    Diff,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Where the VM state goes.
    #[arg(long, value_name = "PATH")]
    snapshot_path: PathBuf,
    /// Where guest memory goes.
    #[arg(long, value_name = "PATH")]
    mem_file_path: PathBuf,
    /// Full or Diff.
    #[arg(long = "type", value_enum, default_value_t = Kind::Full)]
    kind: Kind,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The VM state file.
    #[arg(long, value_name = "PATH")]
    snapshot_path: PathBuf,
    /// The memory file.
    #[arg(long, value_name = "PATH")]
    mem_file_path: PathBuf,
    /// Resume the guest once loaded.
    #[arg(long)]
    resume: bool,
    /// Log dirty pages, for later Diff snapshots.
    #[arg(long)]
    track_dirty_pages: bool,
    /// Back interface IFACE with TAP instead of the saved tap (repeatable).
    #[arg(long = "network-override", value_name = "IFACE=TAP")]
    network_overrides: Vec<String>,
    /// Bind the vsock device's host socket here instead of the saved path.
    #[arg(long, value_name = "PATH")]
    vsock_override: Option<PathBuf>,
    /// Advance the guest's counters by the wall-clock time since the snapshot.
    #[arg(long)]
    clock_realtime: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The state file.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct RebaseArgs {
    /// The base (Full) memory file, rewritten in place.
    #[arg(long, value_name = "PATH")]
    memory_path: PathBuf,
    /// The Diff memory file to lay over it.
    #[arg(long, value_name = "PATH")]
    diff_path: PathBuf,
}

fn json_body<T: serde::Serialize>(v: &T) -> Option<String> {
    serde_json::to_string(v).ok()
}

fn parse_override(s: &str) -> Result<NetworkOverride, String> {
    let (iface, tap) = s
        .split_once('=')
        .filter(|(i, t)| !i.is_empty() && !t.is_empty())
        .ok_or_else(|| format!("--network-override {s}: expected IFACE=TAP"))?;
    Ok(NetworkOverride {
        iface_id: iface.to_string(),
        host_dev_name: tap.to_string(),
    })
}

/// Runs one `vmm snapshot` subcommand.
pub fn run(cmd: &SnapshotCommand) -> ExitCode {
    match cmd {
        SnapshotCommand::Create(a) => {
            let body = SnapshotCreateParams {
                snapshot_type: match a.kind {
                    Kind::Full => SnapshotType::Full,
                    Kind::Diff => SnapshotType::Diff,
                },
                snapshot_path: a.snapshot_path.display().to_string(),
                mem_file_path: a.mem_file_path.display().to_string(),
            };
            client(
                &a.client,
                "PUT",
                "/snapshot/create",
                json_body(&body),
                "snapshot created",
            )
        }
        SnapshotCommand::Load(a) => {
            let overrides = match a
                .network_overrides
                .iter()
                .map(|s| parse_override(s))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("vmm: {e}");
                    return ExitCode::from(crate::EXIT_USAGE);
                }
            };
            let body = SnapshotLoadParams {
                snapshot_path: a.snapshot_path.display().to_string(),
                mem_backend: Some(MemBackend {
                    backend_type: MemBackendType::File,
                    backend_path: a.mem_file_path.display().to_string(),
                }),
                track_dirty_pages: Some(a.track_dirty_pages),
                resume_vm: a.resume,
                network_overrides: (!overrides.is_empty()).then_some(overrides),
                vsock_override: a.vsock_override.as_ref().map(|p| VsockOverride {
                    uds_path: p.display().to_string(),
                }),
                clock_realtime: a.clock_realtime,
                ..SnapshotLoadParams::default()
            };
            let done = if a.resume {
                "snapshot loaded, guest running"
            } else {
                "snapshot loaded, guest paused"
            };
            client(&a.client, "PUT", "/snapshot/load", json_body(&body), done)
        }
        SnapshotCommand::Inspect(a) => match vmm::persist::inspect::inspect_file(&a.file) {
            Ok(i) => {
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&i).unwrap_or_default());
                } else {
                    print!("{}", i.to_text());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmm: {e}");
                ExitCode::from(EXIT_VMM_ERROR)
            }
        },
        SnapshotCommand::Rebase(a) => match vmm::vm::memory::rebase(&a.memory_path, &a.diff_path) {
            Ok(bytes) => {
                println!(
                    "{}: {} bytes from {} laid over it",
                    a.memory_path.display(),
                    bytes,
                    a.diff_path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmm: {e}");
                ExitCode::from(EXIT_VMM_ERROR)
            }
        },
    }
}
