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
    #[error("this host cannot run the snapshot: {0}")]
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
            "its CPU model differs from the snapshot's in {}",
            differences.join("; ")
        )));
    }
    Ok(())
}

/// Builds the VM a snapshot describes, with nothing running. Returns it and its
/// configuration (overrides applied).
pub fn restore(
    base: &VmConfig,
    req: &LoadRequest,
    console: ConsoleOutput,
    start: Instant,
) -> Result<(BuiltVm, VmConfig), RestoreError> {
    let mut sections: SectionSet =
        read_snapshot_file(Path::new(&req.snapshot_path)).map_err(|source| RestoreError::File {
            path: req.snapshot_path.clone(),
            source,
        })?;
    // Every section is decoded before anything is built: a missing, unknown, malformed or
    // newer one is refused here, with nothing created.
    crate::persist::decode::decode_all(sections.clone())?;
    let state: VmState = sections.take_decoded(VM_SECTION)?;
    if state.gic_version != 3 {
        return Err(RestoreError::Host(format!(
            "the snapshot's guest has a GICv{}, this VMM builds GICv3",
            state.gic_version
        )));
    }
    let frequency = counter::counter_frequency();
    if state.counter_frequency != frequency {
        return Err(RestoreError::Host(format!(
            "the counter runs at {frequency} Hz here and ran at {} Hz in the snapshot",
            state.counter_frequency
        )));
    }
    if state.mem_base != DRAM_BASE {
        return Err(RestoreError::Config(format!(
            "the snapshot's memory starts at {:#x}, this VMM places it at {DRAM_BASE:#x}",
            state.mem_base
        )));
    }
    let mut cfg = state.config.to_config(base, req.track_dirty_pages);
    apply_overrides(
        &mut cfg,
        &req.network_overrides,
        req.vsock_uds_path.as_deref(),
    )
    .map_err(RestoreError::Config)?;
    cfg.validate().map_err(BuildError::from)?;
    if u64::from(cfg.mem_mib) << 20 != state.mem_size {
        return Err(RestoreError::Config(format!(
            "the snapshot declares {} bytes of memory but {} MiB of configuration",
            state.mem_size, cfg.mem_mib
        )));
    }
    let vcpu_states = (0..cfg.vcpus as usize)
        .map(|i| sections.take_decoded::<VcpuState>(&vcpu_section(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let gic_state: GicState = sections.take_decoded(GIC_SECTION)?;
    let mpidrs: Vec<u64> = vcpu_states.iter().map(|s| s.mpidr).collect();

    let kvm = open_kvm(cfg.vcpus, state.mem_size)?;
    let vm = create_vm(&kvm)?;
    let ram = Ram::from_file(
        state.mem_base,
        state.mem_size,
        Path::new(&req.mem_file_path),
    )
    .map_err(BuildError::from)?;
    let log = if cfg.track_dirty_pages {
        DirtyLog::Clean
    } else {
        DirtyLog::Off
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
    if let (Some(v0), Some(s0)) = (vcpus.first(), vcpu_states.first()) {
        check_cpu_model(&vm, v0, s0)?;
    }
    let opts = vcpu_state::RestoreOptions::for_vm(&vm);
    for (index, (fd, s)) in vcpus.iter().zip(&vcpu_states).enumerate() {
        vcpu_state::restore_vcpu(&vm, fd, s, opts)
            .map_err(|source| RestoreError::Vcpu { index, source })?;
    }
    let advance = if req.clock_realtime {
        realtime_advance(state.saved_at_unix_ns, unix_now_ns(), frequency)
    } else {
        0
    };
    let refs: Vec<&VcpuFd> = vcpus.iter().collect();
    counter::restore_guest_counter(&vm, &refs, state.guest_counter.wrapping_add(advance))?;

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
