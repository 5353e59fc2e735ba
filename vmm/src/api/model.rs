//! Request and response bodies of the API, with Firecracker's field names. Every request body
//! refuses unknown fields; the router refuses `null` and lists in a body before these types see
//! it (serde would take them for a left-out field and for an object).

use serde::{Deserialize, Serialize};

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Path of the kernel image on the host.
    pub kernel_image_path: String,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Path of the initrd on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// Huge-page backing of guest memory. Only `None` for now; Firecracker's `2M` is refused by
/// name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum HugePages {
    /// Normal pages.
    #[default]
    None,
}

impl TryFrom<String> for HugePages {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "None" => Ok(Self::None),
            "2M" => Err("huge_pages 2M is not supported yet".into()),
            other => Err(format!("unknown huge_pages value '{other}', expected None")),
        }
    }
}

/// `GET`/`PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (always false on Arm64).
    #[serde(default)]
    pub smt: bool,
    /// KVM logs the pages the guest writes, for Diff snapshots.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages.
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: crate::config::DEFAULT_VCPUS,
            mem_size_mib: crate::config::DEFAULT_MEM_MIB,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

/// `PATCH /machine-config`: any subset of the fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    /// Number of vCPUs.
    pub vcpu_count: Option<u32>,
    /// Guest memory in MiB.
    pub mem_size_mib: Option<u32>,
    /// Simultaneous multithreading.
    pub smt: Option<bool>,
    /// Dirty-page tracking.
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    pub huge_pages: Option<HugePages>,
}

/// The actions of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Boot the configured guest.
    InstanceStart,
    /// Write a metrics line now.
    FlushMetrics,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// What to do.
    pub action_type: ActionType,
}

/// The states `PATCH /vm` can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmStateRequest {
    /// Stop every vCPU.
    Paused,
    /// Let the vCPUs run again.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmPatch {
    /// The wanted state.
    pub state: VmStateRequest,
}

/// Log levels, as Firecracker names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Informational messages and above.
    Info,
    /// Debug messages and above.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `log` crate's filter for this level.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            Self::Off => log::LevelFilter::Off,
            Self::Error => log::LevelFilter::Error,
            Self::Warning => log::LevelFilter::Warn,
            Self::Info => log::LevelFilter::Info,
            Self::Debug => log::LevelFilter::Debug,
            Self::Trace => log::LevelFilter::Trace,
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            format!("log level must be one of Off, Error, Warning, Info, Debug, Trace, not '{s}'")
        })
    }
}

/// `PUT /logger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// File or FIFO the log goes to (stderr when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Whether lines show their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Whether lines show the source location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File or FIFO the metrics lines go to.
    pub metrics_path: String,
}

/// The instance states `GET /` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum InstanceState {
    /// Configured but not booted.
    #[serde(rename = "Not started")]
    NotStarted,
    /// Running.
    Running,
    /// Paused.
    Paused,
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    /// The application.
    pub app_name: String,
    /// The instance id (`--id`).
    pub id: String,
    /// Its state.
    pub state: InstanceState,
    /// The VMM's version.
    pub vmm_version: String,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// Named as Firecracker names it, for clients that read it; the value is this VMM's version.
    pub firecracker_version: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What went wrong.
    pub fault_message: String,
}

/// Firecracker's drive cache types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CacheType {
    /// No flush offered to the guest.
    #[default]
    Unsafe,
    /// Flush offered, done with fsync.
    Writeback,
}

/// `PUT /drives/{drive_id}`, and an entry of the config file's `drives`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id (its serial, too).
    pub drive_id: String,
    /// The raw image on the host.
    pub path_on_host: String,
    /// Whether the guest boots from it (`root=/dev/vda`).
    pub is_root_device: bool,
    /// Whether writes are refused.
    #[serde(default)]
    pub is_read_only: bool,
    /// Cache type.
    #[serde(default)]
    pub cache_type: CacheType,
    /// Root partition UUID (not supported yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// I/O engine: only `Sync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Bandwidth and operation limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Firecracker's I/O engines; only `Sync` for now, `Async` is refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum IoEngine {
    /// Synchronous I/O on the device thread.
    Sync,
}

impl TryFrom<String> for IoEngine {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "Sync" => Ok(Self::Sync),
            "Async" => Err("io_engine Async is not supported yet".into()),
            other => Err(format!("unknown io_engine '{other}', expected Sync")),
        }
    }
}

/// Firecracker's token bucket: `size` tokens refilled every `refill_time` milliseconds, and a
/// one-time burst spent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens (bytes or operations) in a full bucket.
    pub size: u64,
    /// Extra tokens usable once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the whole bucket.
    pub refill_time: u64,
}

/// Largest bucket size or burst accepted (1 TiB of tokens).
pub const MAX_BUCKET_TOKENS: u64 = 1 << 40;
/// Longest refill time accepted (one hour).
pub const MAX_REFILL_MS: u64 = 3_600_000;

impl TokenBucketConfig {
    fn validate(&self, what: &str) -> Result<(), String> {
        if self.size == 0 || self.size > MAX_BUCKET_TOKENS {
            return Err(format!(
                "{what} size must be 1 to {MAX_BUCKET_TOKENS}; leave the bucket out for no limit"
            ));
        }
        if self.refill_time == 0 || self.refill_time > MAX_REFILL_MS {
            return Err(format!(
                "{what} refill_time must be 1 to {MAX_REFILL_MS} ms"
            ));
        }
        if self.one_time_burst.is_some_and(|b| b > MAX_BUCKET_TOKENS) {
            return Err(format!(
                "{what} one_time_burst must be at most {MAX_BUCKET_TOKENS}"
            ));
        }
        Ok(())
    }
}

