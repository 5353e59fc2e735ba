//! Snapshot and restore inside the emulated host, with real KVM and a real guest: pause,
//! `snapshot/create`, SIGKILL, `snapshot/load` in a fresh process, resume, and the guest
//! carries on where it was.
#![cfg(target_arch = "aarch64")]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmm_tests::api::{get_json, socket_path, wait_ready};
use vmm_tests::guest::{Guest, artifact};
use vmm_tests::snap::{
    boot, connect_guest, create, echo, hold_status, host, lines_of_grow, load, patch_vm, put,
    scratch,
};

/// The highest `tick-N` the console has shown, after collecting for `within`.
fn last_tick(g: &mut Guest, within: Duration) -> Option<u64> {
    let _ = g.collect_for(within);
    g.transcript
        .iter()
        .filter_map(|l| l.trim().strip_prefix("tick-")?.parse().ok())
        .max()
}

#[test]
fn a_guest_carries_on_in_a_new_process_after_sigkill() {
    let dir = scratch("basic");
    let (state, mem) = (dir.join("vm.state"), dir.join("vm.mem"));
    let sock = socket_path("snap-a");
    let mut g = boot(&sock, r#"{"vcpu_count": 2, "mem_size_mib": 256}"#, &[]);
    g.send("(i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done) &\n");
    assert!(g.wait_quiet("tick-3", Duration::from_secs(120)).is_some());
    patch_vm(&sock, "Paused");
    let before = last_tick(&mut g, Duration::from_secs(2)).expect("ticks before the pause");
    put(
        &sock,
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            state.display(),
            mem.display()
        ),
    );
    g.signal(libc::SIGKILL);
    let _ = g.wait_exit();

    let sock2 = socket_path("snap-b");
    let mut h = Guest::start(&["--api-sock", sock2.to_str().expect("utf-8")]);
    wait_ready(&sock2);
    put(
        &sock2,
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
            state.display(),
            mem.display()
        ),
    );
    assert_eq!(get_json(&sock2, "/")["state"], "Running");
    let after = last_tick(&mut h, Duration::from_secs(5)).expect("ticks after the load");
    assert!(
        after > before,
        "the loop carries on from tick-{before}, not from the start: tick-{after}"
    );
    // The console answers, with both vCPUs online.
    // (The tick loop may print between the command's lines.)
    let out = h.sh("cat /sys/devices/system/cpu/online");
    assert!(out.iter().any(|l| l == "0-1"), "{out:?}");
    let cfg = get_json(&sock2, "/vm/config");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    h.send("poweroff -f\n");
    let (status, stderr) = h.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// Whether two files hold the same bytes (read in chunks: memory files are large).
fn same_content(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).expect("open"),
        std::fs::File::open(b).expect("open"),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).expect("read");
        if na == 0 {
            return fb.read(&mut bb).expect("read") == 0;
        }
        if fb.read_exact(&mut bb[..na]).is_err() || ba[..na] != bb[..na] {
            return false;
        }
    }
}

