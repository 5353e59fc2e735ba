//! The VM configuration, from the command line or from a Firecracker-style JSON config file.

use std::path::PathBuf;

use serde::Deserialize;

use crate::api::model::{Drive, Entropy, NetworkInterface, Vsock};
use crate::console::ConsoleConfig;

/// The kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEM_MIB: u32 = 128;
/// Largest guest memory accepted, in MiB (the IPA size may lower it further).
pub const MAX_MEM_MIB: u32 = 1 << 20;

/// What to do when the guest asks for a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetPolicy {
    /// Exit the VMM, as Firecracker does.
    #[default]
    Exit,
    /// Boot the guest again from the same configuration.
    Reboot,
}

/// Errors in a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The JSON is malformed, has an unknown key or a wrong type.
    #[error("invalid config file: {0}")]
    Json(#[from] serde_json::Error),
    /// A Firecracker section this VMM does not support yet.
    #[error("config file section '{0}' is not supported yet")]
    UnsupportedSection(&'static str),
    /// A Firecracker setting this VMM does not support yet.
    #[error("{0} is not supported yet")]
    UnsupportedSetting(String),
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Everything needed to boot a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The kernel: an arm64 `Image`, raw or gzip-compressed.
    pub kernel: PathBuf,
    /// The initrd, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line, before the VMM's additions.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Where the serial console goes.
    pub console: ConsoleConfig,
    /// What a guest reset does.
    pub on_reset: ResetPolicy,
    /// Whether the boot-timer device reports the guest's boot time.
    pub boot_timer: bool,
    /// Whether KVM logs the pages the guest writes, for Diff snapshots.
    pub track_dirty_pages: bool,
    /// Block devices, in attachment order.
    pub drives: Vec<Drive>,
    /// The entropy device, if any.
    pub entropy: Option<Entropy>,
    /// Network interfaces, in attachment order.
    pub net: Vec<NetworkInterface>,
    /// The vsock device, if any.
    pub vsock: Option<Vsock>,
}

/// virtio-mmio slots, shared by every virtio device.
pub const MAX_VIRTIO_DEVICES: usize = arch::layout::VIRTIO_MMIO_SLOTS as usize;

/// Checks the virtio devices together: each one, unique ids and taps, one root drive at most,
/// and the MMIO slots.
pub fn validate_devices(cfg: &VmConfig) -> Result<(), String> {
    let (drives, net) = (&cfg.drives, &cfg.net);
    for (i, d) in drives.iter().enumerate() {
        d.validate()?;
        if drives[..i].iter().any(|o| o.drive_id == d.drive_id) {
            return Err(format!("drive_id '{}' is used twice", d.drive_id));
        }
    }
    if drives.iter().filter(|d| d.is_root_device).count() > 1 {
        return Err("only one drive can be the root device".into());
    }
    for (i, n) in net.iter().enumerate() {
        n.validate()?;
        if net[..i].iter().any(|o| o.iface_id == n.iface_id) {
            return Err(format!("iface_id '{}' is used twice", n.iface_id));
        }
        if net[..i].iter().any(|o| o.host_dev_name == n.host_dev_name) {
            return Err(format!(
                "tap '{}' is used by two interfaces",
                n.host_dev_name
            ));
        }
        if let Some(mac) = &n.guest_mac {
            if net[..i].iter().any(|o| {
                o.guest_mac
                    .as_ref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(mac))
            }) {
                return Err(format!("guest_mac {mac} is used twice"));
            }
        }
    }
    if let Some(v) = &cfg.vsock {
        v.validate()?;
    }
    let devices = drives.len()
        + net.len()
        + usize::from(cfg.entropy.is_some())
        + usize::from(cfg.vsock.is_some());
    if devices > MAX_VIRTIO_DEVICES {
        return Err(format!(
            "{devices} virtio devices requested; at most {MAX_VIRTIO_DEVICES} fit in the MMIO slots"
        ));
    }
    Ok(())
}

