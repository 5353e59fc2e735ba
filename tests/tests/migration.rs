//! Live migration inside the emulated host, with real KVM, real guests and real TCP over
//! loopback: a guest with a disk, a tap and vsock moves between two VMM processes (idle,
//! with a dirtier that converges, with one that converges only through auto-converge) and
//! carries on: its memory pattern verifies, its counters continued, its file is intact, it
//! answers pings through the destination's tap, a new vsock connection works, and its clock
//! never went backwards.
#![cfg(target_arch = "aarch64")]

use std::path::Path;
use std::process::Command;

use vmm_tests::api::get_json;
use vmm_tests::guest::{Guest, artifact};
use vmm_tests::migrate::{dirty_status, free_port, receive, report, send, start_dirtier};
use vmm_tests::snap::{boot, connect_guest, echo, hold_status, host, lines_of_grow, scratch};

/// A packet socket on `ifname` that receives RARP frames (what a migrated guest's VMM
/// broadcasts from the guest's MAC).
fn rarp_listener(ifname: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let proto = 0x8035u16.to_be();
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).expect("a name");
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "no interface {ifname}");
    // SAFETY: sockaddr_ll is plain data, filled in below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the length given.
    let r = unsafe {
        libc::bind(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    owned
}

/// Whether a RARP frame from `mac` has arrived on the listener.
fn rarp_seen(fd: &std::os::fd::OwnedFd, mac: [u8; 6]) -> bool {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: receives at most `buf.len()` bytes into `buf`, without blocking.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 14 {
            return false;
        }
        if buf[6..12] == mac && buf[12..14] == [0x80, 0x35] {
            return true;
        }
    }
}

fn pings(addr: &str) -> bool {
    Command::new("ping")
        .args(["-c", "3", "-i", "0.3", "-W", "5", addr])
        .status()
        .is_ok_and(|s| s.success())
}

/// Everything the guest promises after a move, against what it showed before.
struct Before {
    counters: Vec<u64>,
    grown: u64,
}

fn check_after(g: &mut Guest, before: &Before, uds: &Path, what: &str) -> Before {
    let hold = hold_status(g);
    assert!(
        hold.ok(),
        "{what}: the pattern or the clock broke: {hold:?}"
    );
    for (i, (b, a)) in before.counters.iter().zip(&hold.counters).enumerate() {
        assert!(
            a > b,
            "{what}: CPU {i}'s counter did not continue: {b} -> {a}"
        );
    }
    let (grown, bad) = lines_of_grow(g);
    assert!(
        grown > before.grown && bad == 0,
        "{what}: the file: {grown} lines, {bad} bad"
    );
    assert!(
        pings("172.30.0.2"),
        "{what}: the guest does not answer pings"
    );
    let mut s = connect_guest(uds, 5000);
    echo(&mut s, &format!("after {what}\n"));
    Before {
        counters: hold.counters,
        grown,
    }
}

/// Moves the guest of the vmm at `from` to a new `vmm receive` using `tap` and `uds`;
/// returns the destination, its socket and `vmm send`'s output.
fn migrate(
    from: Guest,
    from_sock: &Path,
    tag: &str,
    tap: &str,
    uds: &Path,
    send_args: &[&str],
) -> (Guest, std::path::PathBuf, String) {
    let port = free_port();
    let net = format!("eth0={tap}");
    let (to, to_sock) = receive(
        tag,
        port,
        &[
            "--net-override",
            &net,
            "--vsock-override",
            uds.to_str().expect("utf-8"),
        ],
    );
    let sent = send(from_sock, port, send_args);
    assert_eq!(
        sent.code,
        Some(0),
        "vmm send: {}{}",
        sent.stdout,
        sent.stderr
    );
    assert!(
        sent.stdout
            .contains(&format!("migrated to tcp:127.0.0.1:{port}")),
        "{}",
        sent.stdout
    );
    let (status, stderr) = from.wait_exit();
    assert_eq!(status.code(), Some(0), "the source: {stderr}");
    assert!(
        stderr.contains(&format!("migration to tcp:127.0.0.1:{port} complete")),
        "the source names the destination: {stderr}"
    );
    let r = report(&to_sock);
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(get_json(&to_sock, "/")["state"], "Running");
    (to, to_sock, sent.stdout)
}

