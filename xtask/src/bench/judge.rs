//! The benchmark's figures and targets: `BENCH` lines parsed into samples, and each target
//! judged met, missed, or not measured.

use std::collections::BTreeMap;

pub const OVERHEAD_TARGET_KIB: f64 = 5.0 * 1024.0;
/// Target: peak RSS at most this much above the steady RSS (so peak overhead at most the
/// steady overhead plus 1 MiB).
pub const PEAK_EXCESS_TARGET_KIB: f64 = 1024.0;
pub const SETUP_SHARE_TARGET: f64 = 0.10;

/// Firecracker's snapshot figures, measured earlier in this same setup (emulated neoverse-n1
/// host under -icount, 1 vCPU, 256 MiB touched; curl's time_total): Firecracker cannot be
/// installed from a registry, so they are constants here, from issue 12.
pub mod firecracker {
    /// PUT /snapshot/load, 512 MiB and 2 GiB guests, µs.
    pub const LOAD_US_512: f64 = 7_600.0;
    pub const LOAD_US_2048: f64 = 7_500.0;
    /// PUT /snapshot/create (Full), µs: it writes every page of guest memory.
    pub const CREATE_US_512: f64 = 969_000.0;
    pub const CREATE_US_2048: f64 = 3_876_000.0;
    /// The restored guest's first console answer after the load returned, beyond the console
    /// round trip of a running guest, µs.
    pub const ANSWER_EXTRA_US_512: f64 = 27_000.0;
    pub const ANSWER_EXTRA_US_2048: f64 = 36_000.0;
    /// VMM memory overhead after restore, KiB.
    pub const OVERHEAD_KIB: f64 = 1_360.0;
}

/// Snapshot targets derived from Firecracker's figures and QEMU's.
pub const SNAP_CREATE_TARGET_US: f64 = firecracker::CREATE_US_512 / 2.0;
pub const SNAP_OVERHEAD_TARGET_KIB: f64 = firecracker::OVERHEAD_KIB + 512.0;
pub const SNAP_LOAD_QEMU_SHARE: f64 = 0.1;
pub const SNAP_LOAD_GROWTH: f64 = 1.2;
pub const SNAP_ALLOC_OVER_NONZERO: f64 = 1.05;

/// The QEMU figures of the snapshot phase: a missing one fails the bench even where no target
/// compares it.
const SNAP_QEMU_FIGURES: &[(&str, &str)] = &[
    ("snap-qemu-512", "create_us"),
    ("snap-qemu-512", "file_bytes"),
    ("snap-qemu-512", "load_us"),
    ("snap-qemu-512", "answer_extra_us"),
    ("snap-qemu-2048", "create_us"),
    ("snap-qemu-2048", "file_bytes"),
    ("snap-qemu-2048", "load_us"),
    ("snap-qemu-2048", "answer_extra_us"),
];

/// Per VMM ("vmm", "qemu", "blk-qemu"...), per metric, the value of each run: `None` where the
/// run printed the key with no number (`key=`: not measured).
pub type Samples = BTreeMap<String, BTreeMap<String, Vec<Option<f64>>>>;

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
                out.entry(who.to_string())
                    .or_default()
                    .entry(k.to_string())
                    .or_default()
                    .push(v.parse::<f64>().ok().filter(|v| v.is_finite()));
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

/// A figure's median over the runs, or why there is none: never printed, or not a number
/// in some run.
pub fn figure(s: &Samples, who: &str, key: &str) -> Result<f64, String> {
    let runs = s
        .get(who)
        .and_then(|m| m.get(key))
        .ok_or_else(|| format!("{who} {key}"))?;
    let values: Vec<f64> = runs.iter().flatten().copied().collect();
    if values.len() < runs.len() {
        return Err(format!(
            "{who} {key} (in {} of {} runs)",
            runs.len() - values.len(),
            runs.len()
        ));
    }
    median(&values).ok_or_else(|| format!("{who} {key}"))
}

pub fn get(s: &Samples, who: &str, key: &str) -> Option<f64> {
    figure(s, who, key).ok()
}

