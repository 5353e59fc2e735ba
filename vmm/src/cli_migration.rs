//! `vmm receive`, `vmm send` and `vmm migration status|cancel`. `receive` is a VMM process
//! that waits for one incoming guest and runs it with its console on this terminal; `send`
//! starts a migration through a running vmm's API (`PUT /migration/send`) and follows it
//! (`GET /migration`) with a progress bar redrawn in place on a terminal, and otherwise a
//! line with the bar each second or at each change of state, exiting 0
//! only once the destination has confirmed that it runs the guest. Part of the binary.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use crate::{ClientArgs, EXIT_VMM_ERROR, Plan, ProcessArgs, client};
use vmm::api::client::Client;
use vmm::api::migration::{DriveOverride, ReceiveParams, SendParams};
use vmm::api::snapshot::{NetworkOverride, VsockOverride};
use vmm::config::VmConfig;
use vmm::console::ConsoleConfig;

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// Where to wait for the source: tcp:ADDR:PORT.
    #[arg(long, value_name = "tcp:ADDR:PORT")]
    listen: String,
    /// Also serve the API on this Unix socket (GET /migration, then the guest's API).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Back interface ID with this tap instead of the source's, repeatable.
    #[arg(long, value_name = "ID=TAP")]
    net_override: Vec<String>,
    /// Use this vsock socket path instead of the source's.
    #[arg(long, value_name = "UDS_PATH")]
    vsock_override: Option<String>,
    /// Back drive ID with this file instead of the source's path, repeatable.
    #[arg(long, value_name = "ID=PATH")]
    drive_override: Vec<String>,
    /// Serial console: stdio, file:PATH or none.
    #[arg(long, default_value = "stdio")]
    console: ConsoleConfig,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The API socket of the vmm whose guest moves.
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
    /// Where the destination listens: tcp:HOST:PORT.
    #[arg(long, value_name = "tcp:HOST:PORT")]
    to: String,
    /// The longest pause the guest may see, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = vmm::api::migration::DEFAULT_DOWNTIME_MS)]
    downtime_ms: u64,
    /// Page bandwidth cap in MiB/s (0: none).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    max_bandwidth: u64,
    /// Do not throttle the vCPUs of a guest that dirties memory faster than the link.
    #[arg(long)]
    no_auto_converge: bool,
    /// Give up after this many seconds without converging (the guest keeps running).
    #[arg(long, value_name = "S", default_value_t = vmm::api::migration::DEFAULT_TIMEOUT_S)]
    timeout: u64,
    /// Print one JSON status line per update instead of a progress display.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum MigrationCommand {
    /// Show the migration going on, or the last one (GET /migration).
    Status(ClientArgs),
    /// Cancel the outgoing migration; the guest keeps running here (PUT /migration/cancel).
    Cancel(ClientArgs),
}

fn pair(what: &str, s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => anyhow::bail!("--{what} '{s}' is not ID=VALUE"),
    }
}

/// The VMM process of `vmm receive`.
pub fn plan_receive(a: &ReceiveArgs, p: &ProcessArgs) -> anyhow::Result<Plan> {
    let mut base = VmConfig::new(PathBuf::new());
    base.console = a.console.clone();
    base.boot_timer = p.boot_timer;
    let mut net = Vec::new();
    for s in &a.net_override {
        let (iface_id, host_dev_name) = pair("net-override", s)?;
        net.push(NetworkOverride {
            iface_id,
            host_dev_name,
        });
    }
    let mut drives = Vec::new();
    for s in &a.drive_override {
        let (drive_id, path_on_host) = pair("drive-override", s)?;
        drives.push(DriveOverride {
            drive_id,
            path_on_host,
        });
    }
    let receive = ReceiveParams {
        listen: a.listen.clone(),
        network_overrides: net,
        vsock_override: a
            .vsock_override
            .clone()
            .map(|uds_path| VsockOverride { uds_path }),
        drive_overrides: drives,
    };
    receive.settle().map_err(anyhow::Error::msg)?;
    Ok(Plan {
        id: p.id.clone(),
        boot: None,
        base,
        api_sock: a.api_sock.clone(),
        metrics_path: p.metrics_path.clone(),
        receive: Some(receive),
    })
}

