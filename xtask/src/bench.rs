//! `cargo xtask bench`: boot figures of vmm and of Debian's arm64 QEMU (`-accel kvm -M virt`)
//! on the same kernel and initramfs, inside one emulated host running with -icount so the
//! figures repeat. Absolute times under emulation mean little; the ratios and bytes are the
//! point. Targets: VMM overhead at most 5 MiB, and the VMM's own setup at most 10% of boot;
//! devices no worse than QEMU's, which must be virtio 1.x like vmm's. The snapshot phase
//! (`bench/snapshot.rs`, `resources/bench-snapshot.sh`) runs in a host of its own, a
//! neoverse-n1 like the one Firecracker's snapshot figures were measured in, and is judged
//! against those figures and QEMU's in the same run. The migrate phase (`bench/migrate.rs`,
//! `resources/bench-migrate.sh`) moves a running guest between two processes of one host of
//! its own, vmm's and QEMU's, over loopback TCP.
//!
//! A figure a target needs that was not measured in every run (a VMM that did not boot, a
//! guest command that printed nothing, a value that is not a number) is printed as missing,
//! and the target with it: a missing figure never passes.

use std::fs;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::artifacts;
use crate::cache::Cache;
use crate::qemu::{self, HostSpec};

mod judge;
mod migrate;
mod snapshot;

use judge::{
    OVERHEAD_TARGET_KIB, PEAK_EXCESS_TARGET_KIB, SETUP_SHARE_TARGET, SNAP_ALLOC_OVER_NONZERO,
    SNAP_CREATE_TARGET_US, SNAP_LOAD_GROWTH, SNAP_LOAD_QEMU_SHARE, SNAP_OVERHEAD_TARGET_KIB,
    Samples, Verdict, get, judge, parse,
};

const MISSING: &str = "missing";

fn fmt(v: Option<f64>, scale: f64, unit: &str) -> String {
    v.map(|v| format!("{:.1} {unit}", v / scale).trim_end().to_string())
        .unwrap_or_else(|| MISSING.into())
}

