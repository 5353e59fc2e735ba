//! virtio devices with real files inside the emulated host: booting from the ext4 rootfs,
//! data written in the guest checked from the host, read-only drives, the drive serial,
//! entropy, swapping a running guest's drive through the API, and bad drive input.
#![cfg(target_arch = "aarch64")]

use std::path::{Path, PathBuf};
use std::process::Command;

use vmm_tests::api::{curl, socket_path, wait_ready};
use vmm_tests::guest::{Guest, artifact, refused};

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-dev-{}-{name}", std::process::id()))
}

fn fresh_rootfs(name: &str) -> PathBuf {
    let p = temp(name);
    std::fs::copy(artifact("GUEST_ROOTFS"), &p).expect("copy the rootfs");
    p
}

fn image_of(name: &str, byte: u8, kib: usize) -> PathBuf {
    let p = temp(name);
    std::fs::write(&p, vec![byte; kib * 1024]).expect("write image");
    p
}

fn config_file(name: &str, drives: &str, entropy: bool) -> PathBuf {
    let p = temp(name);
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1"}},
            "machine-config": {{"vcpu_count": 2, "mem_size_mib": 256}},
            "drives": [{drives}]{}}}"#,
        artifact("GUEST_KERNEL").display(),
        artifact("GUEST_INITRD").display(),
        if entropy { r#", "entropy": {}"# } else { "" }
    );
    std::fs::write(&p, json).expect("write config");
    p
}

fn drive(id: &str, path: &Path, root: bool, ro: bool) -> String {
    format!(
        r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": {root}, "is_read_only": {ro}, "cache_type": "Writeback"}}"#,
        path.display()
    )
}

