//! The API socket inside the emulated host: Firecracker's getting-started sequence with curl,
//! the same through the CLI subcommands, pause/resume, bad requests against the live server,
//! the socket rules, metrics, and the config file with the API.
#![cfg(target_arch = "aarch64")]

use std::path::Path;
use std::time::Duration;

use vmm_tests::api::{curl, flush_metrics, get_json, socket_path, wait_ready};
use vmm_tests::guest::{Guest, artifact, vmm_bin};

fn kernel() -> String {
    artifact("GUEST_KERNEL").display().to_string()
}

fn initrd() -> String {
    artifact("GUEST_INITRD").display().to_string()
}

/// Starts a ticking loop in the guest and checks that it stops while paused.
fn check_pause_stops_the_guest(
    g: &mut Guest,
    pause: &dyn Fn(),
    resume: &dyn Fn(),
    state: &dyn Fn() -> String,
) {
    g.send("(i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done) &\n");
    assert!(
        g.wait_quiet("tick-3", Duration::from_secs(120)).is_some(),
        "the guest loop runs"
    );
    pause();
    assert_eq!(state(), "Paused");
    // Output the guest had already produced may still drain; after that, nothing new.
    let _ = g.collect_for(Duration::from_secs(1));
    let during = g.collect_for(Duration::from_secs(3));
    assert!(
        !during.iter().any(|l| l.contains("tick-")),
        "the guest ran while paused: {during:?}"
    );
    resume();
    assert_eq!(state(), "Running");
    assert!(
        g.wait_quiet("tick-", Duration::from_secs(120)).is_some(),
        "the loop runs again after resume"
    );
    g.send("kill %1\n");
}

fn power_off(mut g: Guest, sock: &Path) {
    g.send("poweroff -f\n");
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!sock.exists(), "the API socket is removed on exit");
}

