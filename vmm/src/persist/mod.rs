//! What a snapshot holds besides the components' own sections: the `vm` section (the
//! configuration the VM was built from, its memory layout, the guest's counter and when the
//! snapshot was taken), the names of every section, and the summary `vmm snapshot inspect`
//! prints. Portable; the KVM side that collects and applies the sections is in `create.rs`
//! and `vm/restore.rs`.

use serde::{Deserialize, Serialize};

use crate::api::model::{
    CacheType, Drive, Entropy, NetworkInterface, RateLimiterConfig, TokenBucketConfig, Vsock,
};
use crate::config::VmConfig;
use migration::Versioned;

#[cfg(target_arch = "aarch64")]
pub mod create;
pub mod decode;
pub mod inspect;

/// The section of the VM itself.
pub const VM_SECTION: &str = "vm";
/// The vGIC's section.
pub const GIC_SECTION: &str = "gic";
/// The serial port's section.
pub const SERIAL_SECTION: &str = "serial";
/// The RTC's section.
pub const RTC_SECTION: &str = "rtc";
/// The boot timer's section (present when the VM has one).
pub const BOOT_TIMER_SECTION: &str = "boot_timer";

/// vCPU `i`'s section.
pub fn vcpu_section(i: usize) -> String {
    format!("vcpu{i}")
}

/// A virtio transport's section, by its device id (`block_root`, `net_eth0`, `vsock`).
pub fn transport_section(id: &str) -> String {
    format!("virtio/{id}")
}

/// A virtio device's own section.
pub fn device_section(id: &str) -> String {
    format!("virtio/{id}/device")
}

/// A token bucket as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBucket {
    /// Tokens in a full bucket.
    pub size: u64,
    /// Extra tokens usable once.
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill.
    pub refill_time: u64,
}

/// A rate limiter's configuration as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLimiter {
    /// Bytes.
    pub bandwidth: Option<SavedBucket>,
    /// Operations.
    pub ops: Option<SavedBucket>,
}

/// A drive as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDrive {
    /// Its id.
    pub id: String,
    /// The backing file, reopened by path on restore.
    pub path: String,
    /// Whether it is the root device.
    pub root: bool,
    /// Read-only.
    pub read_only: bool,
    /// Whether flushes are offered (Writeback) or not (Unsafe).
    pub writeback: bool,
    /// The root partition's UUID, if given.
    pub partuuid: Option<String>,
    /// Its rate limiter's configuration.
    pub rate_limiter: Option<SavedLimiter>,
}

/// A network interface as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNet {
    /// Its id.
    pub id: String,
    /// The tap, reopened by name on restore unless overridden.
    pub tap: String,
    /// The MAC the user gave, if any (the device's own state holds the one in use).
    pub mac: Option<String>,
    /// Receive limiter.
    pub rx_rate_limiter: Option<SavedLimiter>,
    /// Transmit limiter.
    pub tx_rate_limiter: Option<SavedLimiter>,
}

/// The vsock device as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVsock {
    /// Firecracker's deprecated id.
    pub vsock_id: Option<String>,
    /// The guest's CID.
    pub guest_cid: u32,
    /// The host socket, bound again on restore unless overridden.
    pub uds_path: String,
}

/// The configuration a VM was built from, minus what belongs to the process (console,
/// reset policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    /// The kernel it booted (not read on restore; reported by GET /vm/config).
    pub kernel: String,
    /// The initrd it booted.
    pub initrd: Option<String>,
    /// Its command line, before the VMM's additions.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub mem_mib: u32,
    /// Whether it has the boot timer.
    pub boot_timer: bool,
    /// Drives, in slot order.
    pub drives: Vec<SavedDrive>,
    /// Interfaces, in slot order.
    pub net: Vec<SavedNet>,
    /// The entropy device's limiter, if there is the device.
    pub entropy: Option<Option<SavedLimiter>>,
    /// The vsock device.
    pub vsock: Option<SavedVsock>,
}

/// The `vm` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// The vmm version that wrote the snapshot.
    pub vmm_version: String,
    /// Wall-clock time of the snapshot, nanoseconds since the Unix epoch.
    pub saved_at_unix_ns: u64,
    /// Where guest RAM starts.
    pub mem_base: u64,
    /// Its size in bytes.
    pub mem_size: u64,
    /// The counter frequency the guest saw (CNTFRQ_EL0), which the restoring host must have.
    pub counter_frequency: u64,
    /// The guest's virtual counter at the snapshot.
    pub guest_counter: u64,
    /// The GIC architecture version (3).
    pub gic_version: u32,
    /// The configuration.
    pub config: SavedConfig,
}

impl Versioned for VmState {
    const VERSION: u16 = 1;
    fn upgrade(version: u16, _: &[u8]) -> Result<Self, String> {
        Err(format!("vm state version {version} was never written"))
    }
}

fn save_bucket(b: &TokenBucketConfig) -> SavedBucket {
    SavedBucket {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time: b.refill_time,
    }
}

fn load_bucket(b: &SavedBucket) -> TokenBucketConfig {
    TokenBucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time: b.refill_time,
    }
}

fn save_limiter(r: &RateLimiterConfig) -> SavedLimiter {
    SavedLimiter {
        bandwidth: r.bandwidth.as_ref().map(save_bucket),
        ops: r.ops.as_ref().map(save_bucket),
    }
}

fn load_limiter(r: &SavedLimiter) -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: r.bandwidth.as_ref().map(load_bucket),
        ops: r.ops.as_ref().map(load_bucket),
    }
}

