//! What the migration tests share: a destination `vmm receive` process, `vmm send`, the
//! migration report, and the `vmm-guest-tool dirty` workload's status.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::api::{curl, socket_path, wait_ready};
use crate::guest::{Guest, vmm_bin};

/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts `vmm receive` on loopback `port` with its API on a new socket and `extra`
/// arguments (overrides); returns it (its console is the guest's, once it arrives) and its
/// socket.
pub fn receive(tag: &str, port: u16, extra: &[&str]) -> (Guest, PathBuf) {
    let sock = socket_path(tag);
    let listen = format!("tcp:127.0.0.1:{port}");
    let mut args = vec![
        "receive",
        "--listen",
        &listen,
        "--api-sock",
        sock.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let g = Guest::start(&args);
    wait_ready(&sock);
    (g, sock)
}

/// What `vmm send` did.
#[derive(Debug)]
pub struct Sent {
    /// Its exit code.
    pub code: Option<i32>,
    /// Its standard output (progress lines, the final line).
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `vmm send` against the vmm at `sock`, to loopback `port`, with `extra` arguments.
pub fn send(sock: &Path, port: u16, extra: &[&str]) -> Sent {
    let out = Command::new(vmm_bin())
        .args(["send", "--api-sock"])
        .arg(sock)
        .args(["--to", &format!("tcp:127.0.0.1:{port}")])
        .args(extra)
        .output()
        .expect("run vmm send");
    let sent = Sent {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!("vmm send: {:?}\n{}{}", sent.code, sent.stdout, sent.stderr);
    sent
}

/// `GET /migration`.
pub fn report(sock: &Path) -> serde_json::Value {
    let (code, body) = curl(sock, "GET", "/migration", None);
    assert_eq!(code, 200, "GET /migration: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Starts the `dirty` workload over `mib` MiB at `rate` MiB/s (0: as fast as it can) and
/// waits until it has filled its memory.
pub fn start_dirtier(g: &mut Guest, mib: u64, rate: u64) {
    g.send(&format!(
        "vmm-guest-tool dirty {mib} {rate} & echo $! > /tmp/dirty.pid\n"
    ));
    g.wait_for("DIRTY_READY");
}

/// The `dirty` workload's check of every page: (pages, rewrites so far, bad pages).
pub fn dirty_status(g: &mut Guest) -> (u64, u64, u64) {
    let out = g.sh(
        "rm -f /tmp/dirty.status; kill -USR1 $(cat /tmp/dirty.pid); \
         while [ ! -e /tmp/dirty.status ]; do sleep 0.2; done; cat /tmp/dirty.status",
    );
    let line = out.last().expect("a status line").clone();
    println!("dirty status: {line}");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (field("pages"), field("rewrites"), field("bad"))
}

/// The source guest runs on as before: its pattern and clock hold, its counters move, and
/// its VMM reports the attempt ended with `state`. (The dirtier's pages are checked once,
/// at the end: each check reads them all, which is slow under nested emulation.)
pub fn source_runs_on(g: &mut Guest, sock: &Path, last: &mut Vec<u64>, state: &str, what: &str) {
    let r = report(sock);
    assert_eq!(r["state"], state, "{what}: {r}");
    assert!(r["error"].is_string(), "{what}: a reason: {r}");
    assert_eq!(
        r["throttle_percent"], 0,
        "{what}: the throttle is lifted: {r}"
    );
    assert_eq!(
        crate::api::get_json(sock, "/")["state"],
        "Running",
        "{what}"
    );
    let hold = crate::snap::hold_status(g);
    assert!(hold.ok(), "{what}: {hold:?}");
    for (b, a) in last.iter().zip(&hold.counters) {
        assert!(
            a > b,
            "{what}: the counters stopped: {last:?} -> {:?}",
            hold.counters
        );
    }
    *last = hold.counters;
}

/// The destination ended non-zero without running the guest.
pub fn destination_failed(d: Guest, what: &str) -> String {
    let (status, stderr) = d.wait_exit();
    assert_eq!(status.code(), Some(1), "{what}: the destination: {stderr}");
    assert!(stderr.contains("nothing runs here"), "{what}: {stderr}");
    stderr
}

pub fn dest_addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Moves the guest of `g` (whose API is at `sock`) to a new healthy destination, which must
/// succeed, then checks the guest there (pattern, clock, the dirtier's pages) and powers it
/// off: the last step of the failure tests.
pub fn moves_to_a_healthy_destination(g: Guest, sock: &Path) {
    let port = free_port();
    let (mut d, _) = receive(&format!("mig-f-ok{port}"), port, &[]);
    let sent = send(sock, port, &[]);
    assert_eq!(sent.code, Some(0), "{}{}", sent.stdout, sent.stderr);
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let hold = crate::snap::hold_status(&mut d);
    assert!(hold.ok(), "{hold:?}");
    let (_, _, bad) = dirty_status(&mut d);
    assert_eq!(bad, 0);
    d.send("poweroff -f\n");
    let (status, stderr) = d.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
}
