//! What the snapshot tests share: booting the standard guest through the API, pausing,
//! creating and loading snapshots with Firecracker's request bodies, and reading the
//! `vmm-guest-tool hold` workload's status.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::api::{curl, socket_path, wait_ready};
use crate::guest::{Guest, PATIENCE, artifact};

/// A fresh scratch directory for one test.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-snap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A PUT that must succeed.
pub fn put(sock: &Path, path: &str, body: &str) {
    let (code, text) = curl(sock, "PUT", path, Some(body));
    assert_eq!(code, 204, "PUT {path} {body}: {text}");
}

/// PATCH /vm to `Paused` or `Resumed`.
pub fn patch_vm(sock: &Path, state: &str) {
    let body = format!(r#"{{"state": "{state}"}}"#);
    let (code, text) = curl(sock, "PATCH", "/vm", Some(&body));
    assert_eq!(code, 204, "PATCH /vm {state}: {text}");
}

/// Boots the standard guest through the API with `machine` as its machine-config, after
/// the extra `(path, body)` PUTs; returns once the guest is ready.
pub fn boot(sock: &Path, machine: &str, extra: &[(&str, String)]) -> Guest {
    let mut g = Guest::start(&["--api-sock", sock.to_str().expect("utf-8")]);
    wait_ready(sock);
    put(
        sock,
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "console=ttyS0 rdinit=/init"}}"#,
            artifact("GUEST_KERNEL").display(),
            artifact("GUEST_INITRD").display()
        ),
    );
    put(sock, "/machine-config", machine);
    for (path, body) in extra {
        put(sock, path, body);
    }
    put(sock, "/actions", r#"{"action_type": "InstanceStart"}"#);
    g.wait_for("GUEST_READY");
    g
}

/// The body of a `snapshot/create`.
pub fn create_body(kind: &str, state: &Path, mem: &Path) -> String {
    format!(
        r#"{{"snapshot_type": "{kind}", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        mem.display()
    )
}

/// `snapshot/create` of kind `Full` or `Diff`, which must succeed.
pub fn create(sock: &Path, kind: &str, state: &Path, mem: &Path) {
    put(sock, "/snapshot/create", &create_body(kind, state, mem));
}

/// The body of a `snapshot/load` with a File backend; `extra` adds fields.
pub fn load_body(state: &Path, mem: &Path, extra: &str) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}{extra}}}"#,
        state.display(),
        mem.display()
    )
}

/// Starts a fresh vmm and loads the snapshot into it, resumed; returns it and its socket.
pub fn load(tag: &str, state: &Path, mem: &Path, extra: &str) -> (Guest, PathBuf) {
    let sock = socket_path(tag);
    let g = Guest::start(&["--api-sock", sock.to_str().expect("utf-8")]);
    wait_ready(&sock);
    put(
        &sock,
        "/snapshot/load",
        &load_body(state, mem, &format!(r#", "resume_vm": true{extra}"#)),
    );
    (g, sock)
}

/// The `hold` workload's status.
#[derive(Debug)]
pub struct Hold {
    /// Each CPU's counter.
    pub counters: Vec<u64>,
    /// Whether CLOCK_MONOTONIC ever went backwards.
    pub backwards: bool,
    /// The memory's checksum now.
    pub sum: String,
    /// Its checksum right after the fill.
    pub expected: String,
}

impl Hold {
    /// The pattern is intact and the clock never went back.
    pub fn ok(&self) -> bool {
        self.sum == self.expected && !self.backwards
    }
}

/// Asks the guest's `hold` for its status and reads it.
pub fn hold_status(g: &mut Guest) -> Hold {
    let out = g.sh("rm -f /tmp/hold.status; kill -USR1 $(cat /tmp/hold.pid); \
         while [ ! -e /tmp/hold.status ]; do sleep 0.2; done; cat /tmp/hold.status");
    let line = out.last().expect("a status line").clone();
    println!("hold status: {line}");
    let field = |name: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    Hold {
        counters: field("counters")
            .split(',')
            .map(|c| c.parse().expect("a counter"))
            .collect(),
        backwards: field("backwards") != "0",
        sum: field("sum"),
        expected: field("expected"),
    }
}

/// Runs `cmd` with `sh -c` on the host, which must succeed.
pub fn host(cmd: &str) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Connects through the hybrid socket to the guest's `port`.
pub fn connect_guest(uds: &Path, port: u32) -> UnixStream {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut s = UnixStream::connect(uds).expect("connect to uds_path");
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .expect("send CONNECT");
        let mut line = String::new();
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        if r.read_line(&mut line).is_ok() && line.starts_with("OK ") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the guest listener never accepted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `text` to a guest echo service and checks it comes back.
pub fn echo(s: &mut UnixStream, text: &str) {
    s.write_all(text.as_bytes()).expect("write to the guest");
    let mut back = vec![0u8; text.len()];
    s.read_exact(&mut back).expect("read the echo");
    assert_eq!(back, text.as_bytes());
}

/// The lines of the guest's `/mnt/grow` and how many are not `line`.
pub fn lines_of_grow(g: &mut Guest) -> (u64, u64) {
    let out = g.sh("wc -l < /mnt/grow; grep -vc '^line$' /mnt/grow");
    let n = |i: usize| {
        out.get(i)
            .and_then(|l| l.trim().parse().ok())
            .expect("a count")
    };
    (n(0), n(1))
}
