//! Metrics in Firecracker's layout: counters grouped by component, written as one JSON object
//! per line to a file or FIFO on `FlushMetrics`, every minute, and at exit.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, Serializer};

/// A counter that serializes as its value.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the value (for gauges such as the boot time).
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

macro_rules! group {
    ($(#[$m:meta])* $name:ident { $($field:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default, Serialize)]
        pub struct $name { $(#[allow(missing_docs)] pub $field: Counter,)* }

        impl $name {
            /// The counter called `name`, if the group has one.
            pub fn counter(&self, name: &str) -> Option<&Counter> {
                match name {
                    $(stringify!($field) => Some(&self.$field),)*
                    _ => None,
                }
            }
        }
    };
}

group!(
    /// `api_server`.
    ApiServerMetrics { process_startup_time_us, sync_response_fails, sync_vmm_send_timeout_count }
);
group!(
    /// `get_api_requests`.
    GetApiMetrics { instance_info_count, machine_cfg_count, vm_config_count, vmm_version_count, migration_count }
);
group!(
    /// `put_api_requests`.
    PutApiMetrics {
        actions_count, actions_fails, boot_source_count, boot_source_fails, logger_count, logger_fails,
        machine_cfg_count, machine_cfg_fails, metrics_count, metrics_fails,
        drive_count, drive_fails, entropy_count, entropy_fails, network_count, network_fails,
        vsock_count, vsock_fails, snapshot_create_count, snapshot_create_fails,
        snapshot_load_count, snapshot_load_fails, migration_send_count, migration_send_fails,
        migration_receive_count, migration_receive_fails, migration_cancel_count,
        migration_cancel_fails,
    }
);
group!(
    /// `patch_api_requests`.
    PatchApiMetrics {
        machine_cfg_count, machine_cfg_fails, vm_count, vm_fails, drive_count, drive_fails,
        network_count, network_fails,
    }
);
group!(
    /// `latencies_us`: how long the last of each snapshot operation took, in microseconds.
    LatencyMetrics { full_create_snapshot, diff_create_snapshot, load_snapshot }
);
group!(
    /// `vcpu`.
    VcpuMetrics { exit_mmio_read, exit_mmio_write, failures }
);
group!(
    /// `vmm`.
    VmmMetrics { boot_time_us, setup_time_us, pause_count, resume_count }
);
group!(
    /// `logger`.
    LoggerMetrics { missed_log_count }
);
group!(
    /// `uart`.
    UartMetrics { write_count, read_count, missed_write_count }
);

/// Every metric of the process.
#[derive(Debug, Default, Serialize)]
pub struct Metrics {
    pub api_server: ApiServerMetrics,
    pub get_api_requests: GetApiMetrics,
    pub put_api_requests: PutApiMetrics,
    pub patch_api_requests: PatchApiMetrics,
    pub latencies_us: LatencyMetrics,
    pub vcpu: VcpuMetrics,
    pub vmm: VmmMetrics,
    pub logger: LoggerMetrics,
    pub uart: UartMetrics,
}

/// The process's metrics.
pub static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::default);

impl Metrics {
    /// Counts one API request, or its failure, by Firecracker's bucket names.
    pub fn count_request(&self, group: &str, name: &str, failed: bool) {
        let fails = name.replace("_count", "_fails");
        let pick = |n: &str| -> Option<&Counter> {
            match group {
                "get_api_requests" => self.get_api_requests.counter(n),
                "put_api_requests" => self.put_api_requests.counter(n),
                "patch_api_requests" => self.patch_api_requests.counter(n),
                _ => None,
            }
        };
        if let Some(c) = pick(name) {
            c.inc();
        }
        if failed {
            if let Some(c) = pick(&fails) {
                c.inc();
            }
        }
    }

    /// One metrics line: the counters plus a UTC timestamp in milliseconds.
    pub fn line(&self) -> String {
        self.line_with(&[])
    }

    /// One metrics line with per-device groups (`block_rootfs`, `entropy`, ...) added.
    pub fn line_with(&self, devices: &[DeviceGroup]) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for (name, counters) in devices {
                let group: serde_json::Map<String, serde_json::Value> = counters
                    .iter()
                    .map(|(k, n)| ((*k).to_string(), (*n).into()))
                    .collect();
                o.insert(name.clone(), group.into());
            }
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("utc_timestamp_ms".into(), ms.into());
        }
        v.to_string()
    }
}

/// A device's metrics group: its name in the line and its counters.
pub type DeviceGroup = (String, Vec<(&'static str, u64)>);

/// Where metrics lines go.
#[derive(Debug)]
pub struct MetricsSink {
    file: File,
    path: String,
}

impl MetricsSink {
    /// Opens a file (appended to, created if missing) or an existing FIFO. A FIFO nobody
    /// reads is an error (ENXIO) rather than a VMM thread blocked in open.
    pub fn open(path: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        Ok(Self {
            file,
            path: path.to_string(),
        })
    }

    /// The path it writes to.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Writes one line with the current counters and the devices' groups.
    pub fn flush(&mut self, m: &Metrics, devices: &[DeviceGroup]) -> std::io::Result<()> {
        let mut line = m.line_with(devices);
        line.push('\n');
        self.file.write_all(line.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_use_firecracker_group_names() {
        let m = Metrics::default();
        m.count_request("put_api_requests", "actions_count", true);
        m.count_request("get_api_requests", "instance_info_count", false);
        m.vcpu.exit_mmio_write.add(3);
        let v: serde_json::Value = serde_json::from_str(&m.line()).unwrap();
        assert_eq!(v["put_api_requests"]["actions_count"], 1);
        assert_eq!(v["put_api_requests"]["actions_fails"], 1);
        assert_eq!(v["get_api_requests"]["instance_info_count"], 1);
        assert_eq!(v["vcpu"]["exit_mmio_write"], 3);
        assert!(v["utc_timestamp_ms"].as_u64().unwrap() > 0);
    }

    #[test]
    fn a_fifo_without_a_reader_is_refused_at_once() {
        let p = std::env::temp_dir().join(format!("vmm-metrics-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = MetricsSink::open(p.to_str().unwrap()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_sink_appends_one_line_per_flush() {
        let p = std::env::temp_dir().join(format!("vmm-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let mut s = MetricsSink::open(p.to_str().unwrap()).unwrap();
        let m = Metrics::default();
        s.flush(&m, &[]).unwrap();
        s.flush(&m, &[("block_rootfs".into(), vec![("read_count", 3)])])
            .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["block_rootfs"]["read_count"], 3);
        std::fs::remove_file(p).unwrap();
    }
}