/// How a target compares figures.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// (who, key) at most the limit.
    AtMost((&'static str, &'static str), f64),
    /// The first figure over the second at most the limit.
    ShareAtMost(
        (&'static str, &'static str),
        (&'static str, &'static str),
        f64,
    ),
    /// The first figure over the second at least the limit; a second figure of 0 or less is
    /// no measurement.
    ShareAtLeast(
        (&'static str, &'static str),
        (&'static str, &'static str),
        f64,
    ),
    /// The figure equals the value in every run, not only in the median.
    EveryRun((&'static str, &'static str), f64),
    /// A rate of vmm's at least QEMU's; a rate of 0 or less is no measurement.
    NoLess(&'static str, &'static str, &'static str),
    /// A cost of vmm's at most QEMU's.
    NoMore(&'static str, &'static str, &'static str),
    /// Every run's guest saw virtio devices, all of them virtio 1.x (VIRTIO_F_VERSION_1).
    Virtio1(&'static str),
    /// Each of these figures was measured.
    Measured(&'static [(&'static str, &'static str)]),
}

/// A target's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Met,
    Missed,
    /// These figures were not measured.
    Missing(Vec<String>),
}

/// One target of a phase, judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub phase: &'static str,
    pub target: &'static str,
    pub verdict: Verdict,
}

/// Every target: its phase, what it says, and its rule.
const TARGETS: &[(&str, &str, Rule)] = &[
    (
        "boot",
        "memory overhead at most 5 MiB",
        Rule::AtMost(("vmm", "overhead_kib"), OVERHEAD_TARGET_KIB),
    ),
    (
        "boot",
        "peak memory at most 1 MiB above the steady figure",
        Rule::AtMost(("vmm", "peak_excess_kib"), PEAK_EXCESS_TARGET_KIB),
    ),
    (
        "boot",
        "setup at most 10% of boot",
        Rule::ShareAtMost(
            ("vmm", "setup_us"),
            ("vmm", "boot_timer_us"),
            SETUP_SHARE_TARGET,
        ),
    ),
    (
        "boot",
        "API ready within 10% of boot",
        Rule::ShareAtMost(
            ("vmm-api", "api_ready_us"),
            ("vmm", "boot_timer_us"),
            SETUP_SHARE_TARGET,
        ),
    ),
    (
        "boot",
        "memory overhead with the API at most 5 MiB",
        Rule::AtMost(("vmm-api", "overhead_kib"), OVERHEAD_TARGET_KIB),
    ),
    (
        "blk",
        "block writes no slower than QEMU",
        Rule::NoLess("blk-vmm", "blk-qemu", "write_mib_s"),
    ),
    (
        "blk",
        "block reads no slower than QEMU",
        Rule::NoLess("blk-vmm", "blk-qemu", "read_mib_s"),
    ),
    (
        "blk",
        "block I/O no more VMM CPU per MiB than QEMU",
        Rule::NoMore("blk-vmm", "blk-qemu", "cpu_ms_per_mib"),
    ),
    (
        "blk",
        "4 KiB random reads no slower than QEMU",
        Rule::NoLess("blk-vmm", "blk-qemu", "randread_iops"),
    ),
    (
        "blk",
        "vmm's block device is virtio 1.x",
        Rule::Virtio1("blk-vmm"),
    ),
    (
        "blk",
        "QEMU's block device is virtio 1.x",
        Rule::Virtio1("blk-qemu"),
    ),
    (
        "net",
        "network stream no slower than QEMU",
        Rule::NoLess("net-vmm", "net-qemu", "mib_s"),
    ),
    (
        "net",
        "network stream no more VMM CPU per MiB than QEMU",
        Rule::NoMore("net-vmm", "net-qemu", "cpu_ms_per_mib"),
    ),
    (
        "net",
        "vmm's network device is virtio 1.x",
        Rule::Virtio1("net-vmm"),
    ),
    (
        "net",
        "QEMU's network device is virtio 1.x",
        Rule::Virtio1("net-qemu"),
    ),
    (
        "vsock",
        "vsock stream no slower than QEMU",
        Rule::NoLess("vsock-vmm", "vsock-qemu", "mib_s"),
    ),
    (
        "vsock",
        "vsock stream no more VMM CPU per MiB than QEMU",
        Rule::NoMore("vsock-vmm", "vsock-qemu", "cpu_ms_per_mib"),
    ),
    (
        "vsock",
        "vmm's vsock device is virtio 1.x",
        Rule::Virtio1("vsock-vmm"),
    ),
    (
        "vsock",
        "QEMU's vsock device is virtio 1.x",
        Rule::Virtio1("vsock-qemu"),
    ),
    (
        "snapshot",
        "snapshot load at 512 MiB at most Firecracker's 7.6 ms",
        Rule::AtMost(("snap-vmm-512", "load_us"), firecracker::LOAD_US_512),
    ),
    (
        "snapshot",
        "snapshot load at most 0.1 x QEMU's, 512 MiB",
        Rule::ShareAtMost(
            ("snap-vmm-512", "load_us"),
            ("snap-qemu-512", "load_us"),
            SNAP_LOAD_QEMU_SHARE,
        ),
    ),
    (
        "snapshot",
        "snapshot load at most 0.1 x QEMU's, 2 GiB",
        Rule::ShareAtMost(
            ("snap-vmm-2048", "load_us"),
            ("snap-qemu-2048", "load_us"),
            SNAP_LOAD_QEMU_SHARE,
        ),
    ),
    (
        "snapshot",
        "snapshot load at 2 GiB within 1.2 x the load at 512 MiB",
        Rule::ShareAtMost(
            ("snap-vmm-2048", "load_us"),
            ("snap-vmm-512", "load_us"),
            SNAP_LOAD_GROWTH,
        ),
    ),
    (
        "snapshot",
        "first console answer after load no later than Firecracker's (27 ms beyond the round trip), 512 MiB",
        Rule::AtMost(
            ("snap-vmm-512", "answer_extra_us"),
            firecracker::ANSWER_EXTRA_US_512,
        ),
    ),
    (
        "snapshot",
        "first console answer after load no later than Firecracker's (36 ms beyond the round trip), 2 GiB",
        Rule::AtMost(
            ("snap-vmm-2048", "answer_extra_us"),
            firecracker::ANSWER_EXTRA_US_2048,
        ),
    ),
    (
        "snapshot",
        "snapshot create at 512 MiB at most half of Firecracker's 969 ms",
        Rule::AtMost(("snap-vmm-512", "create_us"), SNAP_CREATE_TARGET_US),
    ),
    (
        "snapshot",
        "snapshot create no slower than QEMU's, 512 MiB",
        Rule::NoMore("snap-vmm-512", "snap-qemu-512", "create_us"),
    ),
    (
        "snapshot",
        "snapshot create no slower than QEMU's, 2 GiB",
        Rule::NoMore("snap-vmm-2048", "snap-qemu-2048", "create_us"),
    ),
    (
        "snapshot",
        "memory file allocated bytes at most 1.05 x the guest's touched (non-zero) bytes, 512 MiB",
        Rule::ShareAtMost(
            ("snap-vmm-512", "mem_alloc_bytes"),
            ("snap-vmm-512", "nonzero_bytes"),
            SNAP_ALLOC_OVER_NONZERO,
        ),
    ),
    (
        "snapshot",
        "memory file allocated bytes at most 1.05 x the guest's touched (non-zero) bytes, 2 GiB",
        Rule::ShareAtMost(
            ("snap-vmm-2048", "mem_alloc_bytes"),
            ("snap-vmm-2048", "nonzero_bytes"),
            SNAP_ALLOC_OVER_NONZERO,
        ),
    ),
    (
        "snapshot",
        "memory overhead after restore at most Firecracker's 1,360 KiB + 512 KiB, 512 MiB",
        Rule::AtMost(("snap-vmm-512", "overhead_kib"), SNAP_OVERHEAD_TARGET_KIB),
    ),
    (
        "snapshot",
        "memory overhead after restore at most Firecracker's 1,360 KiB + 512 KiB, 2 GiB",
        Rule::AtMost(("snap-vmm-2048", "overhead_kib"), SNAP_OVERHEAD_TARGET_KIB),
    ),
    (
        "snapshot",
        "every QEMU snapshot figure measured",
        Rule::Measured(SNAP_QEMU_FIGURES),
    ),
];

/// Judges one rule on the samples.
fn judge_rule(s: &Samples, rule: Rule) -> Verdict {
    // The figures a rule needs, or the names of those missing.
    fn need<const N: usize>(
        s: &Samples,
        figs: [(&str, &str); N],
        positive: bool,
    ) -> Result<[f64; N], Verdict> {
        let mut missing = Vec::new();
        let mut out = [0.0; N];
        for (o, (who, key)) in out.iter_mut().zip(figs) {
            match figure(s, who, key) {
                Ok(v) if positive && v <= 0.0 => {
                    missing.push(format!("{who} {key} (0: nothing moved)"));
                }
                Ok(v) => *o = v,
                Err(name) => missing.push(name),
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(Verdict::Missing(missing))
        }
    }
    let met = |ok: bool| if ok { Verdict::Met } else { Verdict::Missed };
    let r = match rule {
        Rule::AtMost(f, limit) => need(s, [f], false).map(|[v]| met(v <= limit)),
        Rule::ShareAtMost(a, b, limit) => need(s, [a, b], false).map(|[a, b]| met(a / b <= limit)),
        Rule::ShareAtLeast(a, b, limit) => {
            need(s, [a], false).and_then(|[a]| need(s, [b], true).map(|[b]| met(a / b >= limit)))
        }
        Rule::EveryRun((who, key), want) => need(s, [(who, key)], false).map(|_| {
            met(s
                .get(who)
                .and_then(|m| m.get(key))
                .is_some_and(|runs| runs.iter().all(|&v| v == Some(want))))
        }),
        Rule::NoLess(v, q, key) => need(s, [(v, key), (q, key)], true).map(|[v, q]| met(v >= q)),
        Rule::NoMore(v, q, key) => need(s, [(v, key), (q, key)], false).map(|[v, q]| met(v <= q)),
        Rule::Virtio1(who) => {
            need(s, [(who, "virtio_modern"), (who, "virtio_legacy")], false).map(|_| {
                // Every run, not the median: one legacy run is one too many.
                let all = |key: &str, ok: fn(f64) -> bool| {
                    s.get(who)
                        .and_then(|m| m.get(key))
                        .is_some_and(|runs| runs.iter().flatten().all(|&v| ok(v)))
                };
                met(all("virtio_modern", |v| v >= 1.0) && all("virtio_legacy", |v| v == 0.0))
            })
        }
        Rule::Measured(figs) => {
            let missing: Vec<String> = figs
                .iter()
                .filter_map(|&(who, key)| figure(s, who, key).err())
                .collect();
            if missing.is_empty() {
                Ok(Verdict::Met)
            } else {
                Err(Verdict::Missing(missing))
            }
        }
    };
    r.unwrap_or_else(|missing| missing)
}

/// Judges the targets of the phases run (`phase`).
pub fn judge(s: &Samples, phase: impl Fn(&str) -> bool) -> Vec<Judged> {
    TARGETS
        .iter()
        .chain(super::migrate::TARGETS)
        .filter(|(p, _, _)| phase(p))
        .map(|&(phase, target, rule)| Judged {
            phase,
            target,
            verdict: judge_rule(s, rule),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(ls: &[&str]) -> Vec<String> {
        ls.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn bench_lines_become_medians() {
        let s = parse(&lines(&[
            "noise",
            "BENCH vmm 1 ready_us=300 overhead_kib=2000 guest_rss_kib=9 exit=0 setup_us=10",
            "BENCH vmm 2 ready_us=100 overhead_kib=2100 guest_rss_kib=9 exit=0 setup_us=12",
            "BENCH vmm 3 ready_us=200 overhead_kib=1900 guest_rss_kib=9 exit=0 setup_us=11",
            "BENCH qemu 1 ready_us=400 overhead_kib=30000 exit=0",
        ]));
        assert_eq!(get(&s, "vmm", "ready_us"), Some(200.0));
        assert_eq!(get(&s, "vmm", "setup_us"), Some(11.0));
        assert_eq!(get(&s, "qemu", "overhead_kib"), Some(30000.0));
        assert_eq!(get(&s, "qemu", "setup_us"), None);
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn a_figure_missing_in_any_run_is_missing() {
        let s = parse(&lines(&[
            "BENCH vmm 1 ready_us=300 setup_us=10 boot_timer_us=x",
            "BENCH vmm 2 ready_us=100 setup_us= boot_timer_us=nan",
        ]));
        assert_eq!(figure(&s, "vmm", "ready_us"), Ok(200.0));
        assert_eq!(
            figure(&s, "vmm", "setup_us"),
            Err("vmm setup_us (in 1 of 2 runs)".into())
        );
        assert_eq!(
            figure(&s, "vmm", "boot_timer_us"),
            Err("vmm boot_timer_us (in 2 of 2 runs)".into())
        );
        assert_eq!(figure(&s, "qemu", "ready_us"), Err("qemu ready_us".into()));
    }

    const BLK_VMM: &str = "BENCH blk-vmm 1 write_mib_s=500.000 read_mib_s=900.000 cpu_ms_per_mib=1.000 poll_ms_per_mib=0.500 randread_iops=9000 passes=4 virtio_modern=1 virtio_legacy=0 exit=0";

    fn blk_verdicts(qemu: &str) -> Vec<(&'static str, Verdict)> {
        judge(&parse(&lines(&[BLK_VMM, qemu])), |p| p == "blk")
            .into_iter()
            .map(|j| (j.target, j.verdict))
            .collect()
    }

    fn failed(v: &[(&str, Verdict)]) -> bool {
        v.iter().any(|(_, v)| *v != Verdict::Met)
    }

    #[test]
    fn a_missing_peer_figure_fails_its_target() {
        // QEMU's guest printed nothing: empty values, as bench.sh prints them.
        let v = blk_verdicts(
            "BENCH blk-qemu 1 write_mib_s= read_mib_s= cpu_ms_per_mib= poll_ms_per_mib= randread_iops= passes=4 virtio_modern=1 virtio_legacy=0 exit=0",
        );
        assert!(failed(&v));
        let write = &v
            .iter()
            .find(|(t, _)| *t == "block writes no slower than QEMU")
            .expect("judged")
            .1;
        assert_eq!(
            *write,
            Verdict::Missing(vec!["blk-qemu write_mib_s (in 1 of 1 runs)".into()])
        );
        // No QEMU line at all (QEMU missing from the host): every comparison is missing.
        let v = judge(&parse(&lines(&[BLK_VMM])), |p| p == "blk");
        let missing: Vec<&str> = v
            .iter()
            .filter(|j| matches!(j.verdict, Verdict::Missing(_)))
            .map(|j| j.target)
            .collect();
        assert_eq!(
            missing,
            [
                "block writes no slower than QEMU",
                "block reads no slower than QEMU",
                "block I/O no more VMM CPU per MiB than QEMU",
                "4 KiB random reads no slower than QEMU",
                "QEMU's block device is virtio 1.x"
            ]
        );
        // The old way of printing a figure not measured: 0.000. Nothing moved is no figure.
        let v = blk_verdicts(
            "BENCH blk-qemu 1 write_mib_s=0.000 read_mib_s=0.000 cpu_ms_per_mib=0.000 poll_ms_per_mib=0.000 randread_iops=0 passes=4 virtio_modern=1 virtio_legacy=0 exit=0",
        );
        assert!(
            v.iter()
                .any(|(t, v)| *t == "block reads no slower than QEMU"
                    && *v
                        == Verdict::Missing(vec!["blk-qemu read_mib_s (0: nothing moved)".into()]))
        );
    }

    #[test]
    fn missing_figures_of_vmm_fail_too() {
        let s = parse(&lines(&[
            "BENCH vmm 1 ready_us=300 overhead_kib= peak_excess_kib=100 setup_us=10 boot_timer_us=1000 exit=0",
            "BENCH vmm-api 1 ready_us=300 overhead_kib=3000 api_ready_us=50 exit=0",
        ]));
        let v: Vec<(&str, Verdict)> = judge(&s, |p| p == "boot")
            .into_iter()
            .map(|j| (j.target, j.verdict))
            .collect();
        assert_eq!(
            v,
            [
                (
                    "memory overhead at most 5 MiB",
                    Verdict::Missing(vec!["vmm overhead_kib (in 1 of 1 runs)".into()])
                ),
                (
                    "peak memory at most 1 MiB above the steady figure",
                    Verdict::Met
                ),
                ("setup at most 10% of boot", Verdict::Met),
                ("API ready within 10% of boot", Verdict::Met),
                ("memory overhead with the API at most 5 MiB", Verdict::Met),
            ]
        );
    }

    #[test]
    fn a_boot_peak_over_1_mib_above_steady_misses_its_target() {
        let judged = |excess: &str| {
            let s = parse(&lines(&[&format!(
                "BENCH vmm 1 ready_us=300 overhead_kib=1700 {excess} setup_us=10 boot_timer_us=1000 exit=0"
            )]));
            judge(&s, |p| p == "boot")
                .into_iter()
                .find(|j| j.target == "peak memory at most 1 MiB above the steady figure")
                .map(|j| j.verdict)
        };
        assert_eq!(judged("peak_excess_kib=1024"), Some(Verdict::Met));
        assert_eq!(judged("peak_excess_kib=35000"), Some(Verdict::Missed));
        assert!(matches!(judged(""), Some(Verdict::Missing(_))));
    }

    #[test]
    fn legacy_qemu_devices_fail_the_bench() {
        let good = "BENCH blk-qemu 1 write_mib_s=400 read_mib_s=800 cpu_ms_per_mib=2 poll_ms_per_mib=1 randread_iops=8000 passes=4 virtio_modern=1 virtio_legacy=0 exit=0";
        assert!(!failed(&blk_verdicts(good)), "{:?}", blk_verdicts(good));
        let legacy = good.replace(
            "virtio_modern=1 virtio_legacy=0",
            "virtio_modern=0 virtio_legacy=1",
        );
        let v = blk_verdicts(&legacy);
        assert_eq!(
            v.iter()
                .filter(|(_, v)| *v != Verdict::Met)
                .collect::<Vec<_>>(),
            [&("QEMU's block device is virtio 1.x", Verdict::Missed)]
        );
        // The guest listed no device: not measured.
        let unseen = good.replace(
            "virtio_modern=1 virtio_legacy=0",
            "virtio_modern= virtio_legacy=",
        );
        assert!(
            blk_verdicts(&unseen)
                .iter()
                .any(|(t, v)| *t == "QEMU's block device is virtio 1.x"
                    && matches!(v, Verdict::Missing(_)))
        );
    }

    #[test]
    fn slower_or_costlier_devices_miss_their_targets() {
        let slow = "BENCH blk-qemu 1 write_mib_s=600 read_mib_s=800 cpu_ms_per_mib=0.5 poll_ms_per_mib=1 randread_iops=8000 passes=4 virtio_modern=1 virtio_legacy=0 exit=0";
        let v = blk_verdicts(slow);
        let missed: Vec<&str> = v
            .iter()
            .filter(|(_, v)| *v == Verdict::Missed)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            missed,
            [
                "block writes no slower than QEMU",
                "block I/O no more VMM CPU per MiB than QEMU"
            ]
        );
    }

    const SNAP_GOOD: [&str; 4] = [
        "BENCH snap-vmm-512 1 create_us=300000 load_us=5000 answer_extra_us=20000 mem_alloc_bytes=1040 nonzero_bytes=1000 overhead_kib=1700 exit=0",
        "BENCH snap-vmm-2048 1 create_us=400000 load_us=5500 answer_extra_us=30000 mem_alloc_bytes=1000 nonzero_bytes=1000 overhead_kib=1800 exit=0",
        "BENCH snap-qemu-512 1 create_us=1200000 file_bytes=9 load_us=600000 answer_extra_us=60000 exit=0",
        "BENCH snap-qemu-2048 1 create_us=2400000 file_bytes=9 load_us=1300000 answer_extra_us=90000 exit=0",
    ];

    fn snap_verdicts(ls: &[String]) -> Vec<(&'static str, Verdict)> {
        judge(&parse(ls), |p| p == "snapshot")
            .into_iter()
            .map(|j| (j.target, j.verdict))
            .collect()
    }

    fn not_met(v: &[(&'static str, Verdict)]) -> Vec<(&'static str, Verdict)> {
        v.iter()
            .filter(|(_, v)| *v != Verdict::Met)
            .cloned()
            .collect()
    }

    #[test]
    fn snapshot_figures_within_every_target_pass() {
        let v = snap_verdicts(&lines(&SNAP_GOOD));
        assert_eq!(v.len(), 14);
        assert_eq!(not_met(&v), []);
    }

    #[test]
    fn a_snapshot_figure_over_its_target_misses_it() {
        let mut ls = lines(&SNAP_GOOD);
        // 2 GiB load 1.3 x the 512 MiB one; 512 MiB file 1.06 x its non-zero bytes; restored
        // overhead 1,873 KiB; create slower than Firecracker's half.
        ls[0] = ls[0]
            .replace("mem_alloc_bytes=1040", "mem_alloc_bytes=1060")
            .replace("create_us=300000", "create_us=484600");
        ls[1] = ls[1]
            .replace("load_us=5500", "load_us=6500")
            .replace("overhead_kib=1800", "overhead_kib=1873");
        let missed: Vec<&str> = not_met(&snap_verdicts(&ls))
            .into_iter()
            .map(|(t, v)| {
                assert_eq!(v, Verdict::Missed, "{t}");
                t
            })
            .collect();
        assert_eq!(
            missed,
            [
                "snapshot load at 2 GiB within 1.2 x the load at 512 MiB",
                "snapshot create at 512 MiB at most half of Firecracker's 969 ms",
                "memory file allocated bytes at most 1.05 x the guest's touched (non-zero) bytes, 512 MiB",
                "memory overhead after restore at most Firecracker's 1,360 KiB + 512 KiB, 2 GiB",
            ]
        );
    }

    #[test]
    fn a_missing_qemu_snapshot_figure_fails_the_bench() {
        // QEMU's 2 GiB migration file was never written: its size and load are empty.
        let mut ls = lines(&SNAP_GOOD);
        ls[3] = ls[3]
            .replace("file_bytes=9", "file_bytes=")
            .replace("load_us=1300000", "load_us=");
        let v = not_met(&snap_verdicts(&ls));
        assert_eq!(
            v,
            [
                (
                    "snapshot load at most 0.1 x QEMU's, 2 GiB",
                    Verdict::Missing(vec!["snap-qemu-2048 load_us (in 1 of 1 runs)".into()])
                ),
                (
                    "every QEMU snapshot figure measured",
                    Verdict::Missing(vec![
                        "snap-qemu-2048 file_bytes (in 1 of 1 runs)".into(),
                        "snap-qemu-2048 load_us (in 1 of 1 runs)".into()
                    ])
                ),
            ]
        );
        // No QEMU in the host at all: no QEMU line.
        let v = not_met(&snap_verdicts(&lines(&SNAP_GOOD[..2])));
        assert!(v.iter().all(|(_, v)| matches!(v, Verdict::Missing(_))));
        assert_eq!(v.len(), 5, "{v:?}");
    }
}
