//! The guest's view of the generic timer's counter across a snapshot.
//!
//! A VM's guest counter is the host's physical counter minus an offset. With
//! KVM_ARM_SET_COUNTER_OFFSET (`KVM_CAP_COUNTER_OFFSET`, Linux 6.4) one offset applies to
//! the virtual and the physical counter of every vCPU, and KVM then ignores writes of
//! KVM_REG_ARM_TIMER_CNT and KVM_REG_ARM_PTIMER_CNT; without it, writing TIMER_CNT on each
//! vCPU moves the virtual counter only. After a restore the guest counter must continue from
//! the saved value (plus, if asked, the ticks of the time the guest was away), so guest time
//! never goes backwards.
//!
//! So that the virtual and the physical counter agree from the start, a VM that will be
//! snapshotted sets its counter at boot the same way (`restore_guest_counter(vm, vcpus, 0)`),
//! before any vCPU runs; otherwise its physical counter starts at the host's and would jump
//! back to the virtual one's value on restore.

use std::arch::asm;

use kvm_bindings::{KVM_CAP_COUNTER_OFFSET, KVMIO, kvm_arm_counter_offset};
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

use crate::sysreg::TIMER_CNT;

ioctl_iow_nr!(
    KVM_ARM_SET_COUNTER_OFFSET,
    KVMIO,
    0xb5,
    kvm_arm_counter_offset
);

/// Errors setting or reading the guest counter.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    /// KVM_ARM_SET_COUNTER_OFFSET failed (EBUSY while a vCPU ioctl runs).
    #[error("KVM_ARM_SET_COUNTER_OFFSET({offset:#x}) failed: {source}")]
    SetOffset {
        /// The offset.
        offset: u64,
        /// What KVM said.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing KVM_REG_ARM_TIMER_CNT failed.
    #[error("cannot {op} KVM_REG_ARM_TIMER_CNT of vCPU {index}: {source}")]
    Reg {
        /// "read" or "write".
        op: &'static str,
        /// The vCPU's position in the slice given.
        index: usize,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// How `restore_guest_counter` set the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterMethod {
    /// KVM_ARM_SET_COUNTER_OFFSET with this offset.
    Offset(u64),
    /// KVM_REG_ARM_TIMER_CNT written on every vCPU.
    Registers,
}

/// Whether the host has KVM_ARM_SET_COUNTER_OFFSET.
pub fn has_counter_offset(vm: &VmFd) -> bool {
    vm.check_extension_raw(u64::from(KVM_CAP_COUNTER_OFFSET)) > 0
}

/// Sets the VM-wide counter offset: the guest counters read the host's physical counter
/// minus `offset`. Call with no vCPU in KVM_RUN.
pub fn set_counter_offset(vm: &VmFd, offset: u64) -> Result<(), CounterError> {
    let arg = kvm_arm_counter_offset {
        counter_offset: offset,
        reserved: 0,
    };
    // SAFETY: `arg` is a `struct kvm_arm_counter_offset` KVM only reads during the call;
    // `vm` is a VM fd.
    let ret = unsafe { ioctl_with_ref(vm, KVM_ARM_SET_COUNTER_OFFSET(), &arg) };
    if ret < 0 {
        return Err(CounterError::SetOffset {
            offset,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The host's counter now (CNTVCT_EL0, after an ISB so it is not read early). In a VHE host,
/// and in an nVHE host whose CNTVOFF_EL2 KVM keeps at 0, this is the physical count that
/// KVM's counter offset is subtracted from.
pub fn host_counter() -> u64 {
    let v: u64;
    // SAFETY: reads a register EL0 may read; no memory is touched.
    unsafe { asm!("isb", "mrs {v}, cntvct_el0", v = out(reg) v, options(nomem, nostack)) };
    v
}

/// The counter frequency in Hz (CNTFRQ_EL0), the same for the host and its guests: KVM does
/// not scale the counter, so a snapshot restores only on hosts with the same frequency.
pub fn counter_frequency() -> u64 {
    let v: u64;
    // SAFETY: reads a register EL0 may read; no memory is touched.
    unsafe { asm!("mrs {v}, cntfrq_el0", v = out(reg) v, options(nomem, nostack)) };
    v
}

/// The guest's virtual counter as seen by a vCPU (KVM_REG_ARM_TIMER_CNT).
pub fn guest_counter(vcpu: &VcpuFd) -> Result<u64, CounterError> {
    let mut b = [0u8; 8];
    vcpu.get_one_reg(TIMER_CNT.kvm_reg_id(), &mut b)
        .map_err(|source| CounterError::Reg {
            op: "read",
            index: 0,
            source,
        })?;
    Ok(u64::from_le_bytes(b))
}

/// Sets the guest counters to read `value` now, with the counter offset: the offset is the
/// host counter minus `value`. Returns the offset.
pub fn set_guest_counter_by_offset(vm: &VmFd, value: u64) -> Result<u64, CounterError> {
    let offset = host_counter().wrapping_sub(value);
    set_counter_offset(vm, offset)?;
    Ok(offset)
}

/// Sets the guest's virtual counter to `value` by writing KVM_REG_ARM_TIMER_CNT on every
/// vCPU (before Linux 6.4 each vCPU has its own offset; the writes follow each other closely).
pub fn set_guest_counter_by_registers(vcpus: &[&VcpuFd], value: u64) -> Result<(), CounterError> {
    for (index, vcpu) in vcpus.iter().enumerate() {
        vcpu.set_one_reg(TIMER_CNT.kvm_reg_id(), &value.to_le_bytes())
            .map_err(|source| CounterError::Reg {
                op: "write",
                index,
                source,
            })?;
    }
    Ok(())
}

/// Makes the guest counter read `value` (the saved counter, plus any ticks to advance it by)
/// now: with the counter offset when the host has it, else through TIMER_CNT on each vCPU.
/// Call after `restore_vcpu` (with `RestoreOptions::for_vm`) and before any vCPU runs.
pub fn restore_guest_counter(
    vm: &VmFd,
    vcpus: &[&VcpuFd],
    value: u64,
) -> Result<CounterMethod, CounterError> {
    if has_counter_offset(vm) {
        set_guest_counter_by_offset(vm, value).map(CounterMethod::Offset)
    } else {
        set_guest_counter_by_registers(vcpus, value).map(|()| CounterMethod::Registers)
    }
}