impl SavedConfig {
    /// The part of `cfg` a snapshot keeps.
    pub fn from_config(cfg: &VmConfig) -> Self {
        Self {
            kernel: cfg.kernel.display().to_string(),
            initrd: cfg.initrd.as_ref().map(|p| p.display().to_string()),
            cmdline: cfg.cmdline.clone(),
            vcpus: cfg.vcpus,
            mem_mib: cfg.mem_mib,
            boot_timer: cfg.boot_timer,
            drives: cfg
                .drives
                .iter()
                .map(|d| SavedDrive {
                    id: d.drive_id.clone(),
                    path: d.path_on_host.clone(),
                    root: d.is_root_device,
                    read_only: d.is_read_only,
                    writeback: d.cache_type == CacheType::Writeback,
                    partuuid: d.partuuid.clone(),
                    rate_limiter: d.rate_limiter.as_ref().map(save_limiter),
                })
                .collect(),
            net: cfg
                .net
                .iter()
                .map(|n| SavedNet {
                    id: n.iface_id.clone(),
                    tap: n.host_dev_name.clone(),
                    mac: n.guest_mac.clone(),
                    rx_rate_limiter: n.rx_rate_limiter.as_ref().map(save_limiter),
                    tx_rate_limiter: n.tx_rate_limiter.as_ref().map(save_limiter),
                })
                .collect(),
            entropy: cfg
                .entropy
                .as_ref()
                .map(|e| e.rate_limiter.as_ref().map(save_limiter)),
            vsock: cfg.vsock.as_ref().map(|v| SavedVsock {
                vsock_id: v.vsock_id.clone(),
                guest_cid: v.guest_cid,
                uds_path: v.uds_path.clone(),
            }),
        }
    }

    /// The configuration to rebuild the VM with, on top of the process's `base` (console,
    /// reset policy), and with dirty-page tracking as the load asks.
    pub fn to_config(&self, base: &VmConfig, track_dirty_pages: bool) -> VmConfig {
        let mut c = base.clone();
        c.kernel = self.kernel.clone().into();
        c.initrd = self.initrd.clone().map(Into::into);
        c.cmdline.clone_from(&self.cmdline);
        c.vcpus = self.vcpus;
        c.mem_mib = self.mem_mib;
        c.boot_timer = self.boot_timer;
        c.track_dirty_pages = track_dirty_pages;
        c.drives = self
            .drives
            .iter()
            .map(|d| Drive {
                drive_id: d.id.clone(),
                path_on_host: d.path.clone(),
                is_root_device: d.root,
                is_read_only: d.read_only,
                cache_type: if d.writeback {
                    CacheType::Writeback
                } else {
                    CacheType::Unsafe
                },
                partuuid: d.partuuid.clone(),
                io_engine: None,
                rate_limiter: d.rate_limiter.as_ref().map(load_limiter),
            })
            .collect();
        c.net = self
            .net
            .iter()
            .map(|n| NetworkInterface {
                iface_id: n.id.clone(),
                host_dev_name: n.tap.clone(),
                guest_mac: n.mac.clone(),
                rx_rate_limiter: n.rx_rate_limiter.as_ref().map(load_limiter),
                tx_rate_limiter: n.tx_rate_limiter.as_ref().map(load_limiter),
            })
            .collect();
        c.entropy = self.entropy.as_ref().map(|l| Entropy {
            rate_limiter: l.as_ref().map(load_limiter),
        });
        c.vsock = self.vsock.as_ref().map(|v| Vsock {
            vsock_id: v.vsock_id.clone(),
            guest_cid: v.guest_cid,
            uds_path: v.uds_path.clone(),
        });
        c
    }
}

/// Applies a load's or an incoming migration's overrides: taps by interface id, the vsock
/// socket path, drive backing files by drive id. An override that names an interface or a
/// drive the guest does not have, or a vsock it does not have, is an error.
pub fn apply_overrides(
    cfg: &mut VmConfig,
    net: &[crate::api::snapshot::NetworkOverride],
    vsock_uds_path: Option<&str>,
    drives: &[(String, String)],
) -> Result<(), String> {
    replace_devices(cfg, net, vsock_uds_path, drives)?;
    crate::config::validate_devices(cfg)
}

/// `apply_overrides` without the final check of the devices, for a caller that checks them
/// itself (an incoming migration's pre-flight, which names every problem at once).
pub fn replace_devices(
    cfg: &mut VmConfig,
    net: &[crate::api::snapshot::NetworkOverride],
    vsock_uds_path: Option<&str>,
    drives: &[(String, String)],
) -> Result<(), String> {
    for (id, path) in drives {
        let d = cfg
            .drives
            .iter_mut()
            .find(|d| d.drive_id == *id)
            .ok_or_else(|| {
                format!("a drive override names drive '{id}', which the guest does not have")
            })?;
        d.path_on_host.clone_from(path);
    }
    for o in net {
        let n = cfg
            .net
            .iter_mut()
            .find(|n| n.iface_id == o.iface_id)
            .ok_or_else(|| {
                format!(
                    "network_overrides names iface_id '{}', which the snapshot does not have",
                    o.iface_id
                )
            })?;
        n.host_dev_name.clone_from(&o.host_dev_name);
    }
    if let Some(path) = vsock_uds_path {
        let v = cfg
            .vsock
            .as_mut()
            .ok_or("vsock_override is given but the snapshot has no vsock device")?;
        v.uds_path = path.to_string();
    }
    Ok(())
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Counter ticks to advance a restored guest by, for `clock_realtime`: the wall-clock time
/// since the snapshot at the guest's counter frequency (none if the clock went backwards).
pub fn realtime_advance(saved_at_ns: u64, now_ns: u64, frequency: u64) -> u64 {
    let elapsed = u128::from(now_ns.saturating_sub(saved_at_ns));
    (elapsed * u128::from(frequency) / 1_000_000_000).min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests;