/// Parses `vmm run --net`: `id=ID,tap=TAP[,mac=MAC]`.
pub fn parse_net_arg(s: &str) -> Result<NetworkInterface, String> {
    let mut n = NetworkInterface {
        iface_id: String::new(),
        host_dev_name: String::new(),
        guest_mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => n.iface_id = v.to_string(),
            Some(("tap", v)) => n.host_dev_name = v.to_string(),
            Some(("mac", v)) => n.guest_mac = Some(v.to_string()),
            _ => {
                return Err(format!(
                    "unknown net option '{part}': expected id=, tap=, mac="
                ));
            }
        }
    }
    if n.iface_id.is_empty() || n.host_dev_name.is_empty() {
        return Err(format!("net '{s}' needs id=ID and tap=TAP"));
    }
    n.validate()?;
    Ok(n)
}

/// Parses `vmm run --vsock`: `cid=CID,path=UDS_PATH`.
pub fn parse_vsock_arg(s: &str) -> Result<Vsock, String> {
    let (mut cid, mut path) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("cid", v)) => {
                cid = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("cid={v} is not a context id"))?,
                );
            }
            Some(("path", v)) => path = Some(v.to_string()),
            _ => {
                return Err(format!(
                    "unknown vsock option '{part}': expected cid=, path="
                ));
            }
        }
    }
    match (cid, path) {
        (Some(guest_cid), Some(uds_path)) => Ok(Vsock {
            vsock_id: None,
            guest_cid,
            uds_path,
        }),
        _ => Err(format!("vsock '{s}' needs cid=CID and path=UDS_PATH")),
    }
}

/// Parses `vmm run --drive`: `id=ID,path=PATH[,root][,ro][,cache=unsafe|writeback][,bw=BYTES_PER_S]`.
pub fn parse_drive_arg(s: &str) -> Result<Drive, String> {
    let mut d = Drive {
        drive_id: String::new(),
        path_on_host: String::new(),
        is_root_device: false,
        is_read_only: false,
        cache_type: crate::api::model::CacheType::Unsafe,
        partuuid: None,
        io_engine: None,
        rate_limiter: None,
    };
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => d.drive_id = v.to_string(),
            Some(("path", v)) => d.path_on_host = v.to_string(),
            Some(("cache", "unsafe")) => d.cache_type = crate::api::model::CacheType::Unsafe,
            Some(("cache", "writeback")) => d.cache_type = crate::api::model::CacheType::Writeback,
            Some(("bw", v)) => {
                let bytes_per_s = v
                    .parse::<u64>()
                    .map_err(|_| format!("bw={v} is not a number of bytes per second"))?;
                d.rate_limiter = Some(crate::api::model::RateLimiterConfig {
                    bandwidth: Some(crate::api::model::TokenBucketConfig {
                        size: bytes_per_s,
                        one_time_burst: None,
                        refill_time: 1000,
                    }),
                    ops: None,
                });
            }
            None if part == "root" => d.is_root_device = true,
            None if part == "ro" => d.is_read_only = true,
            _ => {
                return Err(format!(
                    "unknown drive option '{part}': expected id=, path=, root, ro, cache=unsafe|writeback"
                ));
            }
        }
    }
    if d.path_on_host.is_empty() {
        return Err(format!("drive '{s}' needs path=PATH"));
    }
    if d.drive_id.is_empty() {
        return Err(format!("drive '{s}' needs id=ID"));
    }
    d.validate()?;
    Ok(d)
}

/// Checks that a drive's image can be opened as the drive would open it.
pub fn check_drive_file(d: &Drive) -> Result<(), String> {
    open_regular_file(&d.path_on_host, !d.is_read_only)
        .map(|_| ())
        .map_err(|e| format!("drive {}: cannot open {}: {e}", d.drive_id, d.path_on_host))
}

