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
        "snapshot",
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

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/state-v1.bin");

#[test]
fn snapshot_inspect_reads_a_state_file_and_names_a_bad_one() {
    let (code, out, err) = vmm(&["snapshot", "inspect", GOLDEN]);
    assert_eq!(code, Some(0), "{err}");
    for want in [
        "format version: 1",
        "vcpus: 1",
        "memory: 64 MiB",
        "vcpu0",
        "MIDR_EL1",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    let (code, out, _) = vmm(&["snapshot", "inspect", GOLDEN, "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["vcpus"], 1);
    assert_eq!(v["sections"][0]["name"], "vm");

    let dir = std::env::temp_dir().join(format!("vmm-cli-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = std::fs::read(GOLDEN).unwrap();
    bytes[100] ^= 1;
    let bad = dir.join("flipped.state");
    std::fs::write(&bad, &bytes).unwrap();
    let (code, _, err) = vmm(&["snapshot", "inspect", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("checksum mismatch"), "{err}");
    let (code, _, err) = vmm(&["snapshot", "inspect", "/nonexistent/vm.state"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/vm.state"), "{err}");
}

#[test]
fn snapshot_rebase_lays_a_diff_over_its_base() {
    let dir = std::env::temp_dir().join(format!("vmm-cli-rebase-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (base, diff) = (dir.join("base.mem"), dir.join("diff.mem"));
    std::fs::write(&base, vec![1u8; 3 * 4096]).unwrap();
    let f = std::fs::File::create(&diff).unwrap();
    f.set_len(3 * 4096).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[2u8; 4096], 4096).unwrap();
    let (code, out, err) = vmm(&[
        "snapshot",
        "rebase",
        "--memory-path",
        base.to_str().unwrap(),
        "--diff-path",
        diff.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("4096 bytes"), "{out}");
    let got = std::fs::read(&base).unwrap();
    assert_eq!((got[0], got[4096], got[8192]), (1, 2, 1));
    let short = dir.join("short.mem");
    std::fs::write(&short, [0u8; 10]).unwrap();
    let (code, _, err) = vmm(&[
        "snapshot",
        "rebase",
        "--memory-path",
        base.to_str().unwrap(),
        "--diff-path",
        short.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a pair"), "{err}");
}
