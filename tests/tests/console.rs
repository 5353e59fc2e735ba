//! The serial console under `vmm run`: input typed before the guest is ready, a reader that
//! stops reading, and panic banners that guest programs print.
#![cfg(target_arch = "aarch64")]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::api::{curl, flush_metrics, socket_path, wait_ready};
use vmm_tests::guest::{Guest, PATIENCE, artifact, vmm_bin};

#[test]
fn input_piped_before_the_guest_boots_reaches_its_shell() {
    // Regression: the first bytes, given before the guest's serial driver was up, were
    // read and discarded by the driver's startup, so `nproc` ran as `roc`.
    let mut g = Guest::start(&[
        "run",
        "--kernel",
        artifact("GUEST_KERNEL").to_str().expect("utf-8"),
        "--initrd",
        artifact("GUEST_INITRD").to_str().expect("utf-8"),
        "--vcpus",
        "2",
    ]);
    g.send("nproc\necho typed-$((20 + 22))\npoweroff -f\n");
    // The echoed command line reads `typed-$((20 + 22))`: only the shell's output matches.
    g.wait_for("typed-42");
    let ready = g
        .transcript
        .iter()
        .position(|l| l.contains("GUEST_READY"))
        .expect("the guest booted");
    let after: Vec<&str> = g.transcript[ready..].iter().map(|l| l.trim()).collect();
    assert!(after.contains(&"2"), "nproc's answer: {after:?}");
    assert!(
        after.contains(&"typed-42"),
        "the second command ran: {after:?}"
    );
}

#[test]
fn a_console_nobody_reads_does_not_stop_the_vmm() {
    // Regression: the console wrote to a blocking stdout from the vCPU thread, so a reader
    // that stopped reading stopped the guest, then pause and SIGTERM waited for it forever.
    let (read_end, write_end) = std::io::pipe().expect("pipe");
    let sock = socket_path("stalled-console");
    let metrics = std::env::temp_dir().join(format!("vmm-stalled-metrics-{}", std::process::id()));
    let _ = std::fs::remove_file(&metrics);
    let cfg = std::env::temp_dir().join(format!("vmm-stalled-{}.json", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}}}}"#,
            artifact("GUEST_KERNEL").display(),
            artifact("GUEST_INITRD").display()
        ),
    )
    .expect("write config");
    let mut child = Command::new(vmm_bin())
        .args([
            "--config-file",
            cfg.to_str().expect("utf-8"),
            "--metrics-path",
            metrics.to_str().expect("utf-8"),
            "--api-sock",
            sock.to_str().expect("utf-8"),
        ])
        .stdin(Stdio::piped())
        .stdout(write_end)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm");
    // Typed ahead (see the test above): the shell prints without end once it starts.
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"while true; do echo 0123456789012345678901234567890123456789; done\n")
        .expect("write the command");
    stdin.flush().expect("flush");
    wait_ready(&sock);
    let deadline = Instant::now() + PATIENCE;
    // Wait until the pipe is full and the VMM has had to drop output: from then on every
    // write of the guest meets a reader that is not reading.
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, the bytes waiting in the pipe.
        unsafe { libc::ioctl(read_end.as_raw_fd(), libc::FIONREAD, &mut queued) };
        let missed = flush_metrics(&sock, &metrics)["uart"]["missed_write_count"]
            .as_u64()
            .expect("the uart group");
        // A pipe holds 64 KiB in 16 pages; the guest's last line may not fill the last one.
        if queued >= 65536 - 4096 && missed > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never overran the console ({queued} bytes in the pipe, {missed} dropped)"
        );
        assert!(child.try_wait().expect("wait").is_none(), "vmm ended early");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The vCPUs still answer: pause and resume go through.
    for state in ["Paused", "Resumed"] {
        let (code, text) = curl(
            &sock,
            "PATCH",
            "/vm",
            Some(&format!(r#"{{"state": "{state}"}}"#)),
        );
        assert_eq!(code, 204, "{state}: {text}");
    }
    // SAFETY: kill has no memory effects; the pid is our own child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vmm did not stop on SIGTERM with a stalled console reader");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        stderr.contains("bytes of guest output were dropped"),
        "the dropped output is reported: {stderr}"
    );
    drop(read_end);
    let _ = std::fs::remove_file(&metrics);
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn a_panic_banner_printed_by_a_program_is_not_a_panic() {
    // Regression: any guest program printing the banner made vmm exit with status 3.
    let mut g = Guest::boot(&[]);
    g.sh("echo 'Kernel panic - not syncing: fake'; echo '---[ end Kernel panic - not syncing: fake ]---'");
    g.sh("echo 'Kernel panic - not syncing: fake again' > /dev/console");
    g.send("poweroff -f\n");
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