/// `vmm migration status|cancel`.
pub fn run_command(c: &MigrationCommand) -> ExitCode {
    match c {
        MigrationCommand::Status(a) => client(a, "GET", "/migration", None, ""),
        MigrationCommand::Cancel(a) => client(
            a,
            "PUT",
            "/migration/cancel",
            None,
            "cancelled: the guest keeps running here",
        ),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("vmm: {msg}");
    ExitCode::from(EXIT_VMM_ERROR)
}

fn mib(bytes: f64) -> f64 {
    bytes / f64::from(1u32 << 20)
}

/// One line of progress from a `GET /migration` answer.
fn progress_line(v: &serde_json::Value, bar: bool) -> String {
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let sent = n("bytes_sent");
    let left = n("bytes_remaining");
    let rate = n("bandwidth_bytes_per_s");
    let state = v["state"].as_str().unwrap_or("?");
    let eta = if rate > 0.0 {
        format!("{:.0}s", left / rate)
    } else {
        "-".into()
    };
    let text = format!(
        "{state:<10} round {:>3}  {:>8.1} MiB sent  {:>8.1} MiB left  {:>7.1} MiB/s  dirty {:>6.1} MiB/s  throttle {:>2}%  eta {eta}",
        v["round"].as_u64().unwrap_or(0),
        mib(sent),
        mib(left),
        mib(rate),
        mib(n("dirty_rate_bytes_per_s")),
        v["throttle_percent"].as_u64().unwrap_or(0),
    );
    if !bar {
        return text;
    }
    let done = if sent + left > 0.0 {
        sent / (sent + left)
    } else {
        0.0
    };
    let width = 24usize;
    let filled = ((done * width as f64) as usize).min(width);
    format!(
        "[{}{}] {text}",
        "#".repeat(filled),
        "-".repeat(width - filled)
    )
}

/// `vmm send`: starts the migration and follows it to its end.
pub fn send(a: &SendArgs) -> ExitCode {
    let body = SendParams {
        destination: a.to.clone(),
        downtime_ms: a.downtime_ms,
        max_bandwidth_mib: a.max_bandwidth,
        auto_converge: !a.no_auto_converge,
        timeout_s: a.timeout,
    };
    if let Err(e) = body.settle() {
        return fail(e);
    }
    let c = Client::new(&a.api_sock);
    let body = serde_json::to_string(&body).unwrap_or_default();
    match c.request("PUT", "/migration/send", Some(&body)) {
        Ok((s, _)) if s < 300 => {}
        Ok((s, json)) => {
            let msg = json
                .as_ref()
                .and_then(|j| j["fault_message"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("HTTP {s}"));
            return fail(msg);
        }
        Err(e) => return fail(e),
    }
    let bar = !a.json && std::io::stdout().is_terminal();
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let mut last_state = String::new();
    let mut out = std::io::stdout();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let v = match c.request("GET", "/migration", None) {
            Ok((200, Some(v))) => v,
            Ok((s, _)) => return fail(format!("GET /migration answered HTTP {s}")),
            Err(e) => {
                return fail(format!(
                    "lost the source vmm before the migration ended ({e}); see its log"
                ));
            }
        };
        let state = v["state"].as_str().unwrap_or("?").to_string();
        let ended = !matches!(state.as_str(), "setup" | "precopy" | "switchover");
        if a.json {
            let _ = writeln!(out, "{v}");
        } else if bar {
            let _ = write!(out, "\r\x1b[K{}", progress_line(&v, true));
            let _ = out.flush();
        } else if ended || state != last_state || last_line.elapsed() >= Duration::from_secs(1) {
            // One bar per line: a log or a serial console keeps every step.
            let _ = writeln!(out, "{}", progress_line(&v, true));
            last_line = Instant::now();
        }
        last_state.clone_from(&state);
        if !ended {
            continue;
        }
        if bar {
            let _ = writeln!(out);
        }
        return match state.as_str() {
            "completed" => {
                println!(
                    "migrated to {}: the destination runs the guest (downtime {:.1} ms, total {:.1} s, {:.1} MiB of pages in {} rounds)",
                    a.to,
                    v["downtime_ms"].as_f64().unwrap_or(0.0),
                    v["total_time_ms"].as_f64().unwrap_or(0.0) / 1e3,
                    mib(v["bytes_sent"].as_f64().unwrap_or(0.0)),
                    v["round"].as_u64().unwrap_or(0)
                );
                ExitCode::SUCCESS
            }
            other => fail(format!(
                "migration {other}: {}",
                v["error"].as_str().unwrap_or("no reason given")
            )),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_show_the_figures() {
        let v = serde_json::json!({"state": "precopy", "round": 2, "bytes_sent": 3u64 << 20,
            "bytes_remaining": 1u64 << 20, "bandwidth_bytes_per_s": 1u64 << 20,
            "dirty_rate_bytes_per_s": null, "throttle_percent": 30});
        let l = progress_line(&v, true);
        assert!(l.starts_with("[##################------]"), "{l}");
        for want in [
            "precopy",
            "round   2",
            "3.0 MiB sent",
            "1.0 MiB left",
            "throttle 30%",
            "eta 1s",
        ] {
            assert!(l.contains(want), "{want}: {l}");
        }
        assert!(!progress_line(&v, false).contains('['));
    }

    #[test]
    fn overrides_are_id_equals_value() {
        assert_eq!(
            pair("net-override", "eth0=tap1").unwrap(),
            ("eth0".into(), "tap1".into())
        );
        let e = pair("net-override", "eth0").unwrap_err().to_string();
        assert!(e.contains("--net-override 'eth0' is not ID=VALUE"), "{e}");
        assert!(pair("drive-override", "=x").is_err());
    }
}
