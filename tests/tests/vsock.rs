//! Hybrid vsock with a real guest inside the emulated host: a host process reaches a guest
//! listener through `uds_path` and `CONNECT <port>`, the guest reaches a host listener at
//! `<uds_path>_<port>`; 10 MiB echo both ways, eight connections at once, host processes that
//! never finish their `CONNECT` line disconnected, and a uds_path in use refused through the
//! API.
#![cfg(target_arch = "aarch64")]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_tests::api::{curl, flush_metrics, socket_path, wait_ready};
use vmm_tests::guest::{Guest, artifact};

const MIB: usize = 1 << 20;

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-vsock-{}-{name}", std::process::id()))
}

/// Deterministic bytes that differ per connection.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a, to name data in messages.
fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Connects through the hybrid socket to the guest's `port`; returns the stream after `OK`.
fn connect_guest(uds: &Path, port: u32) -> UnixStream {
    try_connect_guest(uds, port).expect("the guest listener never accepted")
}

fn try_connect_guest(uds: &Path, port: u32) -> Option<UnixStream> {
    for _ in 0..50 {
        let mut s = UnixStream::connect(uds).expect("connect to uds_path");
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .expect("send CONNECT");
        let mut line = String::new();
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        if r.read_line(&mut line).is_ok() && line.starts_with("OK ") {
            let host_port: u32 = line[3..].trim().parse().expect("OK <port>");
            assert!(host_port > 0);
            assert!(r.buffer().is_empty(), "no stream bytes before data");
            return Some(s);
        }
        // The guest's listener may not be up yet: the connection is reset.
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Sends `data` and reads the echo back concurrently; returns what came back.
fn echo_through(mut s: UnixStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        w.write_all(&data).expect("write to the guest");
        w.shutdown(std::net::Shutdown::Write).expect("shutdown");
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("read the echo");
    writer.join().expect("writer");
    back
}

fn boot_with_vsock_by_api(tag: &str, uds: &Path) -> (Guest, PathBuf, PathBuf) {
    let sock = socket_path(tag);
    let mut g = Guest::start(&["--api-sock", sock.to_str().expect("utf-8")]);
    wait_ready(&sock);
    let put = |path: &str, body: String| {
        let (code, text) = curl(&sock, "PUT", path, Some(&body));
        assert_eq!(code, 204, "PUT {path}: {text}");
    };
    put(
        "/boot-source",
        format!(
            r#"{{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1"}}"#,
            artifact("GUEST_KERNEL").display(),
            artifact("GUEST_INITRD").display()
        ),
    );
    put(
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 512}"#.into(),
    );
    put(
        "/vsock",
        format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, uds.display()),
    );
    let metrics = temp(&format!("{tag}.metrics"));
    std::fs::write(&metrics, "").expect("metrics file");
    put(
        "/metrics",
        format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    );
    put("/actions", r#"{"action_type": "InstanceStart"}"#.into());
    g.wait_for("GUEST_READY");
    (g, sock, metrics)
}

#[test]
fn vsock_echoes_10_mib_both_ways_over_eight_connections() {
    let uds = temp("v.sock");
    let (mut g, sock, m) = boot_with_vsock_by_api("vsock", &uds);

    // Host to guest: one connection, then eight at once, 10 MiB each, echoed by the guest.
    g.send("vmm-guest-tool vsock-echo 5000 &\n");
    g.wait_for("VSOCK_ECHO_READY 5000");
    let data = pattern(10 * MIB, 1);
    let back = echo_through(connect_guest(&uds, 5000), data.clone());
    assert_eq!(back.len(), data.len());
    assert!(
        back == data,
        "the echo differs: {:x} vs {:x}",
        checksum(&back),
        checksum(&data)
    );

    let workers: Vec<_> = (0..8u64)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let data = pattern(10 * MIB, 100 + i);
                let back = echo_through(connect_guest(&uds, 5000), data.clone());
                (checksum(&back), checksum(&data), back.len())
            })
        })
        .collect();
    for w in workers {
        let (got, want, len) = w.join().expect("connection thread");
        assert_eq!(
            (got, len),
            (want, 10 * MIB),
            "an echo of 10 MiB came back changed"
        );
    }

    // Guest to host: the guest connects to host port 6000, reaching <uds>_6000.
    let mut name = uds.clone().into_os_string();
    name.push("_6000");
    let listener = UnixListener::bind(&name).expect("bind <uds>_6000");
    let server = std::thread::spawn(move || {
        let mut served = 0;
        while served < 9 {
            let Ok((mut c, _)) = listener.accept() else {
                break;
            };
            std::thread::spawn(move || {
                let mut w = c.try_clone().expect("clone");
                let _ = std::io::copy(&mut c, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
            served += 1;
        }
    });
    let sums = g.sh(
        "dd if=/dev/urandom of=/tmp/up.bin bs=1M count=10 2>/dev/null; sha256sum < /tmp/up.bin; vmm-guest-tool vsock-cat 2 6000 < /tmp/up.bin | sha256sum",
    );
    assert_eq!(sums.len(), 2, "{sums:?}");
    assert_eq!(sums[0], sums[1], "10 MiB from the guest came back changed");
    // `wait` names the pids: the echo server from above runs on in the background.
    let many = g.sh(
        "p=; for i in 1 2 3 4 5 6 7 8; do (vmm-guest-tool vsock-cat 2 6000 < /tmp/up.bin | sha256sum > /tmp/sum$i) & p=\"$p $!\"; done; wait $p; cat /tmp/sum*",
    );
    assert_eq!(many.len(), 8, "{many:?}");
    assert!(
        many.iter().all(|s| *s == sums[0]),
        "{many:?} vs {}",
        sums[0]
    );
    server.join().expect("host echo server");

    // The device's counters show the traffic.
    let v = flush_metrics(&sock, &m);
    let rx = v["vsock"]["rx_bytes_count"].as_u64().expect("vsock group");
    let tx = v["vsock"]["tx_bytes_count"].as_u64().expect("vsock group");
    assert!(
        rx >= (9 * 10 * MIB) as u64 && tx >= (18 * 10 * MIB) as u64,
        "rx {rx} tx {tx}"
    );
    assert_eq!(v["vsock"]["conns_added"].as_u64(), Some(18));

    g.send("poweroff -f\n");
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!uds.exists(), "uds_path is removed at exit");
    for p in [PathBuf::from(name), m] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn a_host_process_that_never_sends_connect_is_disconnected() {
    let uds = temp("silent.sock");
    let (mut g, sock, m) = boot_with_vsock_by_api("vsock-silent", &uds);
    let mut silent = UnixStream::connect(&uds).expect("connect to uds_path");
    let mut partial = UnixStream::connect(&uds).expect("connect to uds_path");
    partial.write_all(b"CONNE").expect("part of a line");
    for s in [&mut silent, &mut partial] {
        // A hang guard: the VMM gives 2 s; emulation is slow.
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        let got = s.read(&mut [0u8; 16]);
        assert!(
            matches!(got, Ok(0)),
            "the VMM closes the connection: {got:?}"
        );
    }
    // The guest side still works.
    g.send("vmm-guest-tool vsock-echo 5001 &\n");
    g.wait_for("VSOCK_ECHO_READY 5001");
    let back = echo_through(connect_guest(&uds, 5001), b"still here".to_vec());
    assert_eq!(back, b"still here");

    let v = flush_metrics(&sock, &m);
    assert_eq!(v["vsock"]["handshake_timeouts"].as_u64(), Some(2), "{v}");

    g.send("poweroff -f\n");
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let _ = std::fs::remove_file(m);
}

#[test]
fn a_uds_path_in_use_is_refused_and_nothing_changes() {
    let uds = temp("busy.sock");
    let _other = UnixListener::bind(&uds).expect("another process's socket");
    let sock = socket_path("vsock-busy");
    let g = Guest::start(&["--api-sock", sock.to_str().expect("utf-8")]);
    wait_ready(&sock);
    for (body, want) in [
        (
            format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, uds.display()),
            "is in use",
        ),
        (
            r#"{"guest_cid": 1, "uds_path": "/tmp/x.sock"}"#.to_string(),
            "invalid guest_cid 1",
        ),
        (
            r#"{"guest_cid": 3}"#.to_string(),
            "missing field `uds_path`",
        ),
    ] {
        let (code, text) = curl(&sock, "PUT", "/vsock", Some(&body));
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains(want), "{body}: {text}");
    }
    let (code, text) = curl(&sock, "GET", "/vm/config", None);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert!(v["vsock"].is_null(), "nothing configured: {text}");
    assert!(
        UnixStream::connect(&uds).is_ok(),
        "the other socket is untouched"
    );
    g.signal(libc::SIGTERM);
    let _ = g.wait_exit();
}