/// Two decimals, for per-MiB CPU figures near 1 ms.
fn fmt2(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| MISSING.into())
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
    // The same tool in the host, where the snapshot phase counts a memory file's non-zero pages.
    payload.files.push((
        "usr/local/bin/vmm-guest-tool".into(),
        crate::cross::build_test_bin("vmm-guest-tool")?,
        0o755,
    ));
    payload.env.push(("BENCH_RUNS".into(), runs.to_string()));
    // The snapshot phase runs in a host of its own, of the CPU model Firecracker's snapshot
    // figures were measured on, so that the constants it is judged against compare.
    let own_host = ["snapshot", "migrate"];
    let base: Vec<String> = only
        .iter()
        .filter(|p| !own_host.contains(&p.as_str()))
        .cloned()
        .collect();
    let mut lines = Vec::new();
    if only.is_empty() || !base.is_empty() {
        let spec = host_spec("bench", "max", timeout);
        let mut p = payload.clone();
        p.env.push(("BENCH_ONLY".into(), base.join(",")));
        run_host(
            &spec,
            &art,
            &p,
            include_str!("../../resources/bench.sh"),
            &mut lines,
        )?;
    }
    if phase("snapshot") {
        let spec = host_spec("bench-snapshot", "neoverse-n1", timeout);
        run_host(
            &spec,
            &art,
            &payload,
            include_str!("../../resources/bench-snapshot.sh"),
            &mut lines,
        )?;
    }
    if phase("migrate") {
        // The CPU model QEMU and Cloud Hypervisor were measured migrating on in this setup.
        let spec = host_spec("bench-migrate", "neoverse-n1", timeout);
        let mut p = payload.clone();
        // BENCH_MIG_WORKS=dirty (or idle) runs one workload only, when chasing a problem.
        if let Ok(works) = std::env::var("BENCH_MIG_WORKS") {
            p.env.push(("BENCH_MIG_WORKS".into(), works));
        }
        run_host(
            &spec,
            &art,
            &p,
            include_str!("../../resources/bench-migrate.sh"),
            &mut lines,
        )?;
    }
    let s = parse(&lines);
    if phase("boot") && !s.contains_key("vmm") {
        bail!("the benchmark produced no vmm figures");
    }
    if phase("snapshot") && !s.contains_key("snap-vmm-512") {
        bail!("the snapshot benchmark produced no vmm figures");
    }
    if phase("migrate") && !s.contains_key("mig-vmm-idle") {
        bail!("the migration benchmark produced no vmm figures");
    }
    let failed_runs: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("BENCH ") && !l.split_whitespace().any(|w| w == "exit=0"))
        .collect();
    if !failed_runs.is_empty() {
        for l in &failed_runs {
            eprintln!("{l}");
        }
        bail!("a benchmark boot did not end with exit status 0 (above)");
    }

    let (boot_fig, api_median) = if phase("boot") {
        boot_tables(&s, runs)
    } else {
        (serde_json::Value::Null, serde_json::Value::Null)
    };
    let block = if phase("blk") {
        block_table(&s)
    } else {
        serde_json::Value::Null
    };
    let streams = stream_table(&s, &phase);
    let snapshot = if phase("snapshot") {
        snapshot::table(&s)
    } else {
        serde_json::Value::Null
    };

    let migration = if phase("migrate") {
        migrate::table(&s)
    } else {
        serde_json::Value::Null
    };

    let judged = judge(&s, phase);
    let dir = crate::workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let verdicts: Vec<serde_json::Value> = judged
        .iter()
        .map(|j| {
            let (verdict, missing) = match &j.verdict {
                Verdict::Met => ("met", Vec::new()),
                Verdict::Missed => ("missed", Vec::new()),
                Verdict::Missing(m) => ("missing", m.clone()),
            };
            serde_json::json!({"phase": j.phase, "target": j.target, "verdict": verdict, "missing": missing})
        })
        .collect();
    let json = serde_json::json!({
        "config": {"vcpus": 1, "mem_mib": 128, "runs": runs, "icount": true, "phases": only},
        "samples": s,
        "median": {
            "vmm": boot_fig["vmm"],
            "qemu": boot_fig["qemu"],
            "block": block,
            "streams": streams,
            "vmm-api": api_median,
            "snapshot": snapshot,
            "migrate": migration,
        },
        "targets": {"overhead_kib_max": OVERHEAD_TARGET_KIB, "peak_excess_kib_max": PEAK_EXCESS_TARGET_KIB,
                    "setup_share_max": SETUP_SHARE_TARGET,
                    "snapshot": {"create_us_max": SNAP_CREATE_TARGET_US, "overhead_kib_max": SNAP_OVERHEAD_TARGET_KIB,
                                 "load_us_max": judge::firecracker::LOAD_US_512, "load_qemu_share_max": SNAP_LOAD_QEMU_SHARE,
                                 "load_growth_max": SNAP_LOAD_GROWTH, "alloc_over_nonzero_max": SNAP_ALLOC_OVER_NONZERO},
                    "migrate": {"throughput_over_tcp_min": migrate::THROUGHPUT_OVER_TCP, "downtime_ms_max": migrate::DOWNTIME_LIMIT_MS,
                                "downtime_qemu_share_max": migrate::DOWNTIME_QEMU_SHARE, "stall_us_max": migrate::STALL_LIMIT_US,
                                "bytes_over_needed_max": migrate::BYTES_OVER_NEEDED, "overhead_kib_max": migrate::OVERHEAD_LIMIT_KIB}},
        "verdicts": verdicts,
    });
    let path = dir.join("boot.json");
    fs::write(&path, serde_json::to_string_pretty(&json)?).context("writing the benchmark JSON")?;
    println!("\nwritten: {}", path.display());

    if !only.is_empty() {
        println!(
            "phases run: {} (the other targets were not judged)",
            only.join(", ")
        );
    }
    println!("\ntargets:");
    for j in &judged {
        match &j.verdict {
            Verdict::Met => println!("  met: {}", j.target),
            Verdict::Missed => println!("  MISSED: {}", j.target),
            Verdict::Missing(m) => println!("  MISSING FIGURES: {}: {}", j.target, m.join(", ")),
        }
    }
    let missed: Vec<&str> = judged
        .iter()
        .filter(|j| j.verdict == Verdict::Missed)
        .map(|j| j.target)
        .collect();
    let missing: Vec<&str> = judged
        .iter()
        .filter(|j| matches!(j.verdict, Verdict::Missing(_)))
        .map(|j| j.target)
        .collect();
    if missed.is_empty() && missing.is_empty() {
        println!("targets met");
        return Ok(ExitCode::SUCCESS);
    }
    if !missed.is_empty() {
        println!("TARGETS MISSED: {}", missed.join("; "));
    }
    if !missing.is_empty() {
        println!("TARGETS NOT MEASURED: {}", missing.join("; "));
    }
    Ok(ExitCode::FAILURE)
}

