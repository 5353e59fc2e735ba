//! `cargo xtask fuzz-api`: schemathesis (from PyPI, in a venv in the cache) generates requests
//! from docs/api/openapi.json against the real server in an emulated host, reached through a
//! loopback forward. It fails on any 5xx, any response that breaks the schema, or a crash:
//! afterwards the VMM must still answer, and then stop cleanly on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::artifacts;
use crate::cache::Cache;
use crate::qemu::{self, HostSpec};
use crate::sh::run;

const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const API_PORT: u16 = 8080;
const CONTROL_PORT: u16 = 8081;

const HOST_SCRIPT: &str = r#"
vmm --api-sock /run/api.sock --id fuzz --metrics-path /tmp/metrics 2>/tmp/vmm.err &
vmm_pid=$!
socat TCP-LISTEN:8080,fork,reuseaddr UNIX-CONNECT:/run/api.sock &
for i in $(seq 100); do [ -S /run/api.sock ] && break; sleep 0.1; done
echo FUZZ_READY
socat -u TCP-LISTEN:8081,reuseaddr - >/dev/null
if kill -0 "$vmm_pid" 2>/dev/null; then echo "FUZZ_VMM_ALIVE"; else echo "FUZZ_VMM_DEAD"; fi
kill -TERM "$vmm_pid"
wait "$vmm_pid"
echo "FUZZ_VMM_EXIT $?"
grep -ci panicked /tmp/vmm.err | sed 's/^/FUZZ_PANICS /'
"#;

fn venv() -> Result<PathBuf> {
    let cache = Cache::open()?;
    let dir = cache
        .debs_dir()?
        .parent()
        .context("cache root")?
        .join("venv-schemathesis");
    let st = dir.join("bin/schemathesis");
    if !st.exists() {
        eprintln!("xtask: installing {SCHEMATHESIS} into {}", dir.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
        run(Command::new(dir.join("bin/pip")).args(["install", "-q", SCHEMATHESIS]))?;
    }
    Ok(st)
}

fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn get_root(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Where schemathesis runs: it keeps its crash cache in `.schemathesis/` under its working
/// directory, and that cache must stay out of the source tree (it changes on every run).
fn scratch_dir() -> PathBuf {
    crate::workspace_root().join("target/fuzz-api")
}

/// The schemathesis run against `url`, in [`scratch_dir`]; every path it is given is absolute.
fn schemathesis_command(st: &Path, url: &str, examples: u32) -> Command {
    let root = crate::workspace_root();
    // coreutils' timeout bounds the whole run, whatever the server does.
    let mut c = Command::new("timeout");
    c.current_dir(scratch_dir())
        .arg("1800")
        .arg(st)
        .arg("--config-file")
        .arg(root.join("docs/api/schemathesis.toml"))
        .arg("run")
        .arg(root.join("docs/api/openapi.json"))
        .args([
            "--url",
            url,
            "--checks",
            "all",
            "--max-examples",
            &examples.to_string(),
            "--seed",
            "1",
        ])
        .args(["--request-timeout", "30", "--workers", "1", "--no-color"]);
    c
}

/// Runs the fuzzer; `examples` is schemathesis's --max-examples per operation.
pub fn run_fuzz(examples: u32) -> Result<ExitCode> {
    let st = venv()?;
    let cache = Cache::open()?;
    let art = artifacts::ensure(&cache)?;
    let payload = crate::host_payload(&art)?;
    let (api, control) = (free_tcp_port()?, free_tcp_port()?);
    let spec = HostSpec {
        name: "fuzz".into(),
        cpu: "max".into(),
        cntfrq: None,
        smp: 2,
        mem_mib: 2048,
        icount: false,
        timeout: Duration::from_secs(3600),
        link: None,
        forwards: vec![(api, API_PORT), (control, CONTROL_PORT)],
    };
    let (tx, rx) = mpsc::channel::<String>();
    let host = std::thread::spawn(move || {
        let mut sink = |l: &str| {
            println!("host| {l}");
            let _ = tx.send(l.to_string());
        };
        qemu::run(&spec, &art, &payload, HOST_SCRIPT, &mut sink)
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .context("the emulated host never reported FUZZ_READY")?;
        if line.contains("FUZZ_READY") {
            break;
        }
    }
    let url = format!("http://127.0.0.1:{api}");
    let scratch = scratch_dir();
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let started = Instant::now();
    let status = schemathesis_command(&st, &url, examples)
        .status()
        .context("cannot run schemathesis")?;
    println!(
        "schemathesis finished in {} s with {status}",
        started.elapsed().as_secs()
    );
    let alive = get_root(api)
        .map(|r| r.starts_with("HTTP/1.1 200"))
        .unwrap_or(false);
    drop(TcpStream::connect(("127.0.0.1", control)));
    let outcome = host
        .join()
        .map_err(|_| anyhow::anyhow!("host thread panicked"))??;
    let lines: Vec<String> = rx.try_iter().collect();
    let vmm_ok = lines.iter().any(|l| l.contains("FUZZ_VMM_ALIVE"))
        && lines.iter().any(|l| l.contains("FUZZ_VMM_EXIT 143"))
        && lines.iter().any(|l| l.trim() == "FUZZ_PANICS 0");
    println!(
        "api fuzz: schemathesis {}, vmm answered afterwards: {alive}, vmm alive and stopped cleanly: {vmm_ok}, host status {}",
        if status.success() { "passed" } else { "FAILED" },
        outcome.status
    );
    if !status.success() || !alive || !vmm_ok {
        bail!("the API fuzz run found a problem (see above)");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemathesis_runs_outside_the_source_tree() {
        let c = schemathesis_command(Path::new("/venv/bin/schemathesis"), "http://x", 3);
        let dir = c.get_current_dir().expect("a working directory is set");
        // Its `.schemathesis/` cache lands under target/, which git ignores.
        assert!(dir.starts_with(crate::workspace_root().join("target")));
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for file in ["docs/api/schemathesis.toml", "docs/api/openapi.json"] {
            let arg = args.iter().find(|a| a.ends_with(file)).expect(file);
            assert!(Path::new(arg).is_absolute(), "{arg} is absolute");
        }
    }
}