#[test]
fn the_getting_started_sequence_with_curl() {
    let sock = socket_path("curl");
    let metrics = std::env::temp_dir().join(format!("vmm-metrics-{}", std::process::id()));
    let _ = std::fs::remove_file(&metrics);
    let mut g = Guest::start(&[
        "--api-sock",
        sock.to_str().expect("utf-8"),
        "--id",
        "demo-vm",
    ]);
    wait_ready(&sock);
    let info = get_json(&sock, "/");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["id"], "demo-vm");

    // Before start: pausing is refused, bad bodies are refused, nothing changes.
    assert_eq!(
        curl(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        400
    );
    let mbody = format!(r#"{{"metrics_path": "{}"}}"#, metrics.display());
    assert_eq!(curl(&sock, "PUT", "/metrics", Some(&mbody)).0, 204);

    let bs = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1", "initrd_path": "{}"}}"#,
        kernel(),
        initrd()
    );
    assert_eq!(curl(&sock, "PUT", "/boot-source", Some(&bs)).0, 204);
    assert_eq!(
        curl(
            &sock,
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#)
        )
        .0,
        204
    );
    assert_eq!(
        curl(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        )
        .0,
        204
    );
    g.wait_for("GUEST_READY");
    assert_eq!(get_json(&sock, "/")["state"], "Running");
    assert_eq!(g.sh("nproc"), vec!["2".to_string()]);

    // Bad requests against the running server: the right 4xx, and the VM goes on.
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        (
            "PUT",
            "/machine-config",
            Some("{not json"),
            400,
            "invalid request body",
        ),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/k", "extra": 1}"#),
            400,
            "unknown field",
        ),
        (
            "PUT",
            "/metrics",
            Some(r#"{"metrics_path": 5}"#),
            400,
            "invalid type",
        ),
        (
            "PUT",
            "/actions",
            Some("{}"),
            400,
            "missing field `action_type`",
        ),
        ("GET", "/no/such/thing", None, 404, "no resource"),
        ("DELETE", "/vm", None, 405, "not allowed"),
        ("PUT", "/balloon", Some("{}"), 400, "not supported yet"),
        ("DELETE", "/balloon", None, 405, "not allowed"),
        (
            "PUT",
            "/serial",
            Some(r#"{"serial_out_path": "/tmp/s"}"#),
            400,
            "the /serial resource is not supported yet",
        ),
        (
            "PUT",
            "/entropy",
            Some(r#"{"rate_limiter": null}"#),
            400,
            "rate_limiter is null",
        ),
        (
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#),
            400,
            "must be paused",
        ),
        (
            "PUT",
            "/vsock",
            Some("{}"),
            400,
            "missing field `guest_cid`",
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(r#"{"drive_id": "rootfs", "path_on_host": "/x", "is_root_device": false}"#),
            400,
            "after starting",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
            400,
            "already running",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 4, "mem_size_mib": 512}"#),
            400,
            "after starting",
        ),
        (
            "PATCH",
            "/vm",
            Some(r#"{"state": "Resumed"}"#),
            400,
            "not paused",
        ),
    ];
    for (method, path, body, code, needle) in cases {
        let (got, text) = curl(&sock, method, path, *body);
        assert_eq!(got, *code, "{method} {path}: {text}");
        assert!(text.contains(needle), "{method} {path}: {text}");
        assert!(text.contains("fault_message"), "{text}");
    }
    let huge = format!(r#"{{"metrics_path": "{}"}}"#, "m".repeat(60_000));
    assert_eq!(curl(&sock, "PUT", "/metrics", Some(&huge)).0, 413);
    assert_eq!(get_json(&sock, "/machine-config")["vcpu_count"], 2);
    assert_eq!(get_json(&sock, "/")["state"], "Running");
    assert_eq!(g.sh("echo still-here"), vec!["still-here".to_string()]);

    let s = sock.clone();
    check_pause_stops_the_guest(
        &mut g,
        &|| {
            assert_eq!(
                curl(&s, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
                204
            );
        },
        &|| {
            assert_eq!(
                curl(&s, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
                204
            );
        },
        &|| {
            get_json(&s, "/")["state"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        },
    );

    let line = flush_metrics(&sock, &metrics);
    assert!(
        line["put_api_requests"]["actions_count"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    );
    assert!(line["patch_api_requests"]["vm_count"].as_u64().unwrap_or(0) >= 2);
    assert!(line["vcpu"]["exit_mmio_write"].as_u64().unwrap_or(0) > 0);

    let cfg = get_json(&sock, "/vm/config");
    assert_eq!(
        cfg["boot-source"]["kernel_image_path"].as_str(),
        Some(kernel().as_str())
    );
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 256);
    power_off(g, &sock);
}

#[test]
fn the_same_flow_through_the_cli() {
    let sock = socket_path("cli");
    let s = sock.to_str().expect("utf-8").to_string();
    let mut g = Guest::start(&["--api-sock", &s]);
    wait_ready(&sock);
    let vmm = |args: &[&str]| {
        let out = std::process::Command::new(vmm_bin())
            .args(args)
            .output()
            .expect("run vmm client");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = vmm(&["info", "--api-sock", &s]);
    assert_eq!(code, Some(0));
    assert!(out.contains("state: Not started"), "{out}");
    let (code, _, err) = vmm(&[
        "boot-source",
        "--api-sock",
        &s,
        "--kernel",
        &kernel(),
        "--initrd",
        &initrd(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = vmm(&[
        "machine-config",
        "--api-sock",
        &s,
        "--vcpus",
        "2",
        "--memory",
        "256",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = vmm(&["start", "--api-sock", &s]);
    assert_eq!((code, out.trim()), (Some(0), "started"), "{err}");
    g.wait_for("GUEST_READY");
    let (code, _, err) = vmm(&["start", "--api-sock", &s]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already running"), "{err}");
    let (_, out, _) = vmm(&["config", "--api-sock", &s, "--json"]);
    let cfg: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    let state = || {
        let (_, out, _) = vmm(&["info", "--api-sock", &s, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).expect("JSON")["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    check_pause_stops_the_guest(
        &mut g,
        &|| assert_eq!(vmm(&["pause", "--api-sock", &s]).1.trim(), "paused"),
        &|| assert_eq!(vmm(&["resume", "--api-sock", &s]).1.trim(), "resumed"),
        &state,
    );
    let (code, _, err) = vmm(&["info", "--api-sock", "/nonexistent.sock"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot connect to the API socket /nonexistent.sock"),
        "{err}"
    );
    power_off(g, &sock);
}

#[test]
fn the_config_file_boots_with_the_api_and_the_socket_is_guarded() {
    let sock = socket_path("cfgapi");
    let cfg = std::env::temp_dir().join(format!("vmm-cfgapi-{}.json", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 192}}}}"#,
            kernel(),
            initrd()
        ),
    )
    .expect("write config");
    let mut g = Guest::start(&[
        "--api-sock",
        sock.to_str().expect("utf-8"),
        "--config-file",
        cfg.to_str().expect("utf-8"),
    ]);
    g.wait_for("GUEST_READY");
    assert_eq!(get_json(&sock, "/")["state"], "Running");
    assert_eq!(get_json(&sock, "/machine-config")["mem_size_mib"], 192);
    // A second vmm must not take over a socket that a live process serves.
    let (code, stderr) = vmm_tests::guest::refused(&["--api-sock", sock.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("already serving the API socket"),
        "{stderr}"
    );
    assert_eq!(
        get_json(&sock, "/")["state"],
        "Running",
        "the first vmm still serves"
    );
    power_off(g, &sock);
}

#[test]
fn a_stale_socket_is_replaced() {
    let sock = socket_path("stale");
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    let g = Guest::start(&["--api-sock", sock.to_str().expect("utf-8")]);
    wait_ready(&sock);
    assert_eq!(
        get_json(&sock, "/version")["firecracker_version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    g.signal(libc::SIGTERM);
    let (status, _) = g.wait_exit();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!sock.exists(), "removed on exit");
}

#[test]
fn a_failed_start_keeps_the_instance() {
    let sock = socket_path("badstart");
    let g = Guest::start(&["--api-sock", sock.to_str().expect("utf-8")]);
    wait_ready(&sock);
    // A readable file that is not a kernel passes PUT /boot-source and fails at start.
    let bs = format!(r#"{{"kernel_image_path": "{}"}}"#, initrd());
    assert_eq!(curl(&sock, "PUT", "/boot-source", Some(&bs)).0, 204);
    let (code, body) = curl(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(code, 400);
    assert!(body.contains("not an arm64 Linux Image"), "{body}");
    assert_eq!(get_json(&sock, "/")["state"], "Not started");
    let (code, body) = curl(
        &sock,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent"}"#),
    );
    assert_eq!(code, 400);
    assert!(
        body.contains("cannot open kernel image /nonexistent"),
        "{body}"
    );
    g.signal(libc::SIGTERM);
    let _ = g.wait_exit();
}