/// The emulated host a part of the benchmark runs in.
fn host_spec(name: &str, cpu: &str, timeout: Duration) -> HostSpec {
    HostSpec {
        name: name.into(),
        cpu: cpu.into(),
        cntfrq: None,
        smp: 2,
        mem_mib: 3072,
        icount: true,
        timeout,
        link: None,
        forwards: Vec::new(),
    }
}

/// Runs a benchmark script in a host; appends its console lines to `lines`, printing the
/// `BENCH` ones and the scripts' own messages (`bench-...: `).
fn run_host(
    spec: &HostSpec,
    art: &artifacts::Artifacts,
    payload: &qemu::Payload,
    script: &str,
    lines: &mut Vec<String>,
) -> Result<()> {
    let start = lines.len();
    let mut sink = |l: &str| {
        // The figures, and what a benchmark script says went wrong.
        if l.starts_with("BENCH ") || l.starts_with("bench-") {
            println!("{l}");
        }
        lines.push(l.to_string());
    };
    let out = qemu::run(spec, art, payload, script, &mut sink)?;
    if out.status != 0 {
        for l in lines[start..].iter().rev().take(30).rev() {
            eprintln!("{l}");
        }
        bail!(
            "the benchmark script in host {} failed with status {}",
            spec.name,
            out.status
        );
    }
    Ok(())
}

fn ratio(p: (Option<f64>, Option<f64>)) -> String {
    match p {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => MISSING.into(),
    }
}

fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}%", v * 100.0))
        .unwrap_or_else(|| MISSING.into())
}

/// The boot and API tables; their medians for the JSON: (vmm and qemu, vmm-api).
fn boot_tables(s: &Samples, runs: u32) -> (serde_json::Value, serde_json::Value) {
    let ready = (get(s, "vmm", "ready_us"), get(s, "qemu", "ready_us"));
    let overhead = (
        get(s, "vmm", "overhead_kib"),
        get(s, "qemu", "overhead_kib"),
    );
    let excess = (
        get(s, "vmm", "peak_excess_kib"),
        get(s, "qemu", "peak_excess_kib"),
    );
    let peak = (
        overhead.0.zip(excess.0).map(|(a, b)| a + b),
        overhead.1.zip(excess.1).map(|(a, b)| a + b),
    );
    let setup = get(s, "vmm", "setup_us");
    let boot = get(s, "vmm", "boot_timer_us");
    let share = setup.zip(boot).map(|(a, b)| a / b);
    let api_ready = get(s, "vmm-api", "api_ready_us");
    let api_share = api_ready.zip(boot).map(|(a, b)| a / b);
    let (p50, p99) = (get(s, "vmm-api", "p50_us"), get(s, "vmm-api", "p99_us"));
    let api_overhead = get(s, "vmm-api", "overhead_kib");
    let api_thread_kib = api_overhead.zip(overhead.0).map(|(a, b)| a - b);

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
        percent(share)
    );
    println!(
        "| memory overhead (RSS outside guest RAM) | {} | {} | {} | <= 5 MiB |",
        fmt(overhead.0, 1.0, "KiB"),
        fmt(overhead.1, 1.0, "KiB"),
        ratio(overhead)
    );
    println!(
        "| peak RSS above the steady RSS (VmHWM - VmRSS) | {} | {} | - | <= 1 MiB |",
        fmt(excess.0, 1.0, "KiB"),
        fmt(excess.1, 1.0, "KiB"),
    );
    println!(
        "| peak memory overhead (overhead + the above) | {} | {} | {} | |",
        fmt(peak.0, 1.0, "KiB"),
        fmt(peak.1, 1.0, "KiB"),
        ratio(peak)
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
        percent(api_share)
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
    (
        serde_json::json!({
            "vmm": {"ready_us": ready.0, "setup_us": setup, "boot_timer_us": boot, "overhead_kib": overhead.0,
                    "peak_excess_kib": excess.0, "peak_overhead_kib": peak.0, "setup_share": share},
            "qemu": {"ready_us": ready.1, "overhead_kib": overhead.1, "peak_excess_kib": excess.1,
                     "peak_overhead_kib": peak.1},
        }),
        serde_json::json!({"api_ready_us": api_ready, "api_ready_share": api_share, "get_p50_us": p50, "get_p99_us": p99,
                           "overhead_kib": api_overhead, "api_thread_kib": api_thread_kib}),
    )
}