fn power_off(mut g: Guest) {
    g.send("poweroff -f\n");
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn the_guest_boots_from_the_rootfs_and_its_writes_reach_the_image() {
    let root = fresh_rootfs("root.ext4");
    let data = image_of("ro.img", 0x5a, 1024);
    let drives = format!(
        "{}, {}",
        drive("rootfs", &root, true, false),
        drive("data", &data, false, true)
    );
    let cfg = config_file("rootfs.json", &drives, true);
    let metrics = temp("rootfs.metrics");
    let mut g = Guest::start(&[
        "--config-file",
        cfg.to_str().expect("utf-8"),
        "--no-api",
        "--metrics-path",
        metrics.to_str().expect("utf-8"),
    ]);
    g.wait_for("GUEST_READY");
    let mounts = g.sh("grep ' / ' /proc/mounts");
    assert!(
        mounts.iter().any(|l| l.starts_with("/dev/vda / ext4 rw")),
        "{mounts:?}"
    );
    assert_eq!(
        g.sh("cat /sys/block/vda/serial"),
        vec!["rootfs".to_string()]
    );
    // Write data in the guest and keep its checksum.
    let sum = g.sh("dd if=/dev/urandom of=/written.bin bs=4096 count=256 2>/dev/null; sync; sha256sum /written.bin");
    let guest_sum = sum
        .first()
        .and_then(|l| l.split_whitespace().next())
        .expect("a checksum")
        .to_string();
    // The read-only drive: readable, and a write is refused.
    assert_eq!(g.sh("cat /sys/block/vdb/ro"), vec!["1".to_string()]);
    assert_eq!(
        g.sh("dd if=/dev/vdb bs=1024 count=4 2>/dev/null | od -An -tx1 | head -1 | tr -d ' '"),
        vec!["5a".repeat(16)]
    );
    let w = g.sh("dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>&1; echo rc=$?");
    assert!(
        w.last().is_some_and(|l| l != "rc=0"),
        "a write to the read-only drive succeeded: {w:?}"
    );
    // Entropy from virtio-rng.
    assert!(g.sh("cat /sys/class/misc/hw_random/rng_current")[0].starts_with("virtio_rng"));
    assert_eq!(
        g.sh("dd if=/dev/hwrng bs=4096 count=256 2>/dev/null | wc -c"),
        vec!["1048576".to_string()]
    );
    power_off(g);

    // From the host: the file is in the image with the same checksum, and the read-only image is untouched.
    let out = temp("written.bin");
    let st = Command::new("debugfs")
        .args(["-R", &format!("dump /written.bin {}", out.display())])
        .arg(&root)
        .output()
        .expect("run debugfs");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let host_sum = Command::new("sha256sum")
        .arg(&out)
        .output()
        .expect("sha256sum");
    let host_sum = String::from_utf8_lossy(&host_sum.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(host_sum, guest_sum);
    assert!(
        std::fs::read(&data)
            .expect("read image")
            .iter()
            .all(|b| *b == 0x5a)
    );
    // The last metrics line, written at exit, has each device's counters.
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let line: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a line")).expect("JSON");
    assert!(
        line["block_rootfs"]["write_bytes"].as_u64().unwrap_or(0) >= 1 << 20,
        "{line}"
    );
    assert!(
        line["block_data"]["read_bytes"].as_u64().unwrap_or(0) >= 4096,
        "{line}"
    );
    assert!(
        line["entropy"]["entropy_bytes"].as_u64().unwrap_or(0) >= 1 << 20,
        "{line}"
    );
    for p in [root, data, cfg, out, metrics] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn a_running_guests_drive_can_be_swapped_through_the_api() {
    let sock = socket_path("swap");
    let a = image_of("a.img", 0xaa, 1024);
    let b = image_of("b.img", 0xbb, 2048);
    let mut g = Guest::start(&["--api-sock", sock.to_str().expect("utf-8")]);
    wait_ready(&sock);
    let bs = format!(
        r#"{{"kernel_image_path": "{}", "initrd_path": "{}"}}"#,
        artifact("GUEST_KERNEL").display(),
        artifact("GUEST_INITRD").display()
    );
    assert_eq!(curl(&sock, "PUT", "/boot-source", Some(&bs)).0, 204);
    // Bad drives change nothing.
    let (code, body) = curl(
        &sock,
        "PUT",
        "/drives/data",
        Some(&drive("data", Path::new("/nonexistent.img"), false, false)),
    );
    assert_eq!(code, 400);
    assert!(body.contains("cannot open /nonexistent.img"), "{body}");
    assert_eq!(
        curl(
            &sock,
            "PUT",
            "/drives/data",
            Some(&drive("data", &a, false, false))
        )
        .0,
        204
    );
    assert_eq!(
        curl(
            &sock,
            "PUT",
            "/drives/other",
            Some(&drive("data", &a, false, false))
        )
        .0,
        400
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
    assert_eq!(g.sh("cat /sys/block/vda/size"), vec!["2048".to_string()]);
    assert_eq!(
        g.sh("head -c 2 /dev/vda | od -An -tx1 | tr -d ' '"),
        vec!["aaaa".to_string()]
    );
    let patch = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
        b.display()
    );
    assert_eq!(curl(&sock, "PATCH", "/drives/data", Some(&patch)).0, 204);
    g.wait_for("new size");
    assert_eq!(g.sh("cat /sys/block/vda/size"), vec!["4096".to_string()]);
    assert_eq!(
        g.sh("echo 3 > /proc/sys/vm/drop_caches; head -c 2 /dev/vda | od -An -tx1 | tr -d ' '"),
        vec!["bbbb".to_string()]
    );
    let (code, _) = curl(
        &sock,
        "PATCH",
        "/drives/data",
        Some(r#"{"drive_id": "data", "path_on_host": "/nonexistent"}"#),
    );
    assert_eq!(code, 400);
    assert_eq!(
        g.sh("head -c 2 /dev/vda | od -An -tx1 | tr -d ' '"),
        vec!["bbbb".to_string()],
        "a failed swap keeps the drive"
    );
    power_off(g);
    for p in [a, b] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn a_config_file_with_a_missing_image_is_refused() {
    let cfg = config_file(
        "missing.json",
        &drive("rootfs", Path::new("/nonexistent/root.ext4"), true, false),
        false,
    );
    let (code, stderr) = refused(&["--config-file", cfg.to_str().expect("utf-8"), "--no-api"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("drive rootfs: cannot open /nonexistent/root.ext4"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn a_1_mib_per_second_disk_limit_holds() {
    // 11 MiB: the full bucket (1 MiB) goes at once, the other 10 MiB take about 10 s.
    let img = image_of("limited.img", 0x11, 11 * 1024);
    let spec = format!("id=slow,path={},ro,bw=1048576", img.display());
    let mut g = Guest::boot(&["--drive", &spec]);
    let out = g.sh(
        "s=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=65536 2>/dev/null; \
         e=$(cut -d' ' -f1 /proc/uptime); echo $s $e",
    );
    let times: Vec<f64> = out
        .last()
        .expect("times")
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    let secs = times[1] - times[0];
    println!(
        "read 11 MiB in {secs:.2} s: {:.3} MiB/s against a 1 MiB/s limit",
        11.0 / secs
    );
    // The bucket's arithmetic: 1 MiB of burst, then 1 MiB per second, so the other 10 MiB
    // cannot take less than 10 s of guest time (less 0.01 s, the clock's resolution). A
    // slow machine only makes it longer, so there is no upper bound.
    assert!(
        secs >= 9.99,
        "11 MiB in {secs} s: faster than a 1 MiB/s limit allows"
    );
    power_off(g);
    let _ = std::fs::remove_file(img);
}

fn host(cmd: &str) {
    let out = Command::new("bash")
        .args(["-c", cmd])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_guest_network_reaches_the_host_through_a_tap() {
    host(
        "ip tuntap add dev vmtap0 mode tap vnet_hdr && ip addr add 172.30.0.1/24 dev vmtap0 && ip link set vmtap0 up",
    );
    let cfg = temp("net.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}"}},
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 512}},
                "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "vmtap0", "guest_mac": "06:00:ac:1e:00:02"}}]}}"#,
            artifact("GUEST_KERNEL").display(),
            artifact("GUEST_INITRD").display()
        ),
    )
    .expect("write config");
    let mut g = Guest::start(&["--config-file", cfg.to_str().expect("utf-8"), "--no-api"]);
    g.wait_for("GUEST_READY");
    assert_eq!(
        g.sh("cat /sys/class/net/eth0/address"),
        vec!["06:00:ac:1e:00:02".to_string()]
    );
    // The driver took checksum and segmentation offloads, mergeable buffers and event indices.
    let features = g.sh("cat /sys/class/net/eth0/device/features");
    let bits = features.first().map(String::as_bytes).unwrap_or_default();
    for (bit, name) in [
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (7, "GUEST_TSO4"),
        (11, "HOST_TSO4"),
        (15, "MRG_RXBUF"),
        (29, "EVENT_IDX"),
    ] {
        assert_eq!(bits.get(bit), Some(&b'1'), "{name} in {features:?}");
    }
    g.sh("ip addr add 172.30.0.2/24 dev eth0; ip link set eth0 up");
    let ping = g.sh("ping -c 3 -W 5 172.30.0.1 >/dev/null 2>&1; echo rc=$?");
    assert_eq!(ping, vec!["rc=0".to_string()], "the guest pings the host");

    // 50 MiB guest to host.
    let recv = temp("recv.bin");
    let mut listener = Command::new("socat")
        .args(["-u", "TCP-LISTEN:9000,reuseaddr"])
        .arg(format!("OPEN:{},creat,trunc", recv.display()))
        .spawn()
        .expect("socat listen");
    let sum =
        g.sh("dd if=/dev/urandom of=/tmp/up.bin bs=1M count=50 2>/dev/null; sha256sum /tmp/up.bin");
    let up_sum = sum[0].split_whitespace().next().expect("sum").to_string();
    let tx_before = guest_counter(&mut g, "tx_packets");
    g.sh("nc -w 10 172.30.0.1 9000 < /tmp/up.bin; rm /tmp/up.bin");
    let tx_frames = guest_counter(&mut g, "tx_packets") - tx_before;
    // 50 MiB in 1500-byte frames would be over 36,000 of them.
    assert!(
        tx_frames < 20_000,
        "{tx_frames} frames for 50 MiB: the guest did not segment-offload"
    );
    let _ = listener.wait();
    assert_eq!(
        sha256_of(&recv),
        up_sum,
        "50 MiB from the guest arrive intact"
    );

    // 50 MiB host to guest.
    let send = temp("send.bin");
    host(&format!(
        "dd if=/dev/urandom of={} bs=1M count=50 2>/dev/null",
        send.display()
    ));
    // The quotes keep the echoed command line from matching the marker.
    let rx_before = guest_counter(&mut g, "rx_packets");
    g.send("(nc -l -p 9001 > /tmp/down.bin; echo DOWN''_DONE) &\n");
    let mut sent = false;
    for _ in 0..100 {
        let st = Command::new("socat")
            .args([
                "-u",
                &format!("FILE:{}", send.display()),
                "TCP:172.30.0.2:9001",
            ])
            .status()
            .expect("socat send");
        if st.success() {
            sent = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(sent, "the guest listener was never reached");
    g.wait_for("DOWN_DONE");
    let rx_frames = guest_counter(&mut g, "rx_packets") - rx_before;
    assert!(
        rx_frames < 20_000,
        "{rx_frames} frames for 50 MiB: the tap did not pass large segments"
    );
    let down = g.sh("sha256sum /tmp/down.bin");
    assert_eq!(
        down[0].split_whitespace().next().unwrap_or_default(),
        sha256_of(&send),
        "50 MiB to the guest arrive intact"
    );
    power_off(g);
    let _ = Command::new("ip").args(["link", "del", "vmtap0"]).status();
    for p in [cfg, recv, send] {
        let _ = std::fs::remove_file(p);
    }
}

/// A counter of the guest's eth0 (/sys/class/net/eth0/statistics).
fn guest_counter(g: &mut Guest, name: &str) -> u64 {
    let out = g.sh(&format!("cat /sys/class/net/eth0/statistics/{name}"));
    out.first()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no {name} counter: {out:?}"))
        .expect("an eth0 counter")
}

/// Runs `vmm-guest-tool send` in the guest against a host socat sink; returns MiB/s.
fn guest_send_rate(g: &mut Guest, port: u16, mib: u32) -> f64 {
    let mut sink = Command::new("socat")
        .args([
            "-u",
            &format!("TCP-LISTEN:{port},reuseaddr"),
            "OPEN:/dev/null",
        ])
        .spawn()
        .expect("socat sink");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = g.sh(&format!("vmm-guest-tool send tcp:172.31.0.1:{port} {mib}"));
    let _ = sink.wait();
    println!("send: {out:?}");
    out.iter()
        .find_map(|l| l.strip_prefix("SEND_MIBS "))
        .and_then(|v| v.trim().parse().ok())
        .expect("vmm-guest-tool printed no SEND_MIBS line")
}

#[test]
fn net_rate_limiters_hold_and_can_be_replaced_while_running() {
    host(
        "ip tuntap add dev vmtap1 mode tap vnet_hdr && ip addr add 172.31.0.1/24 dev vmtap1 && ip link set vmtap1 up",
    );
    let cfg = temp("netlimit.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}"}},
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 256}},
                "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "vmtap1",
                    "tx_rate_limiter": {{"bandwidth": {{"size": 1048576, "refill_time": 1000}}}}}}]}}"#,
            artifact("GUEST_KERNEL").display(),
            artifact("GUEST_INITRD").display()
        ),
    )
    .expect("write config");
    let sock = socket_path("netlimit");
    let mut g = Guest::start(&[
        "--config-file",
        cfg.to_str().expect("utf-8"),
        "--api-sock",
        sock.to_str().expect("utf-8"),
    ]);
    g.wait_for("GUEST_READY");
    g.sh("ip addr add 172.31.0.2/24 dev eth0; ip link set eth0 up; ping -c 1 -W 5 172.31.0.1 >/dev/null");
    // 1 MiB of burst, then 1 MiB/s: 4 MiB take at least 3 s, so at most 1.34 MiB/s.
    let limited = guest_send_rate(&mut g, 9100, 4);
    assert!(
        limited < 1.34,
        "4 MiB at {limited} MiB/s under a 1 MiB/s limit"
    );

    for (body, want) in [
        (
            r#"{"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": -1, "refill_time": 1000}}}"#,
            "invalid",
        ),
        (r#"{"iface_id": "eth0"}"#, "changes nothing"),
        (r#"{"iface_id": "eth9", "rx_rate_limiter": {}}"#, "differs"),
    ] {
        let (code, text) = curl(&sock, "PATCH", "/network-interfaces/eth0", Some(body));
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains(want), "{body}: {text}");
    }
    let (code, text) = curl(
        &sock,
        "PATCH",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0", "tx_rate_limiter": {}}"#),
    );
    assert_eq!(code, 204, "{text}");
    // Under the old limit 8 MiB would take at least 7 s (1.15 MiB/s at most): anything
    // faster proves the limit was lifted.
    let free = guest_send_rate(&mut g, 9101, 8);
    assert!(
        free > 1.15,
        "lifting the limit: {free} MiB/s against {limited} MiB/s"
    );
    let (_, text) = curl(&sock, "GET", "/vm/config", None);
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert!(
        v["network-interfaces"][0]["tx_rate_limiter"].is_null(),
        "{text}"
    );
    power_off(g);
    let _ = Command::new("ip").args(["link", "del", "vmtap1"]).status();
    let _ = std::fs::remove_file(cfg);
}
