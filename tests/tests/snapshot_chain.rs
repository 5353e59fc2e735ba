//! Snapshots in sequence inside the emulated host: ten snapshot/load cycles of one guest, each
//! checked, and a Full snapshot followed by a Diff that, laid over the Full memory file with
//! `vmm snapshot rebase`, loads the same guest while holding only the dirtied pages.
#![cfg(target_arch = "aarch64")]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmm_tests::api::socket_path;
use vmm_tests::guest::{Guest, vmm_bin};
use vmm_tests::snap::{boot, create, hold_status, load, patch_vm, scratch};

/// Whether the guest's `hold` pattern and clock are intact, and its counters.
fn hold(g: &mut Guest) -> (bool, Vec<u64>) {
    let h = hold_status(g);
    (h.ok(), h.counters)
}

#[test]
fn ten_snapshot_load_cycles_in_a_chain() {
    let dir = scratch("ten");
    let sock = socket_path("chain-0");
    let mut g = boot(&sock, r#"{"vcpu_count": 1, "mem_size_mib": 128}"#, &[]);
    g.send("vmm-guest-tool hold 16 &\n");
    g.wait_for("HOLD_READY");
    g.sh("echo 0 > /tmp/cycle");
    let (ok, mut last) = hold(&mut g);
    assert!(ok);
    let mut sock = sock;
    for cycle in 1..=10 {
        // Each generation leaves a mark that the next must find.
        g.sh(&format!("echo {cycle} >> /tmp/cycle"));
        let up_before = uptime(&mut g);
        patch_vm(&sock, "Paused");
        let (state, mem) = (dir.join(format!("s{cycle}")), dir.join(format!("m{cycle}")));
        create(&sock, "Full", &state, &mem);
        g.signal(libc::SIGKILL);
        let _ = g.wait_exit();
        if cycle > 1 {
            let _ = std::fs::remove_file(dir.join(format!("m{}", cycle - 1)));
        }
        // The last two cycles wait 8 s between snapshot and load: without clock_realtime
        // the guest's clock continues from the snapshot, with it the clock moves on by the
        // time that passed.
        let realtime = cycle == 10;
        if cycle >= 9 {
            std::thread::sleep(Duration::from_secs(8));
        }
        let extra = if realtime {
            r#", "clock_realtime": true"#
        } else {
            ""
        };
        let (next, s) = load(&format!("chain-{cycle}"), &state, &mem, extra);
        (g, sock) = (next, s);
        let up_after = uptime(&mut g);
        if cycle == 9 {
            assert!(
                up_after - up_before < 8.0,
                "the clock jumped without clock_realtime: {up_before} -> {up_after}"
            );
        }
        if realtime {
            assert!(
                up_after - up_before >= 8.0,
                "clock_realtime did not move the clock on: {up_before} -> {up_after}"
            );
        }
        let marks = g.sh("tr '\\n' ' ' < /tmp/cycle");
        let want: Vec<String> = (0..=cycle).map(|c| c.to_string()).collect();
        assert_eq!(marks, vec![want.join(" ") + " "], "cycle {cycle}");
        let (ok, counters) = hold(&mut g);
        assert!(ok, "cycle {cycle}: the pattern or the clock broke");
        assert!(
            counters[0] > last[0],
            "cycle {cycle}: the counter went from {last:?} to {counters:?}"
        );
        last = counters;
    }
    g.send("poweroff -f\n");
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// The guest's CLOCK_BOOTTIME in seconds (`/proc/uptime`).
fn uptime(g: &mut Guest) -> f64 {
    let out = g.sh("cut -d' ' -f1 /proc/uptime");
    out.first()
        .and_then(|l| l.trim().parse().ok())
        .expect("an uptime")
}

fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").blocks() * 512
}

#[test]
fn a_diff_over_its_full_base_gives_the_same_guest() {
    let dir = scratch("diff");
    let sock = socket_path("diff-a");
    let mut g = boot(
        &sock,
        r#"{"vcpu_count": 1, "mem_size_mib": 256, "track_dirty_pages": true}"#,
        &[],
    );
    g.send("vmm-guest-tool hold 64 &\n");
    g.wait_for("HOLD_READY");
    patch_vm(&sock, "Paused");
    let (base_state, base) = (dir.join("base.state"), dir.join("base.mem"));
    create(&sock, "Full", &base_state, &base);
    patch_vm(&sock, "Resumed");
    // Dirty 1 MiB the guest can check later.
    let sum =
        g.sh("dd if=/dev/urandom of=/tmp/new bs=4096 count=256 2>/dev/null; sha256sum /tmp/new");
    let before = sum.first().expect("a checksum").clone();
    patch_vm(&sock, "Paused");
    let (diff_state, diff) = (dir.join("diff.state"), dir.join("diff.mem"));
    create(&sock, "Diff", &diff_state, &diff);
    g.signal(libc::SIGKILL);
    let _ = g.wait_exit();

    // The diff holds the dirtied pages, not the guest's 64 MiB of pattern nor its 256 MiB.
    let (d, b) = (allocated(&diff), allocated(&base));
    println!("full memory file: {b} bytes allocated; diff: {d}");
    assert!(b >= 64 << 20, "the base holds the pattern: {b}");
    assert!(
        d >= 1 << 20,
        "the diff holds at least the 1 MiB written: {d}"
    );
    assert!(
        d < 24 << 20,
        "the diff holds more than the dirtied pages: {d}"
    );

    let out = Command::new(vmm_bin())
        .args(["snapshot", "rebase", "--memory-path"])
        .arg(&base)
        .arg("--diff-path")
        .arg(&diff)
        .output()
        .expect("run vmm snapshot rebase");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut h, sock2) = load(
        "diff-b",
        &diff_state,
        &base,
        r#", "track_dirty_pages": true"#,
    );
    let (ok, _) = hold(&mut h);
    assert!(ok, "the pattern is intact after base + diff");
    assert_eq!(h.sh("sha256sum /tmp/new"), vec![before]);
    // Loaded with tracking, the next Diff holds what was written since the load, on top of
    // the memory file it was loaded from, not all of memory.
    h.sh("dd if=/dev/urandom of=/tmp/newer bs=4096 count=64 2>/dev/null");
    patch_vm(&sock2, "Paused");
    let (diff2_state, diff2) = (dir.join("diff2.state"), dir.join("diff2.mem"));
    create(&sock2, "Diff", &diff2_state, &diff2);
    let d2 = allocated(&diff2);
    println!("diff after the load: {d2} bytes allocated");
    assert!(
        (256 << 10..24 << 20).contains(&d2),
        "a Diff after a load holds {d2} bytes"
    );
    patch_vm(&sock2, "Resumed");
    let _ = h.collect_for(Duration::from_millis(100));
    h.send("poweroff -f\n");
    let (status, stderr) = h.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
}