/// The virtio version the guest saw: "1.x", "legacy", or missing.
fn virtio(s: &Samples, who: &str) -> String {
    let all = |key: &str| -> Option<Vec<f64>> {
        let runs = s.get(who)?.get(key)?;
        runs.iter().copied().collect()
    };
    match (all("virtio_modern"), all("virtio_legacy")) {
        (Some(m), Some(l)) if !m.is_empty() && l.iter().any(|&v| v > 0.0) => "legacy".into(),
        (Some(m), Some(_)) if !m.is_empty() && m.iter().all(|&v| v >= 1.0) => "1.x".into(),
        (Some(m), Some(_)) if !m.is_empty() => "none seen".into(),
        _ => MISSING.into(),
    }
}

/// The block table; its medians for the JSON.
fn block_table(s: &Samples) -> serde_json::Value {
    let blk = |who: &str, key: &str| get(s, who, key);
    let (wv, wq) = (
        blk("blk-vmm", "write_mib_s"),
        blk("blk-qemu", "write_mib_s"),
    );
    let (rv, rq) = (blk("blk-vmm", "read_mib_s"), blk("blk-qemu", "read_mib_s"));
    let (cv, cq) = (
        blk("blk-vmm", "cpu_ms_per_mib"),
        blk("blk-qemu", "cpu_ms_per_mib"),
    );
    let (pv, pq) = (
        blk("blk-vmm", "poll_ms_per_mib"),
        blk("blk-qemu", "poll_ms_per_mib"),
    );
    let iops = (
        blk("blk-vmm", "randread_iops"),
        blk("blk-qemu", "randread_iops"),
    );
    println!(
        "\nblock: {} passes each of a 128 MiB sequential write (then fsync) and read in 1 MiB O_DIRECT requests on a 128 MiB raw image, virtio-blk over virtio-mmio",
        blk("blk-vmm", "passes").map_or(MISSING.into(), |p| format!("{p:.0}"))
    );
    println!("| metric | vmm | QEMU | vmm/QEMU | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| virtio version the guest negotiated | {} | {} | | 1.x |",
        virtio(s, "blk-vmm"),
        virtio(s, "blk-qemu")
    );
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
        "| VMM CPU ms per MiB moved | {} | {} | {} | <= QEMU |",
        fmt2(cv),
        fmt2(cq),
        ratio((cv, cq))
    );
    println!(
        "| of which KVM halt polling in vCPU threads, ms per MiB | {} | {} | {} | |",
        fmt2(pv),
        fmt2(pq),
        ratio((pv, pq))
    );
    println!(
        "| 4 KiB random read IOPS (O_DIRECT, 5 s) | {} | {} | {} | >= QEMU |",
        fmt(iops.0, 1.0, ""),
        fmt(iops.1, 1.0, ""),
        ratio(iops)
    );
    serde_json::json!({
        "vmm": {"write_mib_s": wv, "read_mib_s": rv, "cpu_ms_per_mib": cv, "poll_ms_per_mib": pv, "randread_iops": iops.0},
        "qemu": {"write_mib_s": wq, "read_mib_s": rq, "cpu_ms_per_mib": cq, "poll_ms_per_mib": pq, "randread_iops": iops.1},
    })
}

