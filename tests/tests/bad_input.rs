//! `vmm` refuses bad input with a clear message and a non-zero exit, without panicking and
//! without leaving anything running.
#![cfg(target_arch = "aarch64")]

use vmm_tests::guest::{artifact, refused};

fn run_args<'a>(kernel: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", "--kernel", kernel, "--console", "none"];
    v.extend_from_slice(extra);
    v
}

fn assert_refused(args: &[&str], needle: &str) {
    let (code, stderr) = refused(args);
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?} for {args:?}"
    );
    assert!(
        stderr.contains(needle),
        "stderr for {args:?} lacks {needle:?}: {stderr}"
    );
}

fn temp(name: &str, data: &[u8]) -> String {
    let p = std::env::temp_dir().join(format!("vmm-bad-{}-{name}", std::process::id()));
    std::fs::write(&p, data).expect("write temp file");
    p.display().to_string()
}

#[test]
fn missing_or_unreadable_kernel() {
    assert_refused(
        &run_args("/nonexistent/Image", &[]),
        "cannot read kernel /nonexistent/Image",
    );
    assert_refused(&run_args("/tmp", &[]), "cannot read kernel /tmp");
}

#[test]
fn a_file_that_is_not_an_arm64_image() {
    let text = temp(
        "text",
        b"#!/bin/sh\necho this is not a kernel, but it is long enough to have a header\n",
    );
    assert_refused(&run_args(&text, &[]), "not an arm64 Linux Image");
    let short = temp("short", b"tiny");
    assert_refused(&run_args(&short, &[]), "too short");
    // A gzip file that holds something else than a kernel.
    let initrd = artifact("GUEST_INITRD");
    assert_refused(
        &run_args(initrd.to_str().expect("utf-8"), &[]),
        "not an arm64 Linux Image",
    );
}

#[test]
fn an_initrd_too_large_for_guest_memory() {
    let kernel = artifact("GUEST_KERNEL");
    let rootfs = artifact("GUEST_ROOTFS"); // 64 MiB
    assert_refused(
        &run_args(
            kernel.to_str().expect("utf-8"),
            &[
                "--initrd",
                rootfs.to_str().expect("utf-8"),
                "--memory",
                "96",
            ],
        ),
        "does not fit in guest memory",
    );
    assert_refused(
        &run_args(
            kernel.to_str().expect("utf-8"),
            &["--initrd", "/nonexistent/initrd"],
        ),
        "cannot read initrd /nonexistent/initrd",
    );
}

#[test]
fn memory_of_zero_or_too_small_for_the_kernel() {
    let kernel = artifact("GUEST_KERNEL");
    let k = kernel.to_str().expect("utf-8");
    assert_refused(
        &run_args(k, &["--memory", "0"]),
        "memory size must be at least 1 MiB",
    );
    assert_refused(
        &run_args(k, &["--memory", "16"]),
        "too small for this kernel",
    );
    assert_refused(&run_args(k, &["--memory=-5"]), "invalid value");
}

#[test]
fn vcpus_of_zero_or_more_than_allowed() {
    let kernel = artifact("GUEST_KERNEL");
    let k = kernel.to_str().expect("utf-8");
    assert_refused(
        &run_args(k, &["--vcpus", "0"]),
        "vcpu count must be at least 1",
    );
    assert_refused(
        &run_args(k, &["--vcpus", "124"]),
        "exceeds the maximum of 123",
    );
}

#[test]
fn config_file_errors_name_the_problem() {
    let kernel = artifact("GUEST_KERNEL");
    let k = kernel.display();
    let unknown = temp(
        "unknown.json",
        format!(r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "frobnicate": 1}}"#).as_bytes(),
    );
    assert_refused(
        &["--config-file", &unknown, "--no-api"],
        "unknown field `frobnicate`",
    );
    let malformed = temp(
        "malformed.json",
        br#"{"boot-source": {"kernel_image_path": "#,
    );
    assert_refused(
        &["--config-file", &malformed, "--no-api"],
        "invalid config file",
    );
    let net = temp(
        "net.json",
        format!(r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "network-interfaces": [{{"iface_id": "eth0"}}]}}"#)
            .as_bytes(),
    );
    assert_refused(
        &["--config-file", &net, "--no-api"],
        "missing field `host_dev_name`",
    );
    let vsock = temp(
        "vsock.json",
        format!(r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "vsock": {{"guest_cid": 3, "uds_path": "/nonexistent-dir/v.sock"}}}}"#)
            .as_bytes(),
    );
    assert_refused(
        &["--config-file", &vsock, "--no-api"],
        "the directory /nonexistent-dir does not exist",
    );
    let balloon = temp(
        "balloon.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "balloon": {{"amount_mib": 8}}}}"#
        )
        .as_bytes(),
    );
    assert_refused(
        &["--config-file", &balloon, "--no-api"],
        "section 'balloon' is not supported yet",
    );
    let mac = temp(
        "mac.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz:00:00:00:00:01"}}]}}"#
        )
        .as_bytes(),
    );
    assert_refused(
        &["--config-file", &mac, "--no-api"],
        "invalid MAC address 'zz:00:00:00:00:01'",
    );
    let drive = temp(
        "drive.json",
        format!(r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "drives": [{{"drive_id": "root"}}]}}"#).as_bytes(),
    );
    assert_refused(
        &["--config-file", &drive, "--no-api"],
        "missing field `path_on_host`",
    );
    assert_refused(
        &["--config-file", "/nonexistent.json", "--no-api"],
        "cannot read config file /nonexistent.json",
    );
    let template = temp(
        "template.json",
        format!(r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "C3"}}}}"#)
            .as_bytes(),
    );
    let (code, stderr) = refused(&["--config-file", &template, "--no-api"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("machine-config cpu_template 'C3' is not supported yet"),
        "{stderr}"
    );
}

#[test]
fn no_arguments_explain_what_to_do() {
    assert_refused(&[], "nothing to run");
    assert_refused(&["run"], "--kernel");
}