/// Opens a path as a regular file (for writing too if asked), as the VMM will use it.
pub fn open_regular_file(path: &str, write: bool) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            vcpus: DEFAULT_VCPUS,
            mem_mib: DEFAULT_MEM_MIB,
            console: ConsoleConfig::Stdio,
            on_reset: ResetPolicy::Exit,
            boot_timer: false,
            track_dirty_pages: false,
            drives: Vec::new(),
            entropy: None,
            net: Vec::new(),
            vsock: None,
        }
    }

    /// Checks what can be checked without KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::Invalid("vcpu count must be at least 1".into()));
        }
        let max = arch::layout::MAX_VCPUS;
        if self.vcpus > max {
            return Err(ConfigError::Invalid(format!(
                "vcpu count {} exceeds the maximum of {max}",
                self.vcpus
            )));
        }
        if self.mem_mib == 0 {
            return Err(ConfigError::Invalid(
                "memory size must be at least 1 MiB".into(),
            ));
        }
        if self.mem_mib > MAX_MEM_MIB {
            return Err(ConfigError::Invalid(format!(
                "memory size {} MiB exceeds the maximum of {MAX_MEM_MIB} MiB",
                self.mem_mib
            )));
        }
        Ok(())
    }

    /// The command line the guest gets: the configured one plus an early console on the
    /// serial port and, with the boot timer, where to report boot completion.
    pub fn guest_cmdline(&self) -> String {
        let base = self.cmdline.trim();
        let has = |key: &str| {
            base.split_whitespace()
                .any(|w| w == key || w.starts_with(&format!("{key}=")))
        };
        let mut c = base.to_string();
        if !has("earlycon") && self.console != ConsoleConfig::None {
            c.push_str(&format!(
                " earlycon=uart,mmio,{:#x}",
                arch::layout::SERIAL_BASE
            ));
        }
        if let Some(root) = self.drives.iter().find(|d| d.is_root_device) {
            if !has("root") {
                let mode = if root.is_read_only { "ro" } else { "rw" };
                c.push_str(&format!(" root=/dev/vda {mode}"));
            }
        }
        if self.boot_timer && !has("vmm.boot_timer") {
            c.push_str(&format!(
                " vmm.boot_timer={:#x}",
                arch::layout::BOOT_TIMER_BASE
            ));
        }
        c.trim().to_string()
    }

    /// Reads a Firecracker-style JSON config file (`boot-source`, `machine-config`).
    pub fn from_firecracker_json(text: &str) -> Result<Self, ConfigError> {
        let fc: FcConfig = serde_json::from_str(text)?;
        for (name, value) in [
            ("balloon", &fc.balloon),
            ("logger", &fc.logger),
            ("metrics", &fc.metrics),
            ("mmds-config", &fc.mmds_config),
            ("cpu-config", &fc.cpu_config),
        ] {
            let empty = match value {
                None | Some(serde_json::Value::Null) => true,
                Some(serde_json::Value::Array(a)) => a.is_empty(),
                Some(_) => false,
            };
            if !empty {
                return Err(ConfigError::UnsupportedSection(name));
            }
        }
        let mut cfg = Self::new(fc.boot_source.kernel_image_path);
        cfg.drives = fc.drives.unwrap_or_default();
        cfg.entropy = fc.entropy;
        cfg.net = fc.network_interfaces.unwrap_or_default();
        cfg.vsock = fc.vsock;
        if let Some(e) = &cfg.entropy {
            e.validate().map_err(ConfigError::Invalid)?;
        }
        validate_devices(&cfg).map_err(ConfigError::Invalid)?;
        cfg.initrd = fc.boot_source.initrd_path;
        if let Some(args) = fc.boot_source.boot_args {
            cfg.cmdline = args;
        }
        if let Some(m) = fc.machine_config {
            cfg.vcpus = m.vcpu_count;
            cfg.mem_mib = m.mem_size_mib;
            if m.smt {
                return Err(ConfigError::UnsupportedSetting(
                    "machine-config smt=true (Arm64 has no SMT)".into(),
                ));
            }
            cfg.track_dirty_pages = m.track_dirty_pages;
            if let Some(t) = m.cpu_template.filter(|t| t != "None") {
                return Err(ConfigError::UnsupportedSetting(format!(
                    "machine-config cpu_template '{t}'"
                )));
            }
            if let Some(h) = m.huge_pages.filter(|h| h != "None") {
                return Err(ConfigError::UnsupportedSetting(format!(
                    "machine-config huge_pages '{h}'"
                )));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FcConfig {
    #[serde(rename = "boot-source")]
    boot_source: FcBootSource,
    #[serde(rename = "machine-config")]
    machine_config: Option<FcMachineConfig>,
    drives: Option<Vec<Drive>>,
    #[serde(rename = "network-interfaces")]
    network_interfaces: Option<Vec<NetworkInterface>>,
    vsock: Option<Vsock>,
    entropy: Option<Entropy>,
    balloon: Option<serde_json::Value>,
    logger: Option<serde_json::Value>,
    metrics: Option<serde_json::Value>,
    #[serde(rename = "mmds-config")]
    mmds_config: Option<serde_json::Value>,
    #[serde(rename = "cpu-config")]
    cpu_config: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FcBootSource {
    kernel_image_path: PathBuf,
    boot_args: Option<String>,
    initrd_path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FcMachineConfig {
    vcpu_count: u32,
    mem_size_mib: u32,
    #[serde(default)]
    smt: bool,
    #[serde(default)]
    track_dirty_pages: bool,
    cpu_template: Option<String>,
    huge_pages: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 512, "smt": false, "track_dirty_pages": false},
        "drives": [], "network-interfaces": []
    }"#;

    #[test]
    fn firecracker_layout_is_read() {
        let c = VmConfig::from_firecracker_json(GOOD).unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, Some(PathBuf::from("/i")));
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!((c.vcpus, c.mem_mib), (2, 512));
    }

    #[test]
    fn machine_config_defaults_when_absent() {
        let c = VmConfig::from_firecracker_json(r#"{"boot-source": {"kernel_image_path": "/k"}}"#)
            .unwrap();
        assert_eq!(
            (c.vcpus, c.mem_mib, c.cmdline.as_str()),
            (1, 128, DEFAULT_CMDLINE)
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "bogus": 1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k", "kernel": 1}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `kernel`"), "{e}");
    }

    #[test]
    fn unsupported_sections_are_named() {
        let e = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {"amount_mib": 1}}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "config file section 'balloon' is not supported yet");
        let e = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "01:00:00:00:00:01"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("multicast"), "{e}");
        for (mac, ok) in [
            ("06:00:AC:10:00:02", true),
            ("06:00:ac:10:00", false),
            ("06:00:ac:10:00:zz", false),
            ("0600ac100002", false),
        ] {
            assert_eq!(crate::api::model::parse_mac(mac).is_ok(), ok, "{mac}");
        }
        let e = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "network-interfaces": [{"iface_id": "a", "host_dev_name": "tap0"}, {"iface_id": "b", "host_dev_name": "tap0"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tap 'tap0' is used by two interfaces"), "{e}");
        let e = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {"amount_mib": 3}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("'balloon'"), "{e}");
        for (vsock, want) in [
            (r#"{"guest_cid": 3}"#, "missing field `uds_path`"),
            (
                r#"{"guest_cid": 2, "uds_path": "/tmp/v"}"#,
                "invalid guest_cid 2",
            ),
            (r#"{"guest_cid": 3, "uds_path": ""}"#, "invalid uds_path"),
            (
                r#"{"guest_cid": 3, "uds_path": "/nonexistent-dir/v.sock"}"#,
                "the directory /nonexistent-dir does not exist",
            ),
            (
                r#"{"guest_cid": 3, "uds_path": "/etc/hostname"}"#,
                "is not a socket",
            ),
        ] {
            let e = VmConfig::from_firecracker_json(&format!(
                r#"{{"boot-source": {{"kernel_image_path": "/k"}}, "vsock": {vsock}}}"#
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(want), "{vsock}: {e}");
        }
        let c = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "vsock": {"guest_cid": 3, "uds_path": "/tmp/vmm-test-unused.sock"}}"#,
        )
        .unwrap();
        assert_eq!(c.vsock.map(|v| v.guest_cid), Some(3));
    }

    #[test]
    fn drives_and_entropy_are_read_and_checked() {
        let c = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "drives": [{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false},
                           {"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false, "cache_type": "Writeback"}],
                "entropy": {}}"#,
        )
        .unwrap();
        assert_eq!(c.drives.len(), 2);
        assert!(c.entropy.is_some());
        assert!(c.guest_cmdline().contains("root=/dev/vda rw"));
        let bad = |drives: &str| {
            VmConfig::from_firecracker_json(&format!(
                r#"{{"boot-source": {{"kernel_image_path": "/k"}}, "drives": {drives}}}"#
            ))
            .unwrap_err()
            .to_string()
        };
        let d = |id: &str, root: bool| {
            format!(r#"{{"drive_id": "{id}", "path_on_host": "/x", "is_root_device": {root}}}"#)
        };
        assert!(bad(&format!("[{}, {}]", d("a", false), d("a", false))).contains("used twice"));
        assert!(
            bad(&format!("[{}, {}]", d("a", true), d("b", true)))
                .contains("only one drive can be the root")
        );
        assert!(bad(&format!("[{}]", d("a b", false))).contains("invalid drive_id"));
        let many: Vec<String> = (0..33).map(|i| d(&format!("d{i}"), false)).collect();
        assert!(bad(&format!("[{}]", many.join(","))).contains("at most 32"));
        let limited = |rl: &str| {
            bad(&format!(
                r#"[{{"drive_id": "a", "path_on_host": "/x", "is_root_device": false, "rate_limiter": {rl}}}]"#
            ))
        };
        assert!(
            limited(r#"{"bandwidth": {"size": 0, "refill_time": 1000}}"#)
                .contains("size must be 1 to")
        );
        assert!(
            limited(r#"{"bandwidth": {"size": -1, "refill_time": 1000}}"#)
                .contains("invalid value: integer `-1`")
        );
        assert!(
            limited(r#"{"ops": {"size": 10, "refill_time": 99999999}}"#)
                .contains("refill_time must be 1 to 3600000 ms")
        );
        assert!(limited(r#"{"bandwidth": {"size": 10, "refill_time": 100, "one_time_burst": 2199023255553}}"#).contains("one_time_burst"));
        assert!(
            limited(r#"{"bandwidth": {"size": 10, "refill": 100}}"#)
                .contains("unknown field `refill`")
        );
        assert!(
            bad(r#"[{"drive_id": "a", "path_on_host": "/x"}]"#)
                .contains("missing field `is_root_device`")
        );
    }

    #[test]
    fn drive_arguments_parse() {
        let d = parse_drive_arg("id=rootfs,path=/r.ext4,root,cache=writeback").unwrap();
        assert_eq!(
            (
                d.drive_id.as_str(),
                d.path_on_host.as_str(),
                d.is_root_device,
                d.is_read_only
            ),
            ("rootfs", "/r.ext4", true, false)
        );
        assert_eq!(d.cache_type, crate::api::model::CacheType::Writeback);
        assert!(parse_drive_arg("id=d,path=/x,ro").unwrap().is_read_only);
        assert!(parse_drive_arg("id=d").unwrap_err().contains("needs path="));
        assert!(
            parse_drive_arg("path=/x")
                .unwrap_err()
                .contains("needs id=")
        );
        assert!(
            parse_drive_arg("id=d,path=/x,fast")
                .unwrap_err()
                .contains("unknown drive option 'fast'")
        );
        assert!(
            parse_drive_arg("id=a b,path=/x")
                .unwrap_err()
                .contains("invalid drive_id")
        );
    }

    #[test]
    fn malformed_json_and_wrong_types_are_errors() {
        assert!(
            VmConfig::from_firecracker_json("{")
                .unwrap_err()
                .to_string()
                .starts_with("invalid config file")
        );
        let e = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": "two", "mem_size_mib": 1}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid type"), "{e}");
        let e = VmConfig::from_firecracker_json(
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 1}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing field `boot-source`"), "{e}");
    }

    #[test]
    fn ranges_are_checked() {
        let mut c = VmConfig::new("/k".into());
        c.vcpus = 0;
        assert!(c.validate().unwrap_err().to_string().contains("at least 1"));
        c.vcpus = 500;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("exceeds the maximum of 123")
        );
        c.vcpus = 1;
        c.mem_mib = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("memory size")
        );
        let e = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("vcpu count"));
    }

    #[test]
    fn dirty_page_tracking_is_taken_from_machine_config() {
        let on = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}}"#,
        )
        .unwrap();
        assert!(on.track_dirty_pages);
        assert!(
            !VmConfig::from_firecracker_json(GOOD)
                .unwrap()
                .track_dirty_pages
        );
    }

    #[test]
    fn cmdline_gets_earlycon_and_boot_timer() {
        let mut c = VmConfig::new("/k".into());
        assert_eq!(
            c.guest_cmdline(),
            "console=ttyS0 reboot=k panic=1 earlycon=uart,mmio,0x9000000"
        );
        c.cmdline = "earlycon console=ttyS0".into();
        c.boot_timer = true;
        assert_eq!(
            c.guest_cmdline(),
            "earlycon console=ttyS0 vmm.boot_timer=0x9020000"
        );
        c.console = ConsoleConfig::None;
        c.cmdline = "quiet".into();
        assert_eq!(c.guest_cmdline(), "quiet vmm.boot_timer=0x9020000");
    }
}
