//! `cargo xtask bench`: boot figures of vmm and of Debian's arm64 QEMU (`-accel kvm -M virt`)
//! on the same kernel and initramfs, inside one emulated host running with -icount so the
//! figures repeat. Absolute times under emulation mean little; the ratios and bytes are the
//! point. Targets: VMM overhead at most 5 MiB, and the VMM's own setup at most 10% of boot.

use std::collections::BTreeMap;
use std::fs;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::artifacts;
use crate::cache::Cache;
use crate::qemu::{self, HostSpec};

const OVERHEAD_TARGET_KIB: f64 = 5.0 * 1024.0;
const SETUP_SHARE_TARGET: f64 = 0.10;

/// Per VMM ("vmm", "qemu"), per metric, the values of each run.
pub type Samples = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

/// Reads `BENCH <who> <run> key=value...` lines.
pub fn parse(lines: &[String]) -> Samples {
    let mut out: Samples = BTreeMap::new();
    for l in lines {
        let mut words = l.split_whitespace();
        if words.next() != Some("BENCH") {
            continue;
        }
        let (Some(who), Some(_run)) = (words.next(), words.next()) else {
            continue;
        };
        for kv in words {
            if let Some((k, v)) = kv.split_once('=') {
                if let Ok(v) = v.parse::<f64>() {
                    out.entry(who.to_string())
                        .or_default()
                        .entry(k.to_string())
                        .or_default()
                        .push(v);
                }
            }
        }
    }
    out
}

/// The median of some values.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn get(s: &Samples, who: &str, key: &str) -> Option<f64> {
    s.get(who).and_then(|m| m.get(key)).and_then(|v| median(v))
}

fn fmt(v: Option<f64>, scale: f64, unit: &str) -> String {
    v.map(|v| format!("{:.1} {unit}", v / scale))
        .unwrap_or_else(|| "-".into())
}

