//! The `vmm` command line on any host: help that names every subcommand and flag, the version,
//! and clear errors for nothing to do and for an unreachable API socket.

use std::process::Command;

fn vmm(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("run vmm");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_names_every_subcommand_and_process_flag() {
    let (code, out, _) = vmm(&["--help"]);
    assert_eq!(code, Some(0));
    for word in [
        "run",
        "info",
        "config",
        "boot-source",
        "machine-config",
        "start",
        "pause",
        "resume",
        "--api-sock",
        "--id",
        "--config-file",
        "--no-api",
        "--log-path",
        "--level",
        "--metrics-path",
        "--boot-timer",
        "--version",
        "Exit status",
    ] {
        assert!(out.contains(word), "vmm --help lacks {word}");
    }
    for sub in [
        "run",
        "info",
        "config",
        "boot-source",
        "machine-config",
        "start",
        "pause",
        "resume",
    ] {
        let (code, out, _) = vmm(&[sub, "--help"]);
        assert_eq!(code, Some(0), "vmm {sub} --help");
        assert!(out.contains("Usage: vmm"), "{sub}: {out}");
        if sub != "run" {
            assert!(
                out.contains("--api-sock"),
                "vmm {sub} --help lacks --api-sock"
            );
        }
    }
    let (_, out, _) = vmm(&["run", "--help"]);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--vcpus",
        "--memory",
        "--console",
        "--on-reset",
    ] {
        assert!(out.contains(flag), "vmm run --help lacks {flag}");
    }
}

#[test]
fn version_is_printed() {
    let (code, out, _) = vmm(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), format!("vmm {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn nothing_to_do_is_explained() {
    let (code, _, err) = vmm(&[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("nothing to run"), "{err}");
    let (code, _, err) = vmm(&["--no-api"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("nothing to run"), "{err}");
    let (code, _, err) = vmm(&["--api-sock", "/tmp/x.sock", "--no-api"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn clients_report_an_unreachable_socket() {
    let (code, _, err) = vmm(&["pause", "--api-sock", "/nonexistent/vmm.sock"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot connect to the API socket /nonexistent/vmm.sock"),
        "{err}"
    );
    let (code, _, err) = vmm(&["machine-config", "--api-sock", "/x.sock", "--vcpus", "two"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid value 'two'"), "{err}");
}

#[test]
fn bad_process_flags_are_refused() {
    let (code, _, err) = vmm(&["--api-sock", "/tmp/x.sock", "--level", "Loud"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("log level must be one of"), "{err}");
    let (code, _, err) = vmm(&["--config-file", "/nonexistent.json", "--no-api"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("cannot read config file /nonexistent.json"),
        "{err}"
    );
}
