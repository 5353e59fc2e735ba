//! Building a VM from a snapshot in a fresh process. The VM, its memory (the memory file
//! mapped privately), vCPUs and devices are created as on boot, but nothing is loaded: no
//! kernel, no device tree, no boot registers. Each component takes its own section instead,
//! in the order KVM documents (vCPU registers with the counter set before any vCPU runs,
//! then the vGIC, then the devices), and a section nothing took is an error.
//!
//! Before any vCPU register is written, the host is checked against the snapshot: the same
//! GIC version, the same counter frequency, and the same ID registers (a snapshot from
//! another CPU model is refused, naming each field that differs).

use std::path::Path;
use std::time::Instant;

use arch::kvm::{GicV3, counter, gic_state, vcpu_state};
use arch::layout::DRAM_BASE;
use arch::state::{GicState, VcpuState, id_register_differences};
use kvm_ioctls::VcpuFd;
use migration::snapshot::read_snapshot_file;
use migration::{SectionSet, StateError, Stateful};

use super::builder::{
    BuildError, BuiltVm, DirtyLog, add_memory, create_vm, legacy_devices, open_kvm, virtio_devices,
};
use super::memory::Ram;
use crate::api::snapshot::LoadRequest;
use crate::config::VmConfig;
use crate::console::ConsoleOutput;
use crate::persist::{
    BOOT_TIMER_SECTION, GIC_SECTION, RTC_SECTION, SERIAL_SECTION, VM_SECTION, VmState,
    apply_overrides, device_section, realtime_advance, transport_section, unix_now_ns,
    vcpu_section,
};

