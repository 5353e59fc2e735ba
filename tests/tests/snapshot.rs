//! Snapshot and restore inside the emulated host, with real KVM and a real guest: pause,
//! `snapshot/create`, SIGKILL, `snapshot/load` in a fresh process, resume, and the guest
//! carries on where it was.
#![cfg(target_arch = "aarch64")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_tests::api::{curl, get_json, socket_path, wait_ready};
use vmm_tests::guest::{Guest, artifact};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-snap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn put(sock: &Path, path: &str, body: &str) {
    let (code, text) = curl(sock, "PUT", path, Some(body));
    assert_eq!(code, 204, "PUT {path} {body}: {text}");
}

fn patch_vm(sock: &Path, state: &str) {
    let (code, text) = curl(
        sock,
        "PATCH",
        "/vm",
        Some(&format!(r#"{{"state": "{state}"}}"#)),
    );
    assert_eq!(code, 204, "PATCH /vm {state}: {text}");
}

/// Boots the standard guest through the API.
fn boot(sock: &Path, vcpus: u32, mem_mib: u32, extra: &[(&str, String)]) -> Guest {
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
    put(
        sock,
        "/machine-config",
        &format!(r#"{{"vcpu_count": {vcpus}, "mem_size_mib": {mem_mib}}}"#),
    );
    for (path, body) in extra {
        put(sock, path, body);
    }
    put(sock, "/actions", r#"{"action_type": "InstanceStart"}"#);
    g.wait_for("GUEST_READY");
    g
}

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
    let mut g = boot(&sock, 2, 256, &[]);
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
    let out = h.sh("cat /sys/devices/system/cpu/online");
    assert_eq!(out, vec!["0-1".to_string()], "{out:?}");
    let cfg = get_json(&sock2, "/vm/config");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    h.send("poweroff -f\n");
    let (status, stderr) = h.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
}
