//! From a `VmConfig` to a VM ready to run: KVM VM with the host's largest IPA, guest memory,
//! kernel, initrd and device tree in place, vCPUs initialised, GICv3, and the legacy devices on
//! the MMIO bus with their interrupts wired through irqfd.
//!
//! The steps that do not depend on booting (`open_kvm`, `create_vm`, `add_memory`,
//! `legacy_devices`, `virtio_devices`) are shared with the restore path (`restore.rs`), which
//! skips the kernel, the device tree and the boot registers.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress};

use arch::fdt::{FdtConfig, create_fdt, standard_rtc, standard_serial};

use arch::kvm::{GicError, GicV3, VcpuInitError, vcpu as kvm_vcpu};
use arch::layout::{BOOT_TIMER_BASE, DRAM_BASE, LEGACY_DEV_SIZE, RTC_BASE, SERIAL_BASE};
use devices::legacy::{BootTimer, RtcDevice, SerialDevice};
use devices::virtio::block::{Block, BlockConfig, CacheType as BlockCache};
use devices::virtio::net::{Net, NetConfig};
use devices::virtio::rng::Rng;
use devices::virtio::vsock::{Vsock, VsockConfig};

use crate::api::model::{CacheType, RateLimiterConfig};
use devices::{GuestRam, IrqLine, MmioBus};

use crate::config::{ConfigError, VmConfig};
use crate::console::ConsoleOutput;
use crate::loader::{self, InitrdFile, KernelFile, LoadError};
use crate::vm::memory::{MemoryError, Ram};

/// Errors building a VM; each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The kernel or initrd could not be read, or does not fit.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// /dev/kvm is missing or unusable.
    #[error("cannot open /dev/kvm: {0}")]
    Kvm(#[source] kvm_ioctls::Error),
    /// More vCPUs than KVM allows.
    #[error("{asked} vCPUs requested, but KVM on this host allows at most {max}")]
    TooManyVcpus {
        /// Requested.
        asked: u32,
        /// Allowed.
        max: usize,
    },
    /// Memory beyond the guest-physical address space.
    #[error(
        "{mem_mib} MiB of guest memory does not fit in this host's {ipa_bits}-bit guest physical address space"
    )]
    MemoryBeyondIpa {
        /// Requested memory.
        mem_mib: u32,
        /// The host's IPA size.
        ipa_bits: i32,
    },
    /// A KVM call failed.
    #[error("{what} failed: {source}")]
    KvmCall {
        /// Which call.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created or written.
    #[error("guest memory: {0}")]
    Memory(String),
    /// Guest memory could not be created or mapped.
    #[error(transparent)]
    Ram(#[from] MemoryError),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuInitError),
    /// vGIC setup failed.
    #[error(transparent)]
    Gic(#[from] GicError),
    /// The device tree could not be built.
    #[error(transparent)]
    Fdt(#[from] arch::fdt::FdtError),
    /// A device could not be set up.
    #[error("device setup: {0}")]
    Device(String),
}

/// The serial port as the VMM holds it.
pub type Serial = Arc<Mutex<SerialDevice<ConsoleOutput>>>;

/// The RTC as the VMM holds it.
pub type Rtc = Arc<Mutex<RtcDevice>>;

/// The boot timer as the VMM holds it.
pub type Timer = Arc<Mutex<BootTimer>>;

/// A built VM whose vCPUs have not started.
#[derive(Debug)]
pub struct BuiltVm {
    /// The KVM VM.
    pub vm: VmFd,
    /// Guest RAM.
    pub ram: Ram,
    /// vCPUs, boot vCPU first.
    pub vcpus: Vec<VcpuFd>,
    /// Each vCPU's MPIDR_EL1, in vCPU order.
    pub mpidrs: Vec<u64>,
    /// The `kvm_vcpu_init` features each vCPU was initialised with, in vCPU order.
    pub features: Vec<[u32; 7]>,
    /// The vGIC (kept alive with the VM).
    pub gic: GicV3,
    /// The MMIO bus.
    pub bus: Arc<MmioBus>,
    /// The serial port, for console input.
    pub serial: Serial,
    /// The RTC.
    pub rtc: Rtc,
    /// The boot timer, if the VM has one.
    pub boot_timer: Option<Timer>,
    /// Whether dirty pages are tracked (KVM's log on the memory slot).
    pub track_dirty_pages: bool,
    /// virtio devices, by id.
    pub virtio: Vec<crate::device_manager::NamedTransport>,
}

fn kvm_call<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, BuildError> {
    r.map_err(|source| BuildError::KvmCall { what, source })
}

fn rng_seed() -> Vec<u8> {
    let mut seed = vec![0u8; 64];
    // SAFETY: getrandom writes at most `seed.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        seed.clear();
    }
    seed
}

/// Opens /dev/kvm and checks that the host can hold `vcpus` vCPUs and `mem_size` bytes.
pub fn open_kvm(vcpus: u32, mem_size: u64) -> Result<Kvm, BuildError> {
    let kvm = Kvm::new().map_err(BuildError::Kvm)?;
    let max = kvm.get_max_vcpus().min(arch::layout::MAX_VCPUS as usize);
    if vcpus as usize > max {
        return Err(BuildError::TooManyVcpus { asked: vcpus, max });
    }
    let ipa_bits = kvm.get_host_ipa_limit();
    if ipa_bits > 0 && ipa_bits < 64 && DRAM_BASE + mem_size > 1u64 << ipa_bits {
        return Err(BuildError::MemoryBeyondIpa {
            mem_mib: (mem_size >> 20) as u32,
            ipa_bits,
        });
    }
    Ok(kvm)
}

/// Creates the KVM VM.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, BuildError> {
    kvm_call("KVM_CREATE_VM", kvm.create_vm())
}

/// How KVM's dirty log starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyLog {
    /// No logging.
    Off,
    /// Every page dirty at first: a booted guest's first Diff snapshot holds all of memory.
    AllDirty,
    /// No page dirty at first: a restored guest's first Diff holds only the pages written
    /// since the load, on top of the memory file it was loaded from. Its stage-2 tables are
    /// still empty, so write-protecting them costs nothing.
    Clean,
}

