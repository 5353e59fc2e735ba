//! Bad snapshot input inside the emulated host: each gets a 400 that names the problem,
//! leaves the process answering, and changes nothing, so a good request afterwards works.
#![cfg(target_arch = "aarch64")]

use std::path::Path;

use migration::SectionSet;
use migration::snapshot::{decode_snapshot, encode_snapshot};
use vmm_tests::api::{curl, get_json, socket_path, wait_ready};
use vmm_tests::guest::{Guest, artifact};
use vmm_tests::snap::{create_body, load_body, put, scratch};

/// A request that must be refused with a message containing every one of `want`.
fn refused(sock: &Path, method: &str, path: &str, body: &str, want: &[&str]) {
    let (code, text) = curl(sock, method, path, Some(body));
    assert_eq!(code, 400, "{method} {path} {body}: {text}");
    let msg = serde_json::from_str::<serde_json::Value>(&text).expect("JSON")["fault_message"]
        .as_str()
        .expect("fault_message")
        .to_string();
    for w in want {
        assert!(msg.contains(w), "{path}: {msg:?} does not name {w:?}");
    }
}

/// Rewrites a state file with section `name`'s version set to `version`.
fn with_section_version(from: &Path, to: &Path, name: &str, version: u16) {
    let sections = decode_snapshot(&std::fs::read(from).expect("read state")).expect("decode");
    let mut out = SectionSet::new();
    for mut s in sections {
        if s.name == name {
            s.version = version;
        }
        out.push(s).expect("unique");
    }
    std::fs::write(to, encode_snapshot(&out).expect("encode")).expect("write state");
}

#[test]
fn bad_snapshot_requests_are_refused_and_change_nothing() {
    let dir = scratch("all");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0x5au8; 1 << 20]).expect("disk");
    let (state, mem) = (dir.join("vm.state"), dir.join("vm.mem"));
    let sock = socket_path("bad-a");
    let mut g = Guest::start(&["--api-sock", sock.to_str().expect("utf-8")]);
    wait_ready(&sock);
    put(
        &sock,
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "console=ttyS0 rdinit=/init"}}"#,
            artifact("GUEST_KERNEL").display(),
            artifact("GUEST_INITRD").display()
        ),
    );
    put(
        &sock,
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    put(
        &sock,
        "/drives/data",
        &format!(
            r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false}}"#,
            disk.display()
        ),
    );
    let tap = std::process::Command::new("sh")
        .args([
            "-c",
            "ip tuntap add dev vmtapb mode tap vnet_hdr && ip link set vmtapb up",
        ])
        .status()
        .expect("create the tap");
    assert!(tap.success());
    put(
        &sock,
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "vmtapb"}"#,
    );
    put(&sock, "/actions", r#"{"action_type": "InstanceStart"}"#);
    g.wait_for("GUEST_READY");

    // Create while running.
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
        &["paused"],
    );
    assert!(!state.exists() && !mem.exists());
    let (code, _) = curl(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(code, 204);
    // A path that cannot be written: nothing half-written is left.
    let nowhere = dir.join("missing-dir").join("vm.state");
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        &create_body("Full", &nowhere, &mem),
        &["missing-dir"],
    );
    assert!(!nowhere.exists());
    let bad_mem = dir.join("missing-dir").join("vm.mem");
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &bad_mem),
        &["missing-dir"],
    );
    assert!(!state.exists(), "a state file without its memory file");
    put(
        &sock,
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    // The source still answers and resumes.
    let (code, _) = curl(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
    assert_eq!(code, 204);
    assert_eq!(g.sh("echo alive"), vec!["alive".to_string()]);
    g.signal(libc::SIGKILL);
    let _ = g.wait_exit();

    // Loads into one fresh process: every refusal leaves it loadable.
    let sock2 = socket_path("bad-b");
    let mut h = Guest::start(&["--api-sock", sock2.to_str().expect("utf-8")]);
    wait_ready(&sock2);
    let missing = dir.join("nope.state");
    refused(
        &sock2,
        "PUT",
        "/snapshot/load",
        &load_body(&missing, &mem, ""),
        &["nope.state"],
    );
    let bytes = std::fs::read(&state).expect("state");
    let truncated = dir.join("truncated.state");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    refused(
        &sock2,
        "PUT",
        "/snapshot/load",
        &load_body(&truncated, &mem, ""),
        &["truncated"],
    );
    let flipped = dir.join("flipped.state");
    let mut f = bytes.clone();
    f[bytes.len() / 3] ^= 0x10;
    std::fs::write(&flipped, &f).expect("write");
    refused(
        &sock2,
        "PUT",
        "/snapshot/load",
        &load_body(&flipped, &mem, ""),
        &["checksum"],
    );
    let newer = dir.join("newer.state");
    with_section_version(&state, &newer, "vm", 99);
    refused(
        &sock2,
        "PUT",
        "/snapshot/load",
        &load_body(&newer, &mem, ""),
        &["vm", "99", "newer"],
    );
    let short = dir.join("short.mem");
    std::fs::write(&short, vec![0u8; 4096]).expect("write");
    refused(
        &sock2,
        "PUT",
        "/snapshot/load",
        &load_body(&state, &short, ""),
        &["short.mem", "4096"],
    );
    refused(
        &sock2,
        "PUT",
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "Uffd", "backend_path": "/tmp/uffd.sock"}}}}"#,
            state.display()
        ),
        &["Uffd", "not supported yet"],
    );
    // A backing disk that no longer exists.
    let moved = dir.join("moved.img");
    std::fs::rename(&disk, &moved).expect("move the disk");
    refused(
        &sock2,
        "PUT",
        "/snapshot/load",
        &load_body(&state, &mem, ""),
        &["data", "disk.img"],
    );
    std::fs::rename(&moved, &disk).expect("put the disk back");
    assert_eq!(get_json(&sock2, "/")["state"], "Not started");
    // The good load still works in the same process.
    put(
        &sock2,
        "/snapshot/load",
        &load_body(&state, &mem, r#", "resume_vm": true"#),
    );
    assert_eq!(get_json(&sock2, "/")["state"], "Running");
    assert_eq!(h.sh("echo restored"), vec!["restored".to_string()]);
    refused(
        &sock2,
        "PUT",
        "/snapshot/load",
        &load_body(&state, &mem, ""),
        &["fresh"],
    );
    h.send("poweroff -f\n");
    let (status, stderr) = h.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");

    // A load after configuring a drive; a tap that cannot be opened.
    let sock3 = socket_path("bad-c");
    let _k = Guest::start(&["--api-sock", sock3.to_str().expect("utf-8")]);
    wait_ready(&sock3);
    let (code, text) = curl(
        &sock3,
        "PUT",
        "/snapshot/load",
        Some(&load_body(
            &state,
            &mem,
            r#", "network_overrides": [{"iface_id": "eth0", "host_dev_name": "lo"}]"#,
        )),
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("cannot open tap lo"), "{text}");
    put(
        &sock3,
        "/drives/data",
        &format!(
            r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false}}"#,
            disk.display()
        ),
    );
    refused(
        &sock3,
        "PUT",
        "/snapshot/load",
        &load_body(&state, &mem, ""),
        &["fresh"],
    );
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "vmtapb"])
        .status();
}