/// A rate limiter: a bandwidth bucket (bytes) and an operations bucket, both optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// Checks both buckets.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(b) = &self.bandwidth {
            b.validate("rate_limiter bandwidth")?;
        }
        if let Some(o) = &self.ops {
            o.validate("rate_limiter ops")?;
        }
        Ok(())
    }

    /// The device-side limiter, with full buckets now.
    pub fn build(&self) -> devices::rate_limiter::RateLimiter {
        let now = std::time::Instant::now();
        let bucket = |b: &TokenBucketConfig| {
            devices::rate_limiter::TokenBucket::new(
                b.size,
                b.one_time_burst.unwrap_or(0),
                std::time::Duration::from_millis(b.refill_time),
                now,
            )
        };
        devices::rate_limiter::RateLimiter {
            bandwidth: self.bandwidth.as_ref().map(bucket),
            ops: self.ops.as_ref().map(bucket),
        }
    }
}

/// `PATCH /drives/{drive_id}`: swap the backing file of a running guest's drive, or replace
/// its rate limiter (`{}` removes the limit).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivePatch {
    /// The drive's id.
    pub drive_id: String,
    /// The new image.
    pub path_on_host: Option<String>,
    /// The new rate limiter.
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{iface_id}`: replace a running guest's rate limiters (`{}`
/// removes a limit).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfacePatch {
    /// The interface's id.
    pub iface_id: String,
    /// The new receive limiter.
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// The new transmit limiter.
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /entropy`, and the config file's `entropy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    /// Bandwidth and operation limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /vsock`, and the config file's `vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Accepted for compatibility (Firecracker deprecated it); it has no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id: 3 or more.
    pub guest_cid: u32,
    /// The Unix socket host processes connect to; guest connections to host port P go to
    /// `<uds_path>_P`.
    pub uds_path: String,
}

/// The longest Unix socket path, less room for the `_<port>` suffix.
const MAX_UDS_PATH: usize = 107 - 11;

impl Vsock {
    /// Checks the context id and the socket path.
    pub fn validate(&self) -> Result<(), String> {
        if self.guest_cid < 3 || self.guest_cid == u32::MAX {
            return Err(format!(
                "invalid guest_cid {}: 0, 1 and 2 are reserved and {} means any; use 3 or more",
                self.guest_cid,
                u32::MAX
            ));
        }
        if self.uds_path.is_empty() || self.uds_path.len() > MAX_UDS_PATH {
            return Err(format!(
                "invalid uds_path '{}': give a path of 1 to {MAX_UDS_PATH} bytes",
                self.uds_path
            ));
        }
        if self.uds_path.contains('\0') {
            return Err("invalid uds_path: it contains a NUL byte".into());
        }
        devices::unix_socket::check_free(std::path::Path::new(&self.uds_path))
            .map_err(|e| format!("vsock uds_path: {e}"))?;
        let parent = std::path::Path::new(&self.uds_path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            return Err(format!(
                "vsock uds_path {}: the directory {} does not exist",
                self.uds_path,
                parent.display()
            ));
        }
        Ok(())
    }
}

/// Device ids (drive_id, iface_id) are 1 to 64 letters, digits, '-' or '_': they end up in
/// URL paths, metric names and the drive serial.
fn check_device_id(field: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {field} '{id}': use 1 to 64 letters, digits, '-' or '_'"
        ))
    }
}

impl Drive {
    /// Checks what can be checked without the file: id, unsupported settings.
    pub fn validate(&self) -> Result<(), String> {
        check_device_id("drive_id", &self.drive_id)?;
        if let Some(r) = &self.rate_limiter {
            r.validate()?;
        }
        if self.partuuid.is_some() {
            return Err("partuuid is not supported yet".into());
        }
        Ok(())
    }
}

impl Entropy {
    /// Checks unsupported settings.
    pub fn validate(&self) -> Result<(), String> {
        self.rate_limiter
            .as_ref()
            .map_or(Ok(()), RateLimiterConfig::validate)
    }
}

/// `PUT /network-interfaces/{iface_id}`, and an entry of the config file's
/// `network-interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id.
    pub iface_id: String,
    /// The host tap device.
    pub host_dev_name: String,
    /// The guest's MAC address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Parses a unicast MAC address written as six colon-separated hex bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad =
        || format!("invalid MAC address '{s}': expected six hex bytes like 06:00:ac:10:00:02");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "invalid MAC address '{s}': a multicast address cannot name a guest NIC"
        ));
    }
    Ok(mac)
}

impl NetworkInterface {
    /// Checks id, tap name, MAC and unsupported settings.
    pub fn validate(&self) -> Result<(), String> {
        check_device_id("iface_id", &self.iface_id)?;
        if self.host_dev_name.is_empty()
            || self.host_dev_name.len() > 15
            || !self
                .host_dev_name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return Err(format!(
                "invalid host_dev_name '{}': a Linux interface name of 1 to 15 characters",
                self.host_dev_name
            ));
        }
        if let Some(m) = &self.guest_mac {
            parse_mac(m)?;
        }
        for r in [&self.rx_rate_limiter, &self.tx_rate_limiter]
            .into_iter()
            .flatten()
        {
            r.validate()?;
        }
        Ok(())
    }
}