/// Gives the guest its RAM as memory slot 0, with KVM's dirty log (manual protection) as
/// `log` says.
pub fn add_memory(vm: &VmFd, ram: &Ram, log: DirtyLog) -> Result<(), BuildError> {
    let track_dirty_pages = log != DirtyLog::Off;
    if track_dirty_pages {
        arch::kvm::dirty_log::enable_manual_protect(vm, log == DirtyLog::AllDirty)
            .map_err(|e| BuildError::Memory(e.to_string()))?;
    }
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: if track_dirty_pages {
            kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: ram.base(),
        memory_size: ram.size(),
        userspace_addr: ram.host_addr(),
    };
    // SAFETY: the region is `ram`'s mapping, which `BuiltVm` keeps alive as long as the VM.
    kvm_call("KVM_SET_USER_MEMORY_REGION", unsafe {
        vm.set_user_memory_region(region)
    })
}

/// The serial port, the RTC and (if asked for) the boot timer on a new MMIO bus.
pub fn legacy_devices(
    vm: &VmFd,
    console: ConsoleOutput,
    boot_timer: bool,
    start: Instant,
) -> Result<(MmioBus, Serial, Rtc, Option<Timer>), BuildError> {
    let mut bus = MmioBus::new();
    let serial_irq =
        IrqLine::new().map_err(|e| BuildError::Device(format!("serial interrupt: {e}")))?;
    kvm_call(
        "KVM_IRQFD (serial)",
        vm.register_irqfd(serial_irq.eventfd(), arch::layout::SERIAL_SPI),
    )?;
    let serial: Serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, console)));
    bus.insert(SERIAL_BASE, LEGACY_DEV_SIZE, serial.clone())
        .map_err(|e| BuildError::Device(e.to_string()))?;
    let rtc: Rtc = Arc::new(Mutex::new(RtcDevice::new()));
    bus.insert(RTC_BASE, LEGACY_DEV_SIZE, rtc.clone())
        .map_err(|e| BuildError::Device(e.to_string()))?;
    let timer = if boot_timer {
        let timer: Timer = Arc::new(Mutex::new(BootTimer::new(
            start,
            Box::new(|d| {
                log::info!(
                    "Guest-boot-time = {:>6} us {} ms",
                    d.as_micros(),
                    d.as_millis()
                );
            }),
        )));
        bus.insert(BOOT_TIMER_BASE, LEGACY_DEV_SIZE, timer.clone())
            .map_err(|e| BuildError::Device(e.to_string()))?;
        Some(timer)
    } else {
        None
    };
    Ok((bus, serial, rtc, timer))
}