/// Why a snapshot could not be loaded; each names the file, section or component.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The state file is missing, corrupt or from a newer format.
    #[error("snapshot {path}: {source}")]
    File {
        /// The state file.
        path: String,
        /// Why.
        #[source]
        source: migration::snapshot::SnapshotError,
    },
    /// A section is missing, malformed, newer than this build, or refused.
    #[error(transparent)]
    State(#[from] StateError),
    /// The snapshot needs what this host does not have.
    #[error("this host cannot run the guest: {0}")]
    Host(String),
    /// The configuration saved in the snapshot cannot be rebuilt (a device's file or tap).
    #[error("{0}")]
    Config(String),
    /// Building the VM failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A vCPU could not be restored.
    #[error("vCPU {index}: {source}")]
    Vcpu {
        /// Which vCPU.
        index: usize,
        /// Why.
        #[source]
        source: vcpu_state::VcpuStateError,
    },
    /// The guest counter could not be set.
    #[error(transparent)]
    Counter(#[from] counter::CounterError),
    /// The vGIC could not be restored.
    #[error(transparent)]
    Gic(#[from] gic_state::GicStateError),
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Refuses a host of another CPU model before anything is restored: vCPU 0 is initialised
/// with the saved features and its ID registers are compared with the saved ones.
fn check_cpu_model(
    vm: &kvm_ioctls::VmFd,
    vcpu: &VcpuFd,
    saved: &VcpuState,
) -> Result<(), RestoreError> {
    let mut kvi = kvm_bindings::kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(|e| RestoreError::Host(format!("no preferred vCPU target: {e}")))?;
    kvi.features = saved.features;
    vcpu.vcpu_init(&kvi).map_err(|e| {
        RestoreError::Host(format!(
            "KVM refuses the saved vCPU features {:?}: {e}",
            saved.features
        ))
    })?;
    let host = vcpu_state::save_vcpu(vcpu, saved.features)
        .map_err(|source| RestoreError::Vcpu { index: 0, source })?;
    let differences = id_register_differences(saved, &host);
    if !differences.is_empty() {
        return Err(RestoreError::Host(format!(
            "its CPU model differs from the guest's in {}",
            differences.join("; ")
        )));
    }
    Ok(())
}

/// Where a rebuilt VM's memory comes from.
#[derive(Debug)]
pub enum RamSource<'a> {
    /// A snapshot's memory file, mapped privately.
    File(&'a Path),
    /// Fresh memory, filled by the caller before `complete` (an incoming migration).
    Fresh,
}

/// What a rebuild may change from the saved configuration.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Taps by interface id.
    pub net: Vec<crate::api::snapshot::NetworkOverride>,
    /// The vsock socket.
    pub vsock_uds_path: Option<String>,
    /// Drive backing files by drive id.
    pub drives: Vec<(String, String)>,
    /// Whether KVM's dirty log stays on (for Diff snapshots).
    pub track_dirty_pages: bool,
}

/// A VM being rebuilt from saved state: the host has been checked against it (GIC version,
/// counter frequency, memory layout, CPU model), and KVM's VM, its memory and its vCPUs
/// exist; no register, device or page has been restored yet.
#[derive(Debug)]
pub struct Prepared {
    vm: kvm_ioctls::VmFd,
    ram: Ram,
    vcpus: Vec<VcpuFd>,
    cfg: VmConfig,
    state: VmState,
}

impl Prepared {
    /// The guest's memory, for an incoming migration to fill.
    pub fn ram(&self) -> &Ram {
        &self.ram
    }

    /// The configuration the VM is rebuilt with (overrides applied).
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }
}

/// Checks what this host must share with the saved VM: the GIC version, the counter
/// frequency, the memory layout. Each difference is named.
pub fn check_host(state: &VmState) -> Result<(), RestoreError> {
    if state.gic_version != 3 {
        return Err(RestoreError::Host(format!(
            "the guest has a GICv{}, this VMM builds GICv3",
            state.gic_version
        )));
    }
    let frequency = counter::counter_frequency();
    if state.counter_frequency != frequency {
        return Err(RestoreError::Host(format!(
            "the counter runs at {frequency} Hz here and at {} Hz where the guest was saved",
            state.counter_frequency
        )));
    }
    if state.mem_base != DRAM_BASE {
        return Err(RestoreError::Config(format!(
            "the guest's memory starts at {:#x}, this VMM places it at {DRAM_BASE:#x}",
            state.mem_base
        )));
    }
    Ok(())
}

/// Checks the host against the saved VM (`vcpu0`: the boot vCPU's saved state, whose ID
/// registers the host must present) and creates the VM, its memory and its vCPUs.
pub fn prepare(
    base: &VmConfig,
    state: &VmState,
    vcpu0: Option<&VcpuState>,
    overrides: &Overrides,
    memory: RamSource<'_>,
) -> Result<Prepared, RestoreError> {
    check_host(state)?;
    let mut cfg = state.config.to_config(base, overrides.track_dirty_pages);
    apply_overrides(
        &mut cfg,
        &overrides.net,
        overrides.vsock_uds_path.as_deref(),
        &overrides.drives,
    )
    .map_err(RestoreError::Config)?;
    cfg.validate().map_err(BuildError::from)?;
    if u64::from(cfg.mem_mib) << 20 != state.mem_size {
        return Err(RestoreError::Config(format!(
            "the saved state declares {} bytes of memory but {} MiB of configuration",
            state.mem_size, cfg.mem_mib
        )));
    }
    let kvm = open_kvm(cfg.vcpus, state.mem_size)?;
    let vm = create_vm(&kvm)?;
    let (ram, log) = match memory {
        RamSource::File(path) => (
            Ram::from_file(state.mem_base, state.mem_size, path).map_err(BuildError::from)?,
            if cfg.track_dirty_pages {
                DirtyLog::Clean
            } else {
                DirtyLog::Off
            },
        ),
        RamSource::Fresh => (
            Ram::new(state.mem_base, state.mem_size).map_err(BuildError::from)?,
            if cfg.track_dirty_pages {
                DirtyLog::AllDirty
            } else {
                DirtyLog::Off
            },
        ),
    };
    add_memory(&vm, &ram, log)?;
    let mut vcpus = Vec::new();
    for i in 0..cfg.vcpus {
        vcpus.push(
            vm.create_vcpu(u64::from(i))
                .map_err(|source| BuildError::KvmCall {
                    what: "KVM_CREATE_VCPU",
                    source,
                })?,
        );
    }
    if let (Some(v0), Some(s0)) = (vcpus.first(), vcpu0) {
        check_cpu_model(&vm, v0, s0)?;
    }
    Ok(Prepared {
        vm,
        ram,
        vcpus,
        cfg,
        state: state.clone(),
    })
}

/// Restores every component of a prepared VM from `sections` (all of them, the `vm` section
/// included, which must describe the same machine as the one the VM was prepared from), in
/// the order KVM documents, with the guest counter advanced by `advance` ticks. A section
/// nothing took is an error.
pub fn complete(
    prepared: Prepared,
    mut sections: SectionSet,
    advance: impl FnOnce(&VmState) -> u64,
    console: ConsoleOutput,
    start: Instant,
) -> Result<(BuiltVm, VmConfig), RestoreError> {
    let Prepared {
        vm,
        ram,
        vcpus,
        cfg,
        state: prepared_state,
    } = prepared;
    let state: VmState = sections.take_decoded(VM_SECTION)?;
    if state.config != prepared_state.config || state.mem_size != prepared_state.mem_size {
        return Err(RestoreError::Config(
            "the final state describes another machine than the one prepared from".into(),
        ));
    }
    let vcpu_states = (0..cfg.vcpus as usize)
        .map(|i| sections.take_decoded::<VcpuState>(&vcpu_section(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let gic_state: GicState = sections.take_decoded(GIC_SECTION)?;
    let mpidrs: Vec<u64> = vcpu_states.iter().map(|s| s.mpidr).collect();

    let opts = vcpu_state::RestoreOptions::for_vm(&vm);
    for (index, (fd, s)) in vcpus.iter().zip(&vcpu_states).enumerate() {
        vcpu_state::restore_vcpu(&vm, fd, s, opts)
            .map_err(|source| RestoreError::Vcpu { index, source })?;
    }
    let refs: Vec<&VcpuFd> = vcpus.iter().collect();
    let counter = state.guest_counter.wrapping_add(advance(&state));
    counter::restore_guest_counter(&vm, &refs, counter)?;

    let gic = GicV3::create(&vm).map_err(BuildError::from)?;
    gic_state::restore_gic(&gic, &mpidrs, &gic_state)?;

    let (mut bus, serial, rtc, boot_timer) = legacy_devices(&vm, console, cfg.boot_timer, start)?;
    lock(&serial).restore(&sections.take(SERIAL_SECTION)?)?;
    lock(&rtc).restore(&sections.take(RTC_SECTION)?)?;
    if let Some(t) = &boot_timer {
        lock(t).restore(&sections.take(BOOT_TIMER_SECTION)?)?;
    }
    let virtio = virtio_devices(&cfg, &vm, ram.guest(), &mut bus)?;
    for (id, t) in &virtio.transports {
        let mut t = lock(t);
        t.device_mut()
            .restore(&sections.take(&device_section(id))?)?;
        t.restore(&sections.take(&transport_section(id))?)?;
    }
    sections.finish()?;
    let features = vcpu_states.iter().map(|s| s.features).collect();
    Ok((
        BuiltVm {
            vm,
            ram,
            vcpus,
            mpidrs,
            features,
            gic,
            bus: std::sync::Arc::new(bus),
            serial,
            rtc,
            boot_timer,
            track_dirty_pages: cfg.track_dirty_pages,
            virtio: virtio.transports,
        },
        cfg,
    ))
}

/// Builds the VM a snapshot describes, with nothing running. Returns it and its
/// configuration (overrides applied).
pub fn restore(
    base: &VmConfig,
    req: &LoadRequest,
    console: ConsoleOutput,
    start: Instant,
) -> Result<(BuiltVm, VmConfig), RestoreError> {
    let sections: SectionSet =
        read_snapshot_file(Path::new(&req.snapshot_path)).map_err(|source| RestoreError::File {
            path: req.snapshot_path.clone(),
            source,
        })?;
    // Every section is decoded before anything is built: a missing, unknown, malformed or
    // newer one is refused here, with nothing created.
    let decoded = crate::persist::decode::decode_all(sections.clone())?;
    let overrides = Overrides {
        net: req.network_overrides.clone(),
        vsock_uds_path: req.vsock_uds_path.clone(),
        drives: Vec::new(),
        track_dirty_pages: req.track_dirty_pages,
    };
    let prepared = prepare(
        base,
        &decoded.vm,
        decoded.vcpus.first(),
        &overrides,
        RamSource::File(Path::new(&req.mem_file_path)),
    )?;
    let clock_realtime = req.clock_realtime;
    complete(
        prepared,
        sections,
        |state| {
            if clock_realtime {
                realtime_advance(
                    state.saved_at_unix_ns,
                    unix_now_ns(),
                    state.counter_frequency,
                )
            } else {
                0
            }
        },
        console,
        start,
    )
}
