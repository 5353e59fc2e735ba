//! KVM-specific Arm64 code: vCPU and vGIC setup, ioctls that kvm-ioctls does not wrap, and
//! checks that our portable encodings agree with kvm-bindings.

pub mod counter;
pub mod dirty_log;
pub mod gic;
pub mod gic_state;
pub mod vcpu;
pub mod vcpu_state;
mod writable_masks;

use crate::sysreg;
pub use counter::CounterError;
pub use dirty_log::DirtyLogError;
pub use gic::{GicError, GicV3};
pub use gic_state::{GicStateError, restore_gic, save_gic};
pub use vcpu::VcpuInitError;
pub use vcpu_state::{RestoreOptions, VcpuStateError, restore_vcpu, save_vcpu};
pub use writable_masks::{WritableMasks, WritableMasksError};

// The portable constants must equal the kernel's; checked at compile time on aarch64.
const _: () = {
    assert!(sysreg::KVM_REG_ARM64 == kvm_bindings::KVM_REG_ARM64);
    assert!(sysreg::KVM_REG_SIZE_U64 == kvm_bindings::KVM_REG_SIZE_U64);
    assert!(sysreg::KVM_REG_ARM_CORE == kvm_bindings::KVM_REG_ARM_CORE as u64);
    assert!(sysreg::KVM_REG_ARM64_SYSREG == kvm_bindings::KVM_REG_ARM64_SYSREG as u64);
    assert!(sysreg::FEATURE_ID_RANGE_SIZE == kvm_bindings::KVM_ARM_FEATURE_ID_RANGE_SIZE as usize);
    assert!(sysreg::KVM_REG_SIZE_MASK == kvm_bindings::KVM_REG_SIZE_MASK);
    assert!(sysreg::KVM_REG_SIZE_SHIFT == kvm_bindings::KVM_REG_SIZE_SHIFT);
    assert!(sysreg::KVM_REG_ARM_COPROC_MASK == kvm_bindings::KVM_REG_ARM_COPROC_MASK as u64);
    assert!(sysreg::KVM_REG_ARM_DEMUX == kvm_bindings::KVM_REG_ARM_DEMUX as u64);
    assert!(sysreg::KVM_REG_ARM_FW == kvm_bindings::KVM_REG_ARM_FW as u64);
    assert!(sysreg::KVM_REG_ARM64_SVE == kvm_bindings::KVM_REG_ARM64_SVE as u64);
    assert!(sysreg::KVM_REG_ARM_FW_FEAT_BMAP == kvm_bindings::KVM_REG_ARM_FW_FEAT_BMAP as u64);
    assert!(
        sysreg::PC_ID == sysreg::core_reg_id(std::mem::offset_of!(kvm_bindings::user_pt_regs, pc))
    );
    assert!(
        sysreg::PSTATE_ID
            == sysreg::core_reg_id(std::mem::offset_of!(kvm_bindings::user_pt_regs, pstate))
    );
};