#[test]
fn a_busy_guest_with_every_device_survives_sigkill_and_a_load() {
    let dir = scratch("full");
    let (state, mem) = (dir.join("vm.state"), dir.join("vm.mem"));
    let disk = dir.join("disk.ext4");
    std::fs::copy(artifact("GUEST_ROOTFS"), &disk).expect("copy the disk");
    let (uds, uds2) = (dir.join("v.sock"), dir.join("v2.sock"));
    host(
        "ip tuntap add dev vmtaps mode tap vnet_hdr && ip addr add 172.29.0.1/24 dev vmtaps && ip link set vmtaps up",
    );
    let sock = socket_path("snap-full");
    let mut g = boot(
        &sock,
        r#"{"vcpu_count": 2, "mem_size_mib": 512}"#,
        &[
            (
                "/drives/data",
                format!(
                    r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false}}"#,
                    disk.display()
                ),
            ),
            (
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0", "host_dev_name": "vmtaps", "guest_mac": "06:00:ac:1d:00:02"}"#
                    .to_string(),
            ),
            (
                "/vsock",
                format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, uds.display()),
            ),
            ("/entropy", "{}".to_string()),
        ],
    );
    g.sh("ip addr add 172.29.0.2/24 dev eth0; ip link set eth0 up");
    g.sh("mount /dev/vda /mnt && rm -f /mnt/grow");
    g.send("(while true; do echo line >> /mnt/grow; sync; sleep 0.5; done) &\n");
    g.send("vmm-guest-tool vsock-echo 5000 &\n");
    g.wait_for("VSOCK_ECHO_READY");
    g.send("vmm-guest-tool hold 256 &\n");
    g.wait_for("HOLD_READY");
    // A host connection that stays open across the snapshot.
    let mut open = connect_guest(&uds, 5000);
    echo(&mut open, "before\n");
    let before = hold_status(&mut g);
    assert_eq!(before.sum, before.expected, "{before:?}");
    let (grown, bad) = lines_of_grow(&mut g);
    assert!(grown > 0 && bad == 0);

    patch_vm(&sock, "Paused");
    // Paused is quiescent: traffic on the tap and on vsock while paused writes nothing to
    // guest memory, so two snapshots around it hold the same memory.
    let first = dir.join("first.mem");
    create(&sock, "Full", &dir.join("first.state"), &first);
    let pinger = Command::new("ping")
        .args(["-c", "20", "-i", "0.1", "-W", "1", "172.29.0.2"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ping the guest");
    let knock = std::thread::spawn({
        let uds = uds.clone();
        move || {
            for _ in 0..5 {
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    let _ = s.write_all(b"CONNECT 5000\n");
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    });
    let _ = knock.join();
    let _ = pinger.wait_with_output();
    create(&sock, "Full", &state, &mem);
    assert!(
        same_content(&first, &mem),
        "guest memory changed while paused"
    );
    std::fs::remove_file(&first).expect("remove the first memory file");
    g.signal(libc::SIGKILL);
    let _ = g.wait_exit();

    let (mut h, sock2) = load(
        "snap-full-b",
        &state,
        &mem,
        &format!(
            r#", "vsock_override": {{"uds_path": "{}"}}, "network_overrides": [{{"iface_id": "eth0", "host_dev_name": "vmtaps"}}]"#,
            uds2.display()
        ),
    );
    // The connection open at the snapshot is reset in the guest, not left hanging.
    h.wait_for("VSOCK_ECHO_CLOSED");
    let after = hold_status(&mut h);
    assert_eq!(after.sum, after.expected, "the pattern changed: {after:?}");
    assert_eq!(after.expected, before.expected);
    assert!(
        !after.backwards,
        "CLOCK_MONOTONIC went backwards: {after:?}"
    );
    for (a, b) in after.counters.iter().zip(&before.counters) {
        assert!(a > b, "a counter restarted: {before:?} then {after:?}");
    }
    let (grown2, bad2) = lines_of_grow(&mut h);
    assert!(
        grown2 >= grown && bad2 == 0,
        "{grown} then {grown2}, {bad2} bad"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(lines_of_grow(&mut h).0 > grown2, "the file stopped growing");
    let ping = h.sh("ping -c 2 -W 5 172.29.0.1 >/dev/null 2>&1; echo rc=$?");
    assert_eq!(
        ping,
        vec!["rc=0".to_string()],
        "the guest pings the host over the tap"
    );
    let mut again = connect_guest(&uds2, 5000);
    echo(&mut again, "after\n");
    let rng = h.sh("dd if=/dev/hwrng bs=16 count=1 2>/dev/null | wc -c");
    assert_eq!(rng, vec!["16".to_string()], "the entropy device answers");
    let cfg = get_json(&sock2, "/vm/config");
    assert_eq!(cfg["vsock"]["uds_path"], uds2.display().to_string());
    drop(open);
    h.send("poweroff -f\n");
    let (status, stderr) = h.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let _ = Command::new("ip").args(["link", "del", "vmtaps"]).status();
}
