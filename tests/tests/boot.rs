//! Linux guests booted by `vmm` inside the emulated host: vCPU and memory sizes, the RTC,
//! power-off, reset (exit or reboot), guest panics, and the config-file form.
#![cfg(target_arch = "aarch64")]

use std::time::{SystemTime, UNIX_EPOCH};

use vmm_tests::guest::{Guest, artifact};

fn mem_total_kib(g: &mut Guest) -> u64 {
    let out = g.sh("grep MemTotal /proc/meminfo");
    let line = out.first().expect("a MemTotal line");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("MemTotal: <KiB> kB")
}

fn power_off(mut g: Guest) {
    g.send("poweroff -f\n");
    let (status, stderr) = g.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "poweroff must end vmm with 0; stderr: {stderr}"
    );
}

/// Boots with `vcpus` and `mib`, checks what the guest sees, powers off.
fn boot_and_check(vcpus: u32, mib: u64) {
    let mut g = Guest::boot(&["--vcpus", &vcpus.to_string(), "--memory", &mib.to_string()]);
    assert_eq!(g.sh("nproc"), vec![vcpus.to_string()]);
    let uname = g.sh("uname -m");
    assert_eq!(uname, vec!["aarch64".to_string()]);
    let total = mem_total_kib(&mut g);
    // MemTotal is RAM minus the kernel image and early reservations (a few percent).
    let ram = mib * 1024;
    let low = (ram * 95 / 100).saturating_sub(64 * 1024);
    assert!(
        (low..=ram).contains(&total),
        "MemTotal {total} KiB for {mib} MiB of RAM"
    );
    power_off(g);
}

#[test]
fn one_vcpu_and_128_mib() {
    boot_and_check(1, 128);
}

#[test]
fn two_vcpus_and_512_mib() {
    boot_and_check(2, 512);
}

#[test]
fn four_vcpus_and_2_gib() {
    boot_and_check(4, 2048);
}

#[test]
fn the_rtc_shows_the_host_date() {
    let mut g = Guest::boot(&[]);
    let guest: i64 = g.sh("date +%s")[0].parse().expect("a number of seconds");
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((guest - host).abs() <= 60, "guest {guest} vs host {host}");
    // The kernel took its time from the PL031 at boot.
    assert!(g.sh("dmesg | grep -c 'rtc-pl031.*setting system clock'")[0] != "0");
    power_off(g);
}

#[test]
fn a_reset_ends_vmm_by_default() {
    let mut g = Guest::boot(&[]);
    g.send("reboot -f\n");
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("the guest reset"), "{stderr}");
}

#[test]
fn a_reset_reboots_with_on_reset_reboot() {
    let mut g = Guest::boot(&["--on-reset", "reboot"]);
    g.sh("echo 1 > /tmp/first-boot");
    g.send("reboot -f\n");
    g.wait_for("GUEST_READY");
    // A fresh boot: the first boot's tmpfs file is gone.
    assert_eq!(
        g.sh("ls /tmp/first-boot 2>&1 | grep -c 'No such file'"),
        vec!["1".to_string()]
    );
    assert_eq!(
        g.transcript
            .iter()
            .filter(|l| l.contains("GUEST_READY"))
            .count(),
        2
    );
    power_off(g);
}

#[test]
fn a_guest_kernel_panic_exits_non_zero_with_its_message() {
    let mut g = Guest::boot(&[]);
    g.send("echo c > /proc/sysrq-trigger\n");
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("the guest kernel panicked"), "{stderr}");
    assert!(stderr.contains("sysrq triggered crash"), "{stderr}");
}

#[test]
fn the_config_file_boots_the_same_guest() {
    let dir = std::env::temp_dir().join(format!("vmm-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("vm.json");
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1"}},
            "machine-config": {{"vcpu_count": 2, "mem_size_mib": 256}}, "drives": []}}"#,
        artifact("GUEST_KERNEL").display(),
        artifact("GUEST_INITRD").display()
    );
    std::fs::write(&cfg, json).expect("write config");
    let mut g = Guest::start(&["--config-file", cfg.to_str().expect("utf-8"), "--no-api"]);
    g.wait_for("GUEST_READY");
    assert_eq!(g.sh("nproc"), vec!["2".to_string()]);
    let total = mem_total_kib(&mut g);
    assert!(
        (192 * 1024..=256 * 1024).contains(&total),
        "MemTotal {total}"
    );
    assert!(g.sh("cat /proc/cmdline")[0].contains("earlycon=uart,mmio,0x9000000"));
    power_off(g);
}

#[test]
fn the_boot_timer_reports_boot_time() {
    let g = Guest::boot(&["--boot-timer"]);
    let (status, stderr) = {
        let mut g = g;
        g.send("poweroff -f\n");
        g.wait_exit()
    };
    assert_eq!(status.code(), Some(0));
    assert!(stderr.contains("Guest-boot-time ="), "{stderr}");
}

#[test]
fn sigterm_stops_vmm() {
    let g = Guest::boot(&[]);
    g.signal(libc::SIGTERM);
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(stderr.contains("stopped by signal"), "{stderr}");
}

#[test]
fn a_gzip_compressed_kernel_is_inflated_on_load() {
    let gz = std::env::temp_dir().join(format!("vmm-Image-{}.gz", std::process::id()));
    let out = std::process::Command::new("gzip")
        .args(["-1", "-c"])
        .arg(artifact("GUEST_KERNEL"))
        .output()
        .expect("run gzip");
    assert!(out.status.success());
    std::fs::write(&gz, &out.stdout).expect("write the gzip kernel");
    let initrd = artifact("GUEST_INITRD");
    let mut g = Guest::start(&[
        "run",
        "--kernel",
        gz.to_str().expect("utf-8"),
        "--initrd",
        initrd.to_str().expect("utf-8"),
    ]);
    g.wait_for("GUEST_READY");
    assert_eq!(g.sh("uname -m"), vec!["aarch64".to_string()]);
    power_off(g);
    let _ = std::fs::remove_file(gz);
}

#[test]
fn the_console_can_go_to_a_file() {
    let log = std::env::temp_dir().join(format!("vmm-console-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let kernel = artifact("GUEST_KERNEL");
    let initrd = artifact("GUEST_INITRD");
    let console = format!("file:{}", log.display());
    let g = Guest::start(&[
        "run",
        "--kernel",
        kernel.to_str().expect("utf-8"),
        "--initrd",
        initrd.to_str().expect("utf-8"),
        "--console",
        &console,
    ]);
    let deadline = std::time::Instant::now() + vmm_tests::guest::PATIENCE;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("GUEST_READY")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the console file never showed GUEST_READY"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        g.transcript.is_empty(),
        "nothing goes to stdout with a file console"
    );
    g.signal(libc::SIGTERM);
    let (status, _) = g.wait_exit();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Linux version")
    );
}
