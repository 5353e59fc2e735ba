//! Taking a snapshot of a paused VM: every component's section (the VM's own, each vCPU, the
//! vGIC, the serial port, the RTC, the boot timer, each virtio transport and its device),
//! then guest memory (Full: every page that is not zero; Diff: the pages KVM's dirty log
//! and the devices' bitmap mark since the previous snapshot), then the state file. Both files
//! are written to a temporary name and renamed, so a failure leaves no half-written file.

use std::path::Path;

use arch::kvm::{counter, dirty_log, gic_state, vcpu_state};
use arch::layout::{BOOT_TIMER_BASE, RTC_BASE, SERIAL_BASE, virtio_mmio_addr};
use migration::snapshot::write_snapshot_file;
use migration::state::encode;
use migration::{Section, SectionSet, StateError};

use super::{
    BOOT_TIMER_SECTION, GIC_SECTION, RTC_SECTION, SERIAL_SECTION, SavedConfig, VM_SECTION, VmState,
    device_section, transport_section, unix_now_ns, vcpu_section,
};
use crate::api::snapshot::{SnapshotCreateParams, SnapshotType};
use crate::config::VmConfig;
use crate::runner::RunningVm;
use crate::vm::memory::{MemoryError, MemoryFileStats};

/// Why a snapshot could not be taken; each names the component or file.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A vCPU was not paused.
    #[error("vCPU {0} is not paused")]
    NotPaused(usize),
    /// A vCPU's state could not be read.
    #[error("vCPU {index}: {source}")]
    Vcpu {
        /// Which vCPU.
        index: usize,
        /// Why.
        #[source]
        source: vcpu_state::VcpuStateError,
    },
    /// The guest counter could not be read.
    #[error(transparent)]
    Counter(#[from] counter::CounterError),
    /// The vGIC's state could not be read.
    #[error(transparent)]
    Gic(#[from] gic_state::GicStateError),
    /// A component could not save its state.
    #[error(transparent)]
    State(#[from] StateError),
    /// KVM's dirty log could not be read or cleared.
    #[error(transparent)]
    DirtyLog(#[from] dirty_log::DirtyLogError),
    /// The memory file could not be written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The state file could not be written.
    #[error("{0}")]
    File(#[from] migration::snapshot::SnapshotError),
}

/// A component's section under its name in this VM.
fn named(mut s: Section, name: impl Into<String>) -> Section {
    s.name = name.into();
    s
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every section of a paused VM.
pub fn collect(vm: &RunningVm, cfg: &VmConfig) -> Result<SectionSet, CreateError> {
    let built = &vm.built;
    let mut sections = SectionSet::new();
    let mut vcpus = Vec::new();
    let mut guest_counter = None;
    for (i, h) in vm.vcpus.iter().enumerate() {
        let mut fd = h.fd_if_paused().ok_or(CreateError::NotPaused(i))?;
        // A vCPU paused right after an MMIO read has its result still to take in.
        vcpu_state::settle(&mut fd).map_err(|source| CreateError::Vcpu { index: i, source })?;
        if guest_counter.is_none() {
            guest_counter = Some(counter::guest_counter(&fd)?);
        }
        let features = built.features.get(i).copied().unwrap_or_default();
        let state = vcpu_state::save_vcpu(&fd, features)
            .map_err(|source| CreateError::Vcpu { index: i, source })?;
        vcpus.push(encode(&vcpu_section(i), &state)?);
    }
    let vm_state = VmState {
        vmm_version: crate::VERSION.to_string(),
        saved_at_unix_ns: unix_now_ns(),
        mem_base: built.ram.base(),
        mem_size: built.ram.size(),
        counter_frequency: counter::counter_frequency(),
        guest_counter: guest_counter.unwrap_or_default(),
        gic_version: 3,
        config: SavedConfig::from_config(cfg),
    };
    sections.push(encode(VM_SECTION, &vm_state)?)?;
    for s in vcpus {
        sections.push(s)?;
    }
    let gic = gic_state::save_gic(&built.gic, &built.mpidrs)?;
    sections.push(encode(GIC_SECTION, &gic)?)?;
    device_sections(vm, &mut sections)?;
    Ok(sections)
}

/// Every device's sections: those on the bus by their address, then each virtio device's own.
fn device_sections(vm: &RunningVm, sections: &mut SectionSet) -> Result<(), CreateError> {
    let built = &vm.built;
    // Every device on the bus, by its address: one the VMM has no name for fails the
    // snapshot, naming its address.
    let name_of = |base: u64| -> Option<String> {
        match base {
            SERIAL_BASE => Some(SERIAL_SECTION.into()),
            RTC_BASE => Some(RTC_SECTION.into()),
            BOOT_TIMER_BASE => Some(BOOT_TIMER_SECTION.into()),
            _ => built
                .virtio
                .iter()
                .enumerate()
                .find(|(slot, _)| virtio_mmio_addr(*slot as u32) == base)
                .map(|(_, (id, _))| transport_section(id)),
        }
    };
    for s in built.bus.save_all(name_of)? {
        sections.push(s)?;
    }
    for (id, t) in &built.virtio {
        sections.push(named(lock(t).device().save()?, device_section(id)))?;
    }
    Ok(())
}

/// The sections a migration's pre-flight sends, collected while the guest runs: the `vm`
/// section, each vCPU's CPU model (its ID registers and MPIDR, read while that vCPU alone is
/// held out of KVM_RUN for a moment), an empty vGIC section (its registers can only be read
/// with every vCPU stopped, and the pre-flight needs only its layout and version), and every
/// device's section. The destination decodes them all, checking every section and its
/// version, and the CPU model against its host's.
pub fn collect_preflight(vm: &RunningVm, cfg: &VmConfig) -> Result<SectionSet, CreateError> {
    let built = &vm.built;
    let mut sections = SectionSet::new();
    let mut vcpus = Vec::new();
    for (i, h) in vm.vcpus.iter().enumerate() {
        let hold = h.hold_handle().ok_or(CreateError::NotPaused(i))?;
        hold.hold();
        let state = match h.fd_if_paused() {
            Some(fd) => {
                let features = built.features.get(i).copied().unwrap_or_default();
                vcpu_state::save_cpu_model(&fd, features)
                    .map_err(|source| CreateError::Vcpu { index: i, source })
            }
            None => Err(CreateError::NotPaused(i)),
        };
        hold.release();
        vcpus.push(encode(&vcpu_section(i), &state?)?);
    }
    let vm_state = VmState {
        vmm_version: crate::VERSION.to_string(),
        saved_at_unix_ns: unix_now_ns(),
        mem_base: built.ram.base(),
        mem_size: built.ram.size(),
        counter_frequency: counter::counter_frequency(),
        guest_counter: 0,
        gic_version: 3,
        config: SavedConfig::from_config(cfg),
    };
    sections.push(encode(VM_SECTION, &vm_state)?)?;
    for s in vcpus {
        sections.push(s)?;
    }
    sections.push(encode(GIC_SECTION, &arch::state::GicState::default())?)?;
    device_sections(vm, &mut sections)?;
    Ok(sections)
}

/// What a snapshot wrote.
#[derive(Debug, Clone, Copy)]
pub struct CreateStats {
    /// The memory file's pages.
    pub memory: MemoryFileStats,
}

/// Writes the snapshot of a paused VM.
pub fn create(
    vm: &RunningVm,
    cfg: &VmConfig,
    p: &SnapshotCreateParams,
) -> Result<CreateStats, CreateError> {
    let sections = collect(vm, cfg)?;
    let built = &vm.built;
    let pages = built.ram.size().div_ceil(crate::vm::memory::PAGE_SIZE) as usize;
    // What the guest wrote (KVM) and what the devices wrote (the bitmap) since the last
    // snapshot; both restart now, so the next Diff is relative to this snapshot.
    let mut dirty = if built.track_dirty_pages {
        dirty_log::get_dirty_log(&built.vm, 0, built.ram.size() as usize)?
    } else {
        Vec::new()
    };
    let memory = match p.snapshot_type {
        SnapshotType::Full => built.ram.write_full(Path::new(&p.mem_file_path))?,
        SnapshotType::Diff => {
            let devices = built.ram.take_device_dirty();
            let mut all = dirty.clone();
            all.resize(devices.len().max(all.len()), 0);
            for (a, d) in all.iter_mut().zip(&devices) {
                *a |= d;
            }
            all.truncate(pages.div_ceil(64));
            built.ram.write_diff(Path::new(&p.mem_file_path), &all)?
        }
    };
    write_snapshot_file(Path::new(&p.snapshot_path), &sections)?;
    if built.track_dirty_pages {
        dirty.truncate(pages.div_ceil(64));
        dirty_log::clear_dirty_log(&built.vm, 0, 0, pages as u32, &dirty)?;
        let _ = built.ram.take_device_dirty();
    }
    Ok(CreateStats { memory })
}