/// Two decimals, for per-MiB CPU figures near 1 ms.
fn fmt2(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

/// Runs the benchmark and reports.
pub fn run(runs: u32, timeout: Duration, only: &[String]) -> Result<ExitCode> {
    let phase = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let cache = Cache::open()?;
    let art = artifacts::ensure(&cache)?;
    crate::setup::ensure_rust()?;
    // The release build, as users run it: comparing a debug build with QEMU would be unfair.
    let mut payload = qemu::Payload {
        files: vec![(
            "usr/local/bin/vmm".into(),
            crate::cross::build_vmm_release()?,
            0o755,
        )],
        ..Default::default()
    };
    payload.parts.push(artifacts::ensure_qemu_anchor(&cache)?);
    payload.files.push((
        "usr/local/bin/api-load".into(),
        crate::cross::build_test_bin("api-load")?,
        0o755,
    ));
    crate::add_guest_tool(&mut payload, &art)?;
    payload.env.push(("BENCH_RUNS".into(), runs.to_string()));
    payload.env.push(("BENCH_ONLY".into(), only.join(",")));
    let spec = HostSpec {
        name: "bench".into(),
        cpu: "max".into(),
        cntfrq: None,
        smp: 2,
        mem_mib: 3072,
        icount: true,
        timeout,
        link: None,
        forwards: Vec::new(),
    };
    let mut lines = Vec::new();
    let mut sink = |l: &str| {
        if l.starts_with("BENCH ") {
            println!("{l}");
        }
        lines.push(l.to_string());
    };
    let out = qemu::run(
        &spec,
        &art,
        &payload,
        include_str!("../../resources/bench.sh"),
        &mut sink,
    )?;
    if out.status != 0 {
        for l in lines.iter().rev().take(30).rev() {
            eprintln!("{l}");
        }
        bail!("the benchmark script failed with status {}", out.status);
    }
    let s = parse(&lines);
    if phase("boot") && !s.contains_key("vmm") {
        bail!("the benchmark produced no vmm figures");
    }
    if lines
        .iter()
        .any(|l| l.starts_with("BENCH ") && !l.contains("exit=0"))
    {
        bail!("a benchmark boot did not end with exit status 0");
    }

    let ready = (get(&s, "vmm", "ready_us"), get(&s, "qemu", "ready_us"));
    let overhead = (
        get(&s, "vmm", "overhead_kib"),
        get(&s, "qemu", "overhead_kib"),
    );
    let setup = get(&s, "vmm", "setup_us");
    let boot = get(&s, "vmm", "boot_timer_us");
    let share = setup.zip(boot).map(|(a, b)| a / b);
    let api_ready = get(&s, "vmm-api", "api_ready_us");
    let api_share = api_ready.zip(boot).map(|(a, b)| a / b);
    let (p50, p99) = (get(&s, "vmm-api", "p50_us"), get(&s, "vmm-api", "p99_us"));
    let api_overhead = get(&s, "vmm-api", "overhead_kib");
    let api_thread_kib = api_overhead.zip(overhead.0).map(|(a, b)| a - b);
    let ratio = |p: (Option<f64>, Option<f64>)| {
        p.0.zip(p.1)
            .map(|(a, b)| format!("{:.2}", a / b))
            .unwrap_or("-".into())
    };

    println!(
        "\nboot benchmark: vmm release build, 1 vCPU, 128 MiB, median of {runs} runs, -icount (virtual time)"
    );
    println!("| metric | vmm | QEMU (-accel kvm -M virt) | vmm/QEMU | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| start to GUEST_READY on the console | {} | {} | {} | |",
        fmt(ready.0, 1000.0, "ms"),
        fmt(ready.1, 1000.0, "ms"),
        ratio(ready)
    );
    println!(
        "| start to first KVM_RUN | {} | - | - | |",
        fmt(setup, 1000.0, "ms")
    );
    println!(
        "| start to boot-timer write | {} | - | - | |",
        fmt(boot, 1000.0, "ms")
    );
    println!(
        "| setup share of boot | {} | - | - | <= 10% |",
        share
            .map(|v| format!("{:.2}%", v * 100.0))
            .unwrap_or("-".into())
    );
    println!(
        "| memory overhead (RSS outside guest RAM) | {} | {} | {} | <= 5 MiB |",
        fmt(overhead.0, 1.0, "KiB"),
        fmt(overhead.1, 1.0, "KiB"),
        ratio(overhead)
    );

    println!(
        "\nAPI: the same boot through `vmm --api-sock --config-file`, then GET / from 10 keep-alive clients"
    );
    println!("| metric | vmm | target |");
    println!("|---|---|---|");
    println!(
        "| start to API socket ready | {} | |",
        fmt(api_ready, 1000.0, "ms")
    );
    println!(
        "| API ready / boot time | {} | <= 10% |",
        api_share
            .map(|v| format!("{:.2}%", v * 100.0))
            .unwrap_or("-".into())
    );
    println!("| GET / latency, median | {} | |", fmt(p50, 1.0, "us"));
    println!("| GET / latency, p99 | {} | |", fmt(p99, 1.0, "us"));
    println!(
        "| memory overhead with the API | {} | <= 5 MiB |",
        fmt(api_overhead, 1.0, "KiB")
    );
    println!(
        "| API thread's share of the overhead | {} | |",
        fmt(api_thread_kib, 1.0, "KiB")
    );

    let blk = |who: &str, key: &str| get(&s, who, key);
    let (wv, wq) = (
        blk("blk-vmm", "write_mib_s"),
        blk("blk-qemu", "write_mib_s"),
    );
    let (rv, rq) = (blk("blk-vmm", "read_mib_s"), blk("blk-qemu", "read_mib_s"));
    let (cv, cq) = (
        blk("blk-vmm", "cpu_ms_per_mib"),
        blk("blk-qemu", "cpu_ms_per_mib"),
    );
    println!(
        "\nblock: {} passes each of a 128 MiB sequential write (then fsync) and read in 1 MiB O_DIRECT requests on a 128 MiB raw image, virtio-blk over virtio-mmio",
        blk("blk-vmm", "passes").map_or("-".into(), |p| format!("{p:.0}"))
    );
    println!("| metric | vmm | QEMU | vmm/QEMU | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| write MiB/s | {} | {} | {} | >= QEMU |",
        fmt(wv, 1.0, ""),
        fmt(wq, 1.0, ""),
        ratio((wv, wq))
    );
    println!(
        "| read MiB/s | {} | {} | {} | >= QEMU |",
        fmt(rv, 1.0, ""),
        fmt(rq, 1.0, ""),
        ratio((rv, rq))
    );
    println!(
        "| VMM CPU ms per MiB moved | {} | {} | {} | |",
        fmt2(cv),
        fmt2(cq),
        ratio((cv, cq))
    );
    let (pv, pq) = (
        blk("blk-vmm", "poll_ms_per_mib"),
        blk("blk-qemu", "poll_ms_per_mib"),
    );
    println!(
        "| of which KVM halt polling in vCPU threads, ms per MiB | {} | {} | {} | |",
        fmt2(pv),
        fmt2(pq),
        ratio((pv, pq))
    );

    let iops = (
        blk("blk-vmm", "randread_iops"),
        blk("blk-qemu", "randread_iops"),
    );
    println!(
        "| 4 KiB random read IOPS (O_DIRECT, 5 s) | {} | {} | {} | >= QEMU |",
        fmt(iops.0, 1.0, ""),
        fmt(iops.1, 1.0, ""),
        ratio(iops)
    );
    let mut streams = serde_json::Map::new();
    println!(
        "\nstreams: the guest sends 256 MiB to a host sink (MiB/s in guest time; VM process CPU per MiB)"
    );
    println!(
        "| stream | vmm MiB/s | QEMU MiB/s | vmm/QEMU | vmm CPU ms/MiB | QEMU CPU ms/MiB | target |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (kind, what) in [
        (
            "net",
            "TCP over virtio-net on a tap (QEMU: virtio-net-device, no vhost)",
        ),
        (
            "vsock",
            "vsock (vmm: hybrid, to a Unix socket; QEMU: vhost-vsock-device)",
        ),
    ] {
        let rate = (
            get(&s, &format!("{kind}-vmm"), "mib_s"),
            get(&s, &format!("{kind}-qemu"), "mib_s"),
        );
        let cpu = (
            get(&s, &format!("{kind}-vmm"), "cpu_ms_per_mib"),
            get(&s, &format!("{kind}-qemu"), "cpu_ms_per_mib"),
        );
        println!(
            "| {what} | {} | {} | {} | {} | {} | >= QEMU |",
            fmt(rate.0, 1.0, ""),
            fmt(rate.1, 1.0, ""),
            ratio(rate),
            fmt(cpu.0, 1.0, ""),
            fmt(cpu.1, 1.0, ""),
        );
        streams.insert(
            kind.into(),
            serde_json::json!({"vmm": {"mib_s": rate.0, "cpu_ms_per_mib": cpu.0},
                               "qemu": {"mib_s": rate.1, "cpu_ms_per_mib": cpu.1}}),
        );
    }

    let dir = crate::workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let json = serde_json::json!({
        "config": {"vcpus": 1, "mem_mib": 128, "runs": runs, "icount": true},
        "samples": s,
        "median": {
            "vmm": {"ready_us": ready.0, "setup_us": setup, "boot_timer_us": boot, "overhead_kib": overhead.0, "setup_share": share},
            "qemu": {"ready_us": ready.1, "overhead_kib": overhead.1},
            "block": {"vmm": {"write_mib_s": wv, "read_mib_s": rv, "cpu_ms_per_mib": cv, "poll_ms_per_mib": pv, "randread_iops": iops.0},
                      "qemu": {"write_mib_s": wq, "read_mib_s": rq, "cpu_ms_per_mib": cq, "poll_ms_per_mib": pq, "randread_iops": iops.1}},
            "streams": streams,
            "vmm-api": {"api_ready_us": api_ready, "api_ready_share": api_share, "get_p50_us": p50, "get_p99_us": p99,
                        "overhead_kib": api_overhead, "api_thread_kib": api_thread_kib},
        },
        "targets": {"overhead_kib_max": OVERHEAD_TARGET_KIB, "setup_share_max": SETUP_SHARE_TARGET},
    });
    let path = dir.join("boot.json");
    fs::write(&path, serde_json::to_string_pretty(&json)?).context("writing the benchmark JSON")?;
    println!("\nwritten: {}", path.display());

    let slower = |v: Option<f64>, q: Option<f64>| {
        v.zip(q).is_some_and(|(v, q)| v < q) || v.is_none_or(|v| v <= 0.0)
    };
    // CPU per MiB: more is worse.
    let costlier = |v: Option<f64>, q: Option<f64>| v.zip(q).is_some_and(|(v, q)| v > q);
    let mut checks = vec![
        (
            "boot",
            overhead.0.is_none_or(|o| o > OVERHEAD_TARGET_KIB),
            "memory overhead above 5 MiB",
        ),
        (
            "boot",
            share.is_none_or(|v| v > SETUP_SHARE_TARGET),
            "setup above 10% of boot",
        ),
        (
            "boot",
            api_share.is_none_or(|v| v > SETUP_SHARE_TARGET),
            "API ready later than 10% of boot",
        ),
        (
            "boot",
            api_overhead.is_none_or(|o| o > OVERHEAD_TARGET_KIB),
            "memory overhead with the API above 5 MiB",
        ),
        ("blk", slower(wv, wq), "block writes slower than QEMU"),
        ("blk", slower(rv, rq), "block reads slower than QEMU"),
        (
            "blk",
            costlier(cv, cq),
            "block I/O costs more VMM CPU per MiB than QEMU",
        ),
        (
            "blk",
            slower(iops.0, iops.1),
            "4 KiB random reads slower than QEMU",
        ),
    ];
    for (kind, what, cost) in [
        (
            "net",
            "network stream slower than QEMU",
            "network stream costs more VMM CPU per MiB than QEMU",
        ),
        (
            "vsock",
            "vsock stream slower than QEMU",
            "vsock stream costs more VMM CPU per MiB than QEMU",
        ),
    ] {
        let (vmm, qemu) = (format!("{kind}-vmm"), format!("{kind}-qemu"));
        let v = get(&s, &vmm, "mib_s");
        let q = get(&s, &qemu, "mib_s");
        checks.push((kind, slower(v, q), what));
        let (cv, cq) = (
            get(&s, &vmm, "cpu_ms_per_mib"),
            get(&s, &qemu, "cpu_ms_per_mib"),
        );
        checks.push((kind, costlier(cv, cq), cost));
    }
    let missed: Vec<&str> = checks
        .into_iter()
        .filter(|(p, bad, _)| phase(p) && *bad)
        .map(|(_, _, what)| what)
        .collect();
    if !only.is_empty() {
        println!(
            "phases run: {} (the other targets were not judged)",
            only.join(", ")
        );
    }
    if missed.is_empty() {
        println!("targets met");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("TARGETS MISSED: {}", missed.join("; "));
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_become_medians() {
        let lines: Vec<String> = [
            "noise",
            "BENCH vmm 1 ready_us=300 overhead_kib=2000 guest_rss_kib=9 exit=0 setup_us=10",
            "BENCH vmm 2 ready_us=100 overhead_kib=2100 guest_rss_kib=9 exit=0 setup_us=12",
            "BENCH vmm 3 ready_us=200 overhead_kib=1900 guest_rss_kib=9 exit=0 setup_us=",
            "BENCH qemu 1 ready_us=400 overhead_kib=30000 exit=0",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        let s = parse(&lines);
        assert_eq!(get(&s, "vmm", "ready_us"), Some(200.0));
        assert_eq!(
            get(&s, "vmm", "setup_us"),
            Some(11.0),
            "an empty value is skipped"
        );
        assert_eq!(get(&s, "qemu", "overhead_kib"), Some(30000.0));
        assert_eq!(get(&s, "qemu", "setup_us"), None);
        assert_eq!(median(&[]), None);
    }
}
