//! Saving and restoring a vCPU: every register KVM_GET_REG_LIST lists, the MP state and the
//! pending vCPU events, into and from `state::VcpuState`.
//!
//! Save with the vCPU out of KVM_RUN and its last exit completed (`settle`): after an MMIO
//! exit KVM advances the PC only on the next KVM_RUN, so a state saved before that would
//! repeat the access. Restore into a vCPU that was created but not initialised, before any
//! vCPU of the VM runs (ID and firmware registers are writable only until then).

use std::io;

use kvm_bindings::{
    KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_SVE, KVMIO, kvm_mp_state, kvm_reg_list, kvm_vcpu_events,
    kvm_vcpu_init,
};
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;
use vmm_sys_util::ioctl_iowr_nr;

use crate::state::{RegValue, VcpuEvents, VcpuState};
use crate::sysreg::{self, MPIDR_EL1, PTIMER_CNT, SVE_VLS_ID, TIMER_CNT};

// kvm-ioctls wraps this through a FamStructWrapper capped at 500 registers, fewer than a
// vCPU with SVE has, so the buffer is ours.
ioctl_iowr_nr!(KVM_GET_REG_LIST, KVMIO, 0xb0, kvm_reg_list);

/// Errors saving or restoring a vCPU. Each names the register or the step, and KVM's errno.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// KVM_GET_REG_LIST failed.
    #[error("KVM_GET_REG_LIST failed: {0}")]
    RegList(#[source] io::Error),
    /// A ONE_REG access failed.
    #[error("cannot {op} vCPU register {name} ({id:#x}): {source}")]
    Reg {
        /// "read" or "write".
        op: &'static str,
        /// The register's name.
        name: String,
        /// Its ONE_REG ID.
        id: u64,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_GET/SET_MP_STATE failed.
    #[error("cannot {op} the vCPU's MP state: {source}")]
    MpState {
        /// "read" or "write".
        op: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_GET/SET_VCPU_EVENTS failed.
    #[error("cannot {op} the vCPU's pending events: {source}")]
    Events {
        /// "read" or "write".
        op: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_ARM_PREFERRED_TARGET failed.
    #[error("KVM has no preferred vCPU target: {0}")]
    PreferredTarget(#[source] kvm_ioctls::Error),
    /// KVM_ARM_VCPU_INIT refused the saved features.
    #[error("KVM_ARM_VCPU_INIT with the saved features {features:#x?} failed: {source}")]
    Init {
        /// The features.
        features: [u32; 7],
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_ARM_VCPU_FINALIZE(SVE) failed.
    #[error("KVM_ARM_VCPU_FINALIZE(SVE) failed: {0}")]
    Finalize(#[source] kvm_ioctls::Error),
    /// The host's register list and the saved one differ.
    #[error(
        "the vCPU registers differ from this host's: only in the snapshot: [{only_saved}]; only on this host: [{only_host}]"
    )]
    RegisterSets {
        /// Saved registers this host does not have, by name and ID.
        only_saved: String,
        /// Host registers the snapshot lacks.
        only_host: String,
    },
    /// The saved state is inconsistent.
    #[error("the saved vCPU state is invalid: {0}")]
    Invalid(String),
    /// Completing the last exit failed.
    #[error("cannot complete the vCPU's last exit (KVM_RUN with immediate_exit): {0}")]
    Settle(String),
}

/// How `restore_vcpu` treats the registers that KVM_ARM_SET_COUNTER_OFFSET also sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// The VM sets the guest counter with `counter::set_counter_offset`: leave
    /// KVM_REG_ARM_TIMER_CNT and KVM_REG_ARM_PTIMER_CNT alone (KVM would ignore them anyway
    /// once the offset is set, and one mechanism per VM keeps it clear which one acts).
    pub counter_offset: bool,
}

impl RestoreOptions {
    /// The options for this VM: the counter offset when the host has it.
    pub fn for_vm(vm: &VmFd) -> Self {
        Self {
            counter_offset: super::counter::has_counter_offset(vm),
        }
    }
}

/// Whether a register is one of the two the counter offset replaces.
pub fn is_counter_reg(id: u64) -> bool {
    id == TIMER_CNT.kvm_reg_id() || id == PTIMER_CNT.kvm_reg_id()
}

fn os_err(e: io::Error) -> VcpuStateError {
    VcpuStateError::RegList(e)
}

/// The IDs of every register of an initialised vCPU, in KVM's order.
pub fn reg_list(vcpu: &VcpuFd) -> Result<Vec<u64>, VcpuStateError> {
    let mut n = 512usize;
    // KVM answers E2BIG with the count it needs; the count does not change between calls,
    // so the second call fits. A third chance costs nothing.
    for _ in 0..3 {
        let mut buf = vec![0u64; n + 1];
        buf[0] = n as u64;
        // SAFETY: `buf` is a `struct kvm_reg_list` header (`n`) followed by room for `n` IDs,
        // which is as much as KVM writes; it outlives the call; `vcpu` is a vCPU fd.
        let ret = unsafe { ioctl_with_mut_ptr(vcpu, KVM_GET_REG_LIST(), buf.as_mut_ptr()) };
        let needed = buf[0] as usize;
        if ret == 0 && needed <= n {
            buf.truncate(needed + 1);
            buf.remove(0);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if ret != 0 && err.raw_os_error() == Some(libc::E2BIG) && needed > n {
            n = needed;
            continue;
        }
        return Err(os_err(err));
    }
    Err(os_err(io::Error::from_raw_os_error(libc::E2BIG)))
}

fn get_reg(vcpu: &VcpuFd, id: u64) -> Result<RegValue, VcpuStateError> {
    let mut value = vec![0u8; sysreg::reg_size(id)];
    vcpu.get_one_reg(id, &mut value)
        .map_err(|source| VcpuStateError::Reg {
            op: "read",
            name: sysreg::reg_name(id),
            id,
            source,
        })?;
    Ok(RegValue { id, value })
}

fn set_reg(vcpu: &VcpuFd, r: &RegValue) -> Result<(), VcpuStateError> {
    vcpu.set_one_reg(r.id, &r.value)
        .map(|_| ())
        .map_err(|source| VcpuStateError::Reg {
            op: "write",
            name: sysreg::reg_name(r.id),
            id: r.id,
            source,
        })
}

/// Completes the vCPU's last exit without running guest code: a KVM_RUN with
/// `immediate_exit` set, which finishes a pending MMIO or hypercall and returns EINTR.
pub fn settle(vcpu: &mut VcpuFd) -> Result<(), VcpuStateError> {
    vcpu.set_kvm_immediate_exit(1);
    let result = match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Err(e) => Err(VcpuStateError::Settle(e.to_string())),
        Ok(exit) => Err(VcpuStateError::Settle(format!(
            "KVM_RUN ran and exited with {exit:?}"
        ))),
    };
    vcpu.set_kvm_immediate_exit(0);
    result
}

/// Saves a vCPU. `features` are the `kvm_vcpu_init.features` it was initialised with
/// (`vcpu::init_features` for vCPUs set up by `vcpu::init`, the saved ones for a restored
/// vCPU); POWER_OFF is cleared, since the MP state records whether the vCPU is off.
pub fn save_vcpu(vcpu: &VcpuFd, features: [u32; 7]) -> Result<VcpuState, VcpuStateError> {
    save_regs(vcpu, features, |_| true)
}

/// A vCPU's CPU model: the same layout as `save_vcpu`, holding only the ID registers and
/// MPIDR_EL1 (a tenth of the registers, so the vCPU is held out of KVM_RUN for a tenth of
/// the time): what a migration's pre-flight checks against the destination's host.
pub fn save_cpu_model(vcpu: &VcpuFd, features: [u32; 7]) -> Result<VcpuState, VcpuStateError> {
    let mpidr = MPIDR_EL1.kvm_reg_id();
    save_regs(vcpu, features, |id| {
        id == mpidr || sysreg::sysreg_of(id).is_some_and(crate::cpu::id_regs::is_id_reg)
    })
}

fn save_regs(
    vcpu: &VcpuFd,
    features: [u32; 7],
    wanted: impl Fn(u64) -> bool,
) -> Result<VcpuState, VcpuStateError> {
    let regs = reg_list(vcpu)?
        .into_iter()
        .filter(|id| wanted(*id))
        .map(|id| get_reg(vcpu, id))
        .collect::<Result<Vec<_>, _>>()?;
    let mp_state = vcpu
        .get_mp_state()
        .map_err(|source| VcpuStateError::MpState { op: "read", source })?
        .mp_state;
    let ev = vcpu
        .get_vcpu_events()
        .map_err(|source| VcpuStateError::Events { op: "read", source })?;
    let mpidr_id = MPIDR_EL1.kvm_reg_id();
    let mpidr = regs
        .iter()
        .find(|r| r.id == mpidr_id)
        .and_then(RegValue::as_u64)
        .ok_or_else(|| VcpuStateError::Invalid("KVM does not list MPIDR_EL1".to_string()))?;
    let mut features = features;
    features[0] &= !(1 << KVM_ARM_VCPU_POWER_OFF);
    Ok(VcpuState {
        mpidr,
        features,
        mp_state,
        regs,
        events: Some(VcpuEvents {
            serror_pending: ev.exception.serror_pending != 0,
            serror_has_esr: ev.exception.serror_has_esr != 0,
            ext_dabt_pending: ev.exception.ext_dabt_pending != 0,
            serror_esr: ev.exception.serror_esr,
        }),
    })
}

fn describe(ids: &[u64]) -> String {
    ids.iter()
        .map(|id| format!("{} ({id:#x})", sysreg::reg_name(*id)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn has_feature(features: &[u32; 7], bit: u32) -> bool {
    features[(bit / 32) as usize] & (1 << (bit % 32)) != 0
}

/// Restores a vCPU saved by `save_vcpu` into a freshly created, uninitialised one:
/// KVM_ARM_VCPU_INIT with the saved features, the SVE vector lengths and finalize if SVE is
/// on, every saved register in saved order (the counter registers only without the counter
/// offset, see `RestoreOptions`), the MP state (a secondary the guest never started stays
/// STOPPED), then the pending events. A register the host lists and the state lacks, or the
/// reverse, is an error naming each one, before any register is written.
pub fn restore_vcpu(
    vm: &VmFd,
    vcpu: &VcpuFd,
    s: &VcpuState,
    opts: RestoreOptions,
) -> Result<(), VcpuStateError> {
    s.check().map_err(VcpuStateError::Invalid)?;
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(VcpuStateError::PreferredTarget)?;
    kvi.features = s.features;
    kvi.features[0] &= !(1 << KVM_ARM_VCPU_POWER_OFF);
    vcpu.vcpu_init(&kvi)
        .map_err(|source| VcpuStateError::Init {
            features: kvi.features,
            source,
        })?;
    if has_feature(&s.features, KVM_ARM_VCPU_SVE) {
        // The vector lengths can be written only between INIT and FINALIZE.
        let vls = s.regs.iter().find(|r| r.id == SVE_VLS_ID).ok_or_else(|| {
            VcpuStateError::Invalid("SVE is on but KVM_REG_ARM64_SVE_VLS is not saved".to_string())
        })?;
        set_reg(vcpu, vls)?;
        vcpu.vcpu_finalize(&(KVM_ARM_VCPU_SVE as i32))
            .map_err(VcpuStateError::Finalize)?;
    }
    let host = reg_list(vcpu)?;
    let only_saved: Vec<u64> = s
        .regs
        .iter()
        .map(|r| r.id)
        .filter(|id| !host.contains(id))
        .collect();
    let only_host: Vec<u64> = host
        .iter()
        .copied()
        .filter(|id| !s.regs.iter().any(|r| r.id == *id))
        .collect();
    if !only_saved.is_empty() || !only_host.is_empty() {
        return Err(VcpuStateError::RegisterSets {
            only_saved: describe(&only_saved),
            only_host: describe(&only_host),
        });
    }
    for r in &s.regs {
        if r.id == SVE_VLS_ID || (opts.counter_offset && is_counter_reg(r.id)) {
            continue;
        }
        set_reg(vcpu, r)?;
    }
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: s.mp_state,
    })
    .map_err(|source| VcpuStateError::MpState {
        op: "write",
        source,
    })?;
    if let Some(e) = s.events {
        let mut ev = kvm_vcpu_events::default();
        ev.exception.serror_pending = e.serror_pending.into();
        ev.exception.serror_has_esr = e.serror_has_esr.into();
        ev.exception.ext_dabt_pending = e.ext_dabt_pending.into();
        ev.exception.serror_esr = e.serror_esr;
        vcpu.set_vcpu_events(&ev)
            .map_err(|source| VcpuStateError::Events {
                op: "write",
                source,
            })?;
    }
    Ok(())
}
