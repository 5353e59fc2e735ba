//! KVM-specific Arm64 code: vCPU and vGIC setup, ioctls that kvm-ioctls does not wrap, and
//! checks that our portable encodings agree with kvm-bindings.

pub mod gic;
pub mod vcpu;
mod writable_masks;

use crate::sysreg;
pub use gic::{GicError, GicV3};
pub use vcpu::VcpuInitError;
pub use writable_masks::{WritableMasks, WritableMasksError};

// The portable constants must equal the kernel's; checked at compile time on aarch64.
const _: () = {
    assert!(sysreg::KVM_REG_ARM64 == kvm_bindings::KVM_REG_ARM64);
    assert!(sysreg::KVM_REG_SIZE_U64 == kvm_bindings::KVM_REG_SIZE_U64);
    assert!(sysreg::KVM_REG_ARM_CORE == kvm_bindings::KVM_REG_ARM_CORE as u64);
    assert!(sysreg::KVM_REG_ARM64_SYSREG == kvm_bindings::KVM_REG_ARM64_SYSREG as u64);
    assert!(sysreg::FEATURE_ID_RANGE_SIZE == kvm_bindings::KVM_ARM_FEATURE_ID_RANGE_SIZE as usize);
    assert!(
        sysreg::PC_ID == sysreg::core_reg_id(std::mem::offset_of!(kvm_bindings::user_pt_regs, pc))
    );
    assert!(
        sysreg::PSTATE_ID
            == sysreg::core_reg_id(std::mem::offset_of!(kvm_bindings::user_pt_regs, pstate))
    );
};