/// The stream table, for the stream phases run; their medians for the JSON.
fn stream_table(s: &Samples, phase: &dyn Fn(&str) -> bool) -> serde_json::Value {
    let mut streams = serde_json::Map::new();
    let kinds: Vec<(&str, &str)> = [
        (
            "net",
            "TCP over virtio-net on a tap (QEMU: virtio-net-device, no vhost)",
        ),
        (
            "vsock",
            "vsock (vmm: hybrid, to a Unix socket; QEMU: vhost-vsock-device)",
        ),
    ]
    .into_iter()
    .filter(|(k, _)| phase(k))
    .collect();
    if kinds.is_empty() {
        return serde_json::Value::Null;
    }
    println!(
        "\nstreams: the guest sends 256 MiB to a host sink (MiB/s in guest time; VM process CPU per MiB)"
    );
    println!(
        "| stream | virtio vmm/QEMU | vmm MiB/s | QEMU MiB/s | vmm/QEMU | vmm CPU ms/MiB | QEMU CPU ms/MiB | target |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (kind, what) in kinds {
        let (vmm, qemu) = (format!("{kind}-vmm"), format!("{kind}-qemu"));
        let rate = (get(s, &vmm, "mib_s"), get(s, &qemu, "mib_s"));
        let cpu = (
            get(s, &vmm, "cpu_ms_per_mib"),
            get(s, &qemu, "cpu_ms_per_mib"),
        );
        println!(
            "| {what} | {}/{} | {} | {} | {} | {} | {} | >= QEMU, CPU <= QEMU |",
            virtio(s, &vmm),
            virtio(s, &qemu),
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
    serde_json::Value::Object(streams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_figures_print_as_missing() {
        let legacy = "BENCH blk-qemu 1 write_mib_s= virtio_modern=0 virtio_legacy=1 exit=0";
        let modern = "BENCH blk-qemu 1 write_mib_s=1 virtio_modern=1 virtio_legacy=0 exit=0";
        let s = |l: &str| parse(&[l.to_string()]);
        assert_eq!(virtio(&s(legacy), "blk-qemu"), "legacy");
        assert_eq!(virtio(&s(modern), "blk-qemu"), "1.x");
        assert_eq!(virtio(&s(modern), "net-qemu"), "missing");
        assert_eq!(
            fmt(get(&s(legacy), "blk-qemu", "write_mib_s"), 1.0, ""),
            "missing"
        );
        assert_eq!(fmt(Some(512.0), 1.0, ""), "512.0");
        assert_eq!(ratio((Some(1.0), None)), "missing");
    }

    #[test]
    fn qemu_runs_with_virtio_1_devices() {
        let script = include_str!("../../resources/bench.sh");
        // One definition of QEMU's arguments, with the modern transport, used by every phase.
        assert_eq!(script.matches("qemu-system-aarch64 -accel").count(), 1);
        let def = script
            .lines()
            .skip_while(|l| !l.starts_with("qemu=("))
            .take(2)
            .collect::<String>();
        assert!(
            def.contains("-global virtio-mmio.force-legacy=false"),
            "{def}"
        );
        assert_eq!(script.matches("\"${qemu[@]}\"").count(), 4);
        // Nothing not measured turns into a 0.
        assert!(!script.contains(":-0}"), "a missing figure defaults to 0");
    }

    #[test]
    fn the_snapshot_phase_runs_the_same_qemu_and_prints_missing_figures_empty() {
        let def = |script: &str| {
            script
                .lines()
                .skip_while(|l| !l.starts_with("qemu=("))
                .take(2)
                .collect::<String>()
        };
        let snap = include_str!("../../resources/bench-snapshot.sh");
        assert_eq!(def(snap), def(include_str!("../../resources/bench.sh")));
        assert!(!snap.contains(":-0}"), "a missing figure defaults to 0");
        let mig = include_str!("../../resources/bench-migrate.sh");
        assert_eq!(def(mig), def(include_str!("../../resources/bench.sh")));
        assert!(!mig.contains(":-0}"), "a missing figure defaults to 0");
        // Every figure of each BENCH line is printed from a variable that starts empty.
        for who in ["snap-vmm-", "snap-qemu-"] {
            assert!(
                snap.contains(&format!("echo \"BENCH {who}$mib $run ")),
                "{who}"
            );
        }
    }
}
