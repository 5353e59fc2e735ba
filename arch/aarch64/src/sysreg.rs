//! System-register encodings and KVM register IDs, in plain code that compiles on any host
//! (kvm-bindings has no arm64 constants in an x86 build).

/// `KVM_REG_ARM64`: the architecture part of a register ID.
pub const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// `KVM_REG_SIZE_U64`: a 64-bit register.
pub const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// `KVM_REG_ARM_CORE`: the core-register coprocessor group.
pub const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;
/// `KVM_REG_ARM64_SYSREG`: the system-register coprocessor group.
pub const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << 16;

/// Number of entries in KVM's feature-ID register range (`KVM_ARM_FEATURE_ID_RANGE_SIZE`).
pub const FEATURE_ID_RANGE_SIZE: usize = 3 * 8 * 8;

/// A system register named by its `(op0, op1, CRn, CRm, op2)` encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SysReg {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
}

impl SysReg {
    /// A register from its encoding.
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Self {
        Self {
            op0,
            op1,
            crn,
            crm,
            op2,
        }
    }

    /// The ONE_REG ID KVM uses for this register (`ARM64_SYS_REG` in the kernel headers).
    pub const fn kvm_reg_id(self) -> u64 {
        KVM_REG_ARM64
            | KVM_REG_SIZE_U64
            | KVM_REG_ARM64_SYSREG
            | ((self.op0 as u64 & 3) << 14)
            | ((self.op1 as u64 & 7) << 11)
            | ((self.crn as u64 & 15) << 7)
            | ((self.crm as u64 & 15) << 3)
            | (self.op2 as u64 & 7)
    }

    /// The index of this register in KVM's writable-mask array
    /// (`KVM_ARM_FEATURE_ID_RANGE_IDX`), if it lies in the feature-ID range
    /// (op0 = 3, op1 in {0, 1, 3}, CRn = 0, CRm in 0..=7).
    pub const fn feature_id_index(self) -> Option<usize> {
        if self.op0 != 3 || self.crn != 0 || self.crm > 7 || self.op2 > 7 {
            return None;
        }
        let op1 = match self.op1 {
            0 => 0,
            1 => 1,
            3 => 2,
            _ => return None,
        };
        Some((op1 << 6) | ((self.crm as usize & 7) << 3) | self.op2 as usize)
    }
}

/// `MIDR_EL1`: the main ID register.
pub const MIDR_EL1: SysReg = SysReg::new(3, 0, 0, 0, 0);
/// `MPIDR_EL1`: the multiprocessor affinity register.
pub const MPIDR_EL1: SysReg = SysReg::new(3, 0, 0, 0, 5);
/// `ID_AA64PFR0_EL1`: processor features 0.
pub const ID_AA64PFR0_EL1: SysReg = SysReg::new(3, 0, 0, 4, 0);
/// `ID_AA64PFR1_EL1`: processor features 1.
pub const ID_AA64PFR1_EL1: SysReg = SysReg::new(3, 0, 0, 4, 1);
/// `ID_AA64DFR0_EL1`: debug features 0.
pub const ID_AA64DFR0_EL1: SysReg = SysReg::new(3, 0, 0, 5, 0);
/// `ID_AA64ISAR0_EL1`: instruction-set attributes 0.
pub const ID_AA64ISAR0_EL1: SysReg = SysReg::new(3, 0, 0, 6, 0);
/// `ID_AA64ISAR1_EL1`: instruction-set attributes 1.
pub const ID_AA64ISAR1_EL1: SysReg = SysReg::new(3, 0, 0, 6, 1);
/// `ID_AA64MMFR0_EL1`: memory-model features 0.
pub const ID_AA64MMFR0_EL1: SysReg = SysReg::new(3, 0, 0, 7, 0);
/// `CNTFRQ_EL0`: the counter frequency.
pub const CNTFRQ_EL0: SysReg = SysReg::new(3, 3, 14, 0, 0);

/// The ONE_REG ID of a 64-bit core register at `byte_offset` in `struct kvm_regs`.
pub const fn core_reg_id(byte_offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (byte_offset as u64 / 4)
}

/// The ONE_REG ID of general-purpose register `Xn` (n < 31).
pub const fn xreg_id(n: usize) -> u64 {
    core_reg_id(n * 8)
}

/// The ONE_REG ID of `SP_EL0`.
pub const SP_ID: u64 = core_reg_id(31 * 8);
/// The ONE_REG ID of the program counter.
pub const PC_ID: u64 = core_reg_id(32 * 8);
/// The ONE_REG ID of `PSTATE`.
pub const PSTATE_ID: u64 = core_reg_id(33 * 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysreg_ids_match_the_kernel_encoding() {
        // Values from the kernel's ARM64_SYS_REG() for these registers.
        assert_eq!(ID_AA64PFR0_EL1.kvm_reg_id(), 0x6030_0000_0013_c020);
        assert_eq!(ID_AA64ISAR0_EL1.kvm_reg_id(), 0x6030_0000_0013_c030);
        assert_eq!(MIDR_EL1.kvm_reg_id(), 0x6030_0000_0013_c000);
        assert_eq!(CNTFRQ_EL0.kvm_reg_id(), 0x6030_0000_0013_df00);
    }

    #[test]
    fn feature_id_index_follows_the_range_layout() {
        assert_eq!(ID_AA64PFR0_EL1.feature_id_index(), Some(32));
        assert_eq!(ID_AA64ISAR0_EL1.feature_id_index(), Some(48));
        assert_eq!(MIDR_EL1.feature_id_index(), Some(0));
        // op1 = 3 maps to the third block, the last index is 191.
        assert_eq!(
            SysReg::new(3, 3, 0, 7, 7).feature_id_index(),
            Some(FEATURE_ID_RANGE_SIZE - 1)
        );
        assert_eq!(SysReg::new(3, 1, 0, 0, 1).feature_id_index(), Some(65));
        assert_eq!(CNTFRQ_EL0.feature_id_index(), None, "CRn != 0");
        assert_eq!(
            SysReg::new(3, 2, 0, 0, 0).feature_id_index(),
            None,
            "op1 = 2"
        );
        assert_eq!(
            SysReg::new(2, 0, 0, 0, 0).feature_id_index(),
            None,
            "op0 != 3"
        );
    }

    #[test]
    fn core_register_ids() {
        assert_eq!(xreg_id(0), 0x6030_0000_0010_0000);
        assert_eq!(xreg_id(1), 0x6030_0000_0010_0002);
        assert_eq!(PC_ID, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE_ID, 0x6030_0000_0010_0042);
    }
}
