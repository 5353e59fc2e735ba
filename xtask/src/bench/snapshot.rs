//! The snapshot phase's table: vmm's snapshot create and load against QEMU's migration to a
//! file and `-incoming` from it in the same run, next to Firecracker's figures from the same
//! setup (constants: Firecracker cannot be installed here).

use super::judge::{Samples, firecracker as fc, get};
use super::{MISSING, fmt, ratio};

/// The guest sizes measured, MiB.
pub const SIZES: [u32; 2] = [512, 2048];

fn ms(v: Option<f64>) -> String {
    fmt(v, 1000.0, "ms")
}

fn mib(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1} MiB", v / (1 << 20) as f64))
        .unwrap_or_else(|| MISSING.into())
}

fn bytes(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} B"))
        .unwrap_or_else(|| MISSING.into())
}

/// A ratio with three decimals, for ratios far below 1.
fn ratio3(p: (Option<f64>, Option<f64>)) -> String {
    match p {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.3}", a / b),
        _ => MISSING.into(),
    }
}

/// Prints the table; returns its medians for the JSON.
pub fn table(s: &Samples) -> serde_json::Value {
    let v = |size: u32, key: &str| get(s, &format!("snap-vmm-{size}"), key);
    let q = |size: u32, key: &str| get(s, &format!("snap-qemu-{size}"), key);
    println!(
        "\nsnapshot: 1 vCPU guest that touched 256 MiB; vmm Full snapshot (PUT /snapshot/create, then /snapshot/load with resume_vm into a fresh process) against QEMU (migrate to exec:cat > file with max-bandwidth lifted, then -incoming), files in the host's tmpfs, caches dropped; Firecracker measured earlier in the same setup"
    );
    println!(
        "| metric | vmm 512 MiB | vmm 2 GiB | QEMU 512 MiB | QEMU 2 GiB | Firecracker 512 MiB / 2 GiB (measured earlier, same setup) | target |"
    );
    println!("|---|---|---|---|---|---|---|");
    let row = |name: &str,
               key: &str,
               qkey: Option<&str>,
               f: &dyn Fn(Option<f64>) -> String,
               fc: &str,
               target: &str| {
        let qv = |size| qkey.map_or("-".to_string(), |k| f(q(size, k)));
        println!(
            "| {name} | {} | {} | {} | {} | {fc} | {target} |",
            f(v(512, key)),
            f(v(2048, key)),
            qv(512),
            qv(2048),
        );
    };
    row(
        "create (curl time_total; QEMU: its migration total time)",
        "create_us",
        Some("create_us"),
        &ms,
        &format!(
            "{} / {}",
            ms(Some(fc::CREATE_US_512)),
            ms(Some(fc::CREATE_US_2048))
        ),
        "<= FC/2 at 512 MiB, <= QEMU",
    );
    row(
        "create (vmm's metric full_create_snapshot)",
        "create_metric_us",
        None,
        &ms,
        "",
        "",
    );
    row("state file", "state_bytes", None, &bytes, "5983 B", "");
    row(
        "memory file size (QEMU: stream)",
        "mem_bytes",
        Some("file_bytes"),
        &mib,
        "512 MiB / 2 GiB",
        "",
    );
    row(
        "memory file allocated (du)",
        "mem_alloc_bytes",
        Some("file_alloc_bytes"),
        &mib,
        "512 MiB / 2 GiB (not sparse)",
        "",
    );
    row(
        "non-zero guest memory in the file",
        "nonzero_bytes",
        None,
        &mib,
        "",
        "",
    );
    for size in SIZES {
        println!(
            "| allocated / non-zero, {size} MiB | {} | | | | | <= 1.05 |",
            ratio((v(size, "mem_alloc_bytes"), v(size, "nonzero_bytes")))
        );
        println!(
            "| allocated / the 256 MiB the workload wrote, {size} MiB | {} | | | | | |",
            ratio((v(size, "mem_alloc_bytes"), v(size, "workload_bytes")))
        );
    }
    row(
        "load, request to guest running (curl time_total; QEMU: migrate_incoming to the stream's end)",
        "load_us",
        Some("load_us"),
        &ms,
        &format!(
            "{} / {}",
            ms(Some(fc::LOAD_US_512)),
            ms(Some(fc::LOAD_US_2048))
        ),
        "<= FC's 7.6 ms, <= 0.1 x QEMU",
    );
    row(
        "load (vmm's metric load_snapshot)",
        "load_metric_us",
        None,
        &ms,
        "",
        "",
    );
    println!(
        "| QEMU load to running (paused seen, then cont) | | | {} | {} | | |",
        ms(q(512, "running_us")),
        ms(q(2048, "running_us"))
    );
    println!(
        "| load, vmm / QEMU | {} | {} | | | | <= 0.1 |",
        ratio3((v(512, "load_us"), q(512, "load_us"))),
        ratio3((v(2048, "load_us"), q(2048, "load_us")))
    );
    println!(
        "| load, 2 GiB / 512 MiB | | {} | | {} | | <= 1.2 (vmm) |",
        ratio((v(2048, "load_us"), v(512, "load_us"))),
        ratio((q(2048, "load_us"), q(512, "load_us")))
    );
    row(
        "console round trip, running guest",
        "baseline_us",
        Some("baseline_us"),
        &ms,
        "26.5-27.6 ms",
        "",
    );
    row(
        "first console answer after the load returned (QEMU: after the monitor showed it running)",
        "answer_us",
        Some("answer_us"),
        &ms,
        "54.3 / 63.1 ms",
        "",
    );
    row(
        "of which beyond the round trip",
        "answer_extra_us",
        Some("answer_extra_us"),
        &ms,
        &format!(
            "{} / {}",
            ms(Some(fc::ANSWER_EXTRA_US_512)),
            ms(Some(fc::ANSWER_EXTRA_US_2048))
        ),
        "<= FC",
    );
    row(
        "VMM memory overhead after restore (Rss outside guest RAM)",
        "overhead_kib",
        Some("overhead_kib"),
        &|x| fmt(x, 1.0, "KiB"),
        &format!("{} KiB", fc::OVERHEAD_KIB),
        "<= FC + 512 KiB",
    );
    let mut out = serde_json::Map::new();
    for size in SIZES {
        for (who, keys) in [
            (
                "vmm",
                &[
                    "create_us",
                    "create_metric_us",
                    "state_bytes",
                    "mem_bytes",
                    "mem_alloc_bytes",
                    "nonzero_bytes",
                    "load_us",
                    "load_metric_us",
                    "baseline_us",
                    "answer_us",
                    "answer_extra_us",
                    "overhead_kib",
                ][..],
            ),
            (
                "qemu",
                &[
                    "create_us",
                    "file_bytes",
                    "file_alloc_bytes",
                    "load_us",
                    "running_us",
                    "baseline_us",
                    "answer_us",
                    "answer_extra_us",
                    "overhead_kib",
                ][..],
            ),
        ] {
            let m: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .map(|k| {
                    let x = get(s, &format!("snap-{who}-{size}"), k);
                    ((*k).to_string(), serde_json::json!(x))
                })
                .collect();
            out.insert(format!("{who}-{size}"), serde_json::Value::Object(m));
        }
    }
    serde_json::Value::Object(out)
}