/// The virtio devices of `cfg` in their slots: the root drive first, then the other drives,
/// the network interfaces, the entropy device and vsock.
pub fn virtio_devices(
    cfg: &VmConfig,
    vm: &VmFd,
    mem: &GuestRam,
    bus: &mut MmioBus,
) -> Result<crate::device_manager::VirtioDevices, BuildError> {
    let mut virtio = crate::device_manager::VirtioDevices::default();
    // The root drive takes the first slot so that it is /dev/vda.
    let mut drives: Vec<_> = cfg.drives.iter().filter(|d| d.is_root_device).collect();
    drives.extend(cfg.drives.iter().filter(|d| !d.is_root_device));
    for d in drives {
        let block = Block::new(BlockConfig {
            id: d.drive_id.clone(),
            path: d.path_on_host.clone().into(),
            read_only: d.is_read_only,
            cache: match d.cache_type {
                CacheType::Unsafe => BlockCache::Unsafe,
                CacheType::Writeback => BlockCache::Writeback,
            },
            rate_limiter: d.rate_limiter.as_ref().map(RateLimiterConfig::build),
        })
        .map_err(|e| {
            BuildError::Device(format!(
                "drive {}: cannot open {}: {e}",
                d.drive_id, d.path_on_host
            ))
        })?;
        virtio
            .attach(
                &format!("block_{}", d.drive_id),
                Box::new(block),
                vm,
                mem,
                bus,
            )
            .map_err(BuildError::Device)?;
    }
    for n in &cfg.net {
        let mac = n
            .guest_mac
            .as_deref()
            .map(crate::api::model::parse_mac)
            .transpose()
            .map_err(BuildError::Device)?;
        let net = Net::new(NetConfig {
            id: n.iface_id.clone(),
            tap: n.host_dev_name.clone(),
            mac,
            rx_limiter: n.rx_rate_limiter.as_ref().map(RateLimiterConfig::build),
            tx_limiter: n.tx_rate_limiter.as_ref().map(RateLimiterConfig::build),
        })
        .map_err(|e| {
            BuildError::Device(format!(
                "network interface {}: cannot open tap {}: {e}",
                n.iface_id, n.host_dev_name
            ))
        })?;
        virtio
            .attach(&format!("net_{}", n.iface_id), Box::new(net), vm, mem, bus)
            .map_err(BuildError::Device)?;
    }
    if let Some(e) = &cfg.entropy {
        let rng = match &e.rate_limiter {
            Some(r) => Rng::with_limiter(r.build()),
            None => Rng::new(),
        };
        virtio
            .attach("entropy", Box::new(rng), vm, mem, bus)
            .map_err(BuildError::Device)?;
    }
    if let Some(v) = &cfg.vsock {
        let vsock = Vsock::new(&VsockConfig {
            guest_cid: u64::from(v.guest_cid),
            uds_path: v.uds_path.clone().into(),
        })
        .map_err(|e| BuildError::Device(e.to_string()))?;
        virtio
            .attach("vsock", Box::new(vsock), vm, mem, bus)
            .map_err(BuildError::Device)?;
    }

    Ok(virtio)
}

/// Builds the VM described by `cfg` for a boot. Nothing runs yet.
pub fn build(
    cfg: &VmConfig,
    console: ConsoleOutput,
    start: Instant,
) -> Result<BuiltVm, BuildError> {
    cfg.validate()?;

    // The files are opened and the kernel header checked before KVM is touched; their
    // contents go straight into guest memory below, never through a heap buffer.
    let kernel = KernelFile::open(&cfg.kernel)?;
    let initrd = cfg.initrd.as_deref().map(InitrdFile::open).transpose()?;
    let mem_size = u64::from(cfg.mem_mib) << 20;
    // Refuse a layout that cannot fit before creating anything.
    kernel.plan(DRAM_BASE, mem_size, initrd.as_ref().map(InitrdFile::len))?;

    let kvm = open_kvm(cfg.vcpus, mem_size)?;
    let vm = create_vm(&kvm)?;
    let ram = Ram::new(DRAM_BASE, mem_size)?;
    let log = if cfg.track_dirty_pages {
        DirtyLog::AllDirty
    } else {
        DirtyLog::Off
    };
    add_memory(&vm, &ram, log)?;

    let plan = loader::load(ram.guest(), DRAM_BASE, mem_size, kernel, initrd)?;

    let mut vcpus = Vec::new();
    let mut mpidrs = Vec::new();
    let mut features = Vec::new();
    for i in 0..cfg.vcpus {
        let vcpu = kvm_call("KVM_CREATE_VCPU", vm.create_vcpu(u64::from(i)))?;
        kvm_vcpu::init(&vm, &vcpu, i == 0)?;
        mpidrs.push(kvm_vcpu::mpidr(&vcpu)?);
        features.push(kvm_vcpu::init_features(i == 0));
        vcpus.push(vcpu);
    }
    let gic = GicV3::create(&vm)?;
    // Both guest counters start at zero, so that a restore, which sets them both to the
    // saved virtual count, moves neither backwards.
    let refs: Vec<&VcpuFd> = vcpus.iter().collect();
    arch::kvm::counter::restore_guest_counter(&vm, &refs, 0)
        .map_err(|e| BuildError::Device(format!("guest counter: {e}")))?;

    let (mut bus, serial, rtc, boot_timer) = legacy_devices(&vm, console, cfg.boot_timer, start)?;
    let virtio = virtio_devices(cfg, &vm, ram.guest(), &mut bus)?;

    let fdt = create_fdt(&FdtConfig {
        mpidrs: mpidrs.clone(),
        mem_base: DRAM_BASE,
        mem_size,
        cmdline: cfg.guest_cmdline(),
        initrd: plan.initrd,
        serial: Some(standard_serial()),
        rtc: Some(standard_rtc()),
        virtio: virtio.fdt,
        rng_seed: rng_seed(),
    })?;
    ram.guest()
        .write_slice(&fdt, GuestAddress(plan.fdt))
        .map_err(|e| BuildError::Memory(format!("writing the device tree: {e}")))?;
    let boot = vcpus
        .first()
        .ok_or_else(|| BuildError::Device("no vCPU".into()))?;
    kvm_vcpu::set_boot_regs(boot, plan.kernel, plan.fdt)?;

    Ok(BuiltVm {
        vm,
        ram,
        vcpus,
        mpidrs,
        features,
        gic,
        bus: Arc::new(bus),
        serial,
        rtc,
        boot_timer,
        track_dirty_pages: cfg.track_dirty_pages,
        virtio: virtio.transports,
    })
}