#[test]
fn a_busy_guest_moves_between_processes_and_carries_on() {
    let dir = scratch("mig-busy");
    let disk = dir.join("disk.ext4");
    std::fs::copy(artifact("GUEST_ROOTFS"), &disk).expect("copy the disk");
    let (uds_a, uds_b) = (dir.join("a.sock"), dir.join("b.sock"));
    host(
        "ip link add brmig type bridge && ip addr add 172.30.0.1/24 dev brmig && ip link set brmig up \
         && for t in vmtapma vmtapmb; do ip tuntap add dev $t mode tap vnet_hdr && ip link set $t master brmig && ip link set $t up; done",
    );
    let sock_a = vmm_tests::api::socket_path("mig-a");
    let mut g = boot(
        &sock_a,
        r#"{"vcpu_count": 2, "mem_size_mib": 1024}"#,
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
                r#"{"iface_id": "eth0", "host_dev_name": "vmtapma", "guest_mac": "06:00:ac:1e:00:02"}"#
                    .to_string(),
            ),
            (
                "/vsock",
                format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, uds_a.display()),
            ),
        ],
    );
    g.sh("ip addr add 172.30.0.2/24 dev eth0; ip link set eth0 up");
    g.sh("mount /dev/vda /mnt && rm -f /mnt/grow");
    g.send("(while true; do echo line >> /mnt/grow; sync; sleep 0.5; done) &\n");
    g.send("vmm-guest-tool vsock-echo 5000 &\n");
    g.wait_for("VSOCK_ECHO_READY");
    g.send("vmm-guest-tool hold 16 &\n");
    g.wait_for("HOLD_READY");
    assert!(pings("172.30.0.2"), "the guest answers before the move");
    let hold = hold_status(&mut g);
    assert!(hold.ok(), "{hold:?}");
    let (grown, _) = lines_of_grow(&mut g);
    let mut before = Before {
        counters: hold.counters,
        grown,
    };

    // 0. A destination without the disk refuses before any page moves, naming it; the
    //    guest runs on here (checked with everything else after the next move).
    {
        let port = free_port();
        let (d, _) = receive(
            "mig-nodisk",
            port,
            &[
                "--drive-override",
                "data=/nonexistent/disk.ext4",
                "--net-override",
                "eth0=vmtapmb",
            ],
        );
        let sent = send(&sock_a, port, &[]);
        assert_eq!(sent.code, Some(1), "{}{}", sent.stdout, sent.stderr);
        assert!(
            sent.stderr.contains("refused the guest")
                && sent
                    .stderr
                    .contains("drive data: cannot open /nonexistent/disk.ext4"),
            "the source names the missing disk: {}",
            sent.stderr
        );
        let (status, stderr) = d.wait_exit();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("/nonexistent/disk.ext4"),
            "the destination names it too: {stderr}"
        );
        assert_eq!(report(&sock_a)["state"], "failed");
    }

    // 1. Idle (but for the workloads above), A to B. The destination announces the guest's
    //    MAC on the network (a RARP broadcast through its tap, seen on the bridge).
    let rarp = rarp_listener("brmig");
    let (mut h, sock_b, out) = migrate(g, &sock_a, "mig-b", "vmtapmb", &uds_b, &[]);
    assert!(
        rarp_seen(&rarp, [0x06, 0, 0xac, 0x1e, 0, 2]),
        "no RARP announcement from the guest's MAC reached the bridge"
    );
    assert!(out.contains("round"), "progress lines: {out}");
    before = check_after(&mut h, &before, &uds_b, "the idle move");

    // 2. With a dirtier that converges (8 MiB rewritten at 4 MiB/s), B to A.
    start_dirtier(&mut h, 8, 4);
    let (mut g, sock_a2, _) = migrate(h, &sock_b, "mig-a2", "vmtapma", &uds_a, &[]);
    let (pages, _, bad) = dirty_status(&mut g);
    assert_eq!(
        (pages, bad),
        (8 * 256, 0),
        "every dirtied page arrived whole"
    );
    before = check_after(
        &mut g,
        &before,
        &uds_a,
        "the move under a converging dirtier",
    );

    // 3. A dirtier faster than a capped link: only auto-converge gets it across, A to B.
    g.sh("kill $(cat /tmp/dirty.pid)");
    start_dirtier(&mut g, 8, 0);
    let (mut h, sock_b2, out) = migrate(
        g,
        &sock_a2,
        "mig-b2",
        "vmtapmb",
        &uds_b,
        &["--max-bandwidth", "4", "--downtime-ms", "100"],
    );
    let throttled = out.lines().any(|l| {
        l.split("throttle")
            .nth(1)
            .and_then(|t| t.trim_start().split('%').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| p > 0)
    });
    assert!(throttled, "the throttle was reported above 0%: {out}");
    let (_, _, bad) = dirty_status(&mut h);
    assert_eq!(bad, 0, "every dirtied page arrived whole");
    check_after(&mut h, &before, &uds_b, "the auto-converged move");

    h.send("poweroff -f\n");
    let (status, stderr) = h.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("net_eth0: announced the guest's MAC with a RARP broadcast"),
        "the destination announced the guest: {stderr}"
    );
    let _ = std::fs::remove_file(&sock_b2);
    host("ip link del vmtapma; ip link del vmtapmb; ip link del brmig");
}

#[test]
fn twenty_migrations_back_and_forth_each_verified() {
    let sock = vmm_tests::api::socket_path("mig-20-0");
    let mut g = boot(&sock, r#"{"vcpu_count": 1, "mem_size_mib": 128}"#, &[]);
    g.send("vmm-guest-tool hold 4 &\n");
    g.wait_for("HOLD_READY");
    start_dirtier(&mut g, 2, 1);
    let mut counters = hold_status(&mut g).counters;
    let mut from_sock = sock;
    for i in 1..=20 {
        let port = free_port();
        let (mut d, d_sock) = receive(&format!("mig-20-{i}"), port, &[]);
        let sent = send(&from_sock, port, &[]);
        assert_eq!(
            sent.code,
            Some(0),
            "move {i}: {}{}",
            sent.stdout,
            sent.stderr
        );
        let (status, stderr) = g.wait_exit();
        assert_eq!(status.code(), Some(0), "move {i}: the source: {stderr}");
        let hold = hold_status(&mut d);
        assert!(hold.ok(), "move {i}: {hold:?}");
        assert!(
            hold.counters[0] > counters[0],
            "move {i}: the counter went {counters:?} -> {:?}",
            hold.counters
        );
        counters = hold.counters;
        // Every fifth move, the dirtier's pages too (each check reads them all, slowly
        // under nested emulation).
        if i % 5 == 0 {
            let (_, _, bad) = dirty_status(&mut d);
            assert_eq!(bad, 0, "move {i}: the dirtier's pages");
        }
        let _ = std::fs::remove_file(&from_sock);
        g = d;
        from_sock = d_sock;
    }
    g.send("poweroff -f\n");
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
}
