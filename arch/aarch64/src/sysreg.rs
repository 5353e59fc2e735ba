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

/// `KVM_REG_SIZE_MASK`: the size field of a register ID (log2 of its size in bytes).
pub const KVM_REG_SIZE_MASK: u64 = 0x00f0_0000_0000_0000;
/// `KVM_REG_SIZE_SHIFT`.
pub const KVM_REG_SIZE_SHIFT: u32 = 52;
/// `KVM_REG_ARCH_MASK`: the architecture part of a register ID.
pub const KVM_REG_ARCH_MASK: u64 = 0xff00_0000_0000_0000;
/// `KVM_REG_ARM_COPROC_MASK`: the group ("coprocessor") part of an arm64 register ID.
pub const KVM_REG_ARM_COPROC_MASK: u64 = 0x0fff_0000;
/// `KVM_REG_ARM_DEMUX`: multiplexed registers (CCSIDR_EL1 per cache level).
pub const KVM_REG_ARM_DEMUX: u64 = 0x0011 << 16;
/// `KVM_REG_ARM_FW`: firmware pseudo-registers (PSCI version, SMCCC workarounds).
pub const KVM_REG_ARM_FW: u64 = 0x0014 << 16;
/// `KVM_REG_ARM64_SVE`: SVE registers.
pub const KVM_REG_ARM64_SVE: u64 = 0x0015 << 16;
/// `KVM_REG_ARM_FW_FEAT_BMAP`: the firmware feature bitmap registers.
pub const KVM_REG_ARM_FW_FEAT_BMAP: u64 = 0x0016 << 16;
/// `KVM_REG_ARM64_SVE_VLS`: the SVE vector lengths, writable only before finalize.
pub const SVE_VLS_ID: u64 = KVM_REG_ARM64 | (6 << KVM_REG_SIZE_SHIFT) | KVM_REG_ARM64_SVE | 0xffff;

/// `KVM_REG_ARM_TIMER_CTL` (CNTV_CTL_EL0).
pub const TIMER_CTL: SysReg = SysReg::new(3, 3, 14, 3, 1);
/// `KVM_REG_ARM_TIMER_CNT`: the guest's virtual counter. Its encoding is CNTVCT_EL0's... in
/// name only: the kernel swapped the encodings of CNT and CVAL long ago and kept them as ABI.
pub const TIMER_CNT: SysReg = SysReg::new(3, 3, 14, 3, 2);
/// `KVM_REG_ARM_TIMER_CVAL` (CNTV_CVAL_EL0), with the swapped encoding.
pub const TIMER_CVAL: SysReg = SysReg::new(3, 3, 14, 0, 2);
/// `KVM_REG_ARM_PTIMER_CTL` (CNTP_CTL_EL0).
pub const PTIMER_CTL: SysReg = SysReg::new(3, 3, 14, 2, 1);
/// `KVM_REG_ARM_PTIMER_CNT`: the guest's physical counter (CNTPCT_EL0).
pub const PTIMER_CNT: SysReg = SysReg::new(3, 3, 14, 0, 1);
/// `KVM_REG_ARM_PTIMER_CVAL` (CNTP_CVAL_EL0).
pub const PTIMER_CVAL: SysReg = SysReg::new(3, 3, 14, 2, 2);

/// Size in bytes of the register an ID names (1 to 2048 bytes).
pub const fn reg_size(id: u64) -> usize {
    1 << ((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT)
}

/// The system register an ID names, if it is in the system-register group.
pub const fn sysreg_of(id: u64) -> Option<SysReg> {
    if id & KVM_REG_ARCH_MASK != KVM_REG_ARM64
        || id & KVM_REG_ARM_COPROC_MASK != KVM_REG_ARM64_SYSREG
    {
        return None;
    }
    Some(SysReg::new(
        ((id >> 14) & 3) as u8,
        ((id >> 11) & 7) as u8,
        ((id >> 7) & 15) as u8,
        ((id >> 3) & 15) as u8,
        (id & 7) as u8,
    ))
}

/// Names of system registers a VMM meets in KVM's register list and in errors. Registers not
/// here are named by their encoding (`S3_0_C1_C0_0`), as assemblers accept them.
const SYSREG_NAMES: &[(SysReg, &str)] = &[
    (MIDR_EL1, "MIDR_EL1"),
    (MPIDR_EL1, "MPIDR_EL1"),
    (SysReg::new(3, 0, 0, 0, 6), "REVIDR_EL1"),
    (SysReg::new(3, 0, 1, 0, 0), "SCTLR_EL1"),
    (SysReg::new(3, 0, 1, 0, 1), "ACTLR_EL1"),
    (SysReg::new(3, 0, 1, 0, 2), "CPACR_EL1"),
    (SysReg::new(3, 0, 2, 0, 0), "TTBR0_EL1"),
    (SysReg::new(3, 0, 2, 0, 1), "TTBR1_EL1"),
    (SysReg::new(3, 0, 2, 0, 2), "TCR_EL1"),
    (SysReg::new(3, 0, 5, 1, 0), "AFSR0_EL1"),
    (SysReg::new(3, 0, 5, 1, 1), "AFSR1_EL1"),
    (SysReg::new(3, 0, 5, 2, 0), "ESR_EL1"),
    (SysReg::new(3, 0, 6, 0, 0), "FAR_EL1"),
    (SysReg::new(3, 0, 7, 4, 0), "PAR_EL1"),
    (SysReg::new(3, 0, 10, 2, 0), "MAIR_EL1"),
    (SysReg::new(3, 0, 10, 3, 0), "AMAIR_EL1"),
    (SysReg::new(3, 0, 12, 0, 0), "VBAR_EL1"),
    (SysReg::new(3, 0, 13, 0, 1), "CONTEXTIDR_EL1"),
    (SysReg::new(3, 0, 13, 0, 4), "TPIDR_EL1"),
    (SysReg::new(3, 0, 14, 1, 0), "CNTKCTL_EL1"),
    (SysReg::new(3, 1, 0, 0, 0), "CCSIDR_EL1"),
    (SysReg::new(3, 1, 0, 0, 1), "CLIDR_EL1"),
    (SysReg::new(3, 1, 0, 0, 7), "AIDR_EL1"),
    (SysReg::new(3, 2, 0, 0, 0), "CSSELR_EL1"),
    (SysReg::new(3, 3, 0, 0, 1), "CTR_EL0"),
    (SysReg::new(3, 3, 0, 0, 7), "DCZID_EL0"),
    (SysReg::new(3, 3, 13, 0, 2), "TPIDR_EL0"),
    (SysReg::new(3, 3, 13, 0, 3), "TPIDRRO_EL0"),
    (SysReg::new(2, 0, 0, 2, 2), "MDSCR_EL1"),
    (CNTFRQ_EL0, "CNTFRQ_EL0"),
    (TIMER_CTL, "KVM_REG_ARM_TIMER_CTL"),
    (TIMER_CNT, "KVM_REG_ARM_TIMER_CNT"),
    (TIMER_CVAL, "KVM_REG_ARM_TIMER_CVAL"),
    (PTIMER_CTL, "KVM_REG_ARM_PTIMER_CTL"),
    (PTIMER_CNT, "KVM_REG_ARM_PTIMER_CNT"),
    (PTIMER_CVAL, "KVM_REG_ARM_PTIMER_CVAL"),
];

/// The name of a system register: the architectural one if known (including every feature-ID
/// register in `cpu::id_regs`), else its encoding.
pub fn sysreg_name(reg: SysReg) -> String {
    if let Some((_, n)) = SYSREG_NAMES.iter().find(|(r, _)| *r == reg) {
        return (*n).to_string();
    }
    if let Some(r) = crate::cpu::id_regs::find(reg) {
        return r.name.to_string();
    }
    format!(
        "S{}_{}_C{}_C{}_{}",
        reg.op0, reg.op1, reg.crn, reg.crm, reg.op2
    )
}

/// A readable name for any arm64 ONE_REG ID, for errors and `snapshot inspect`: `x3`, `pc`,
/// `v7`, `SCTLR_EL1`, `CCSIDR_EL1[2]`, `KVM_REG_ARM_PSCI_VERSION`, `SVE z3`, or the ID in hex.
pub fn reg_name(id: u64) -> String {
    if id & KVM_REG_ARCH_MASK != KVM_REG_ARM64 {
        return format!("{id:#x}");
    }
    let low = id & 0xffff;
    match id & KVM_REG_ARM_COPROC_MASK {
        KVM_REG_ARM_CORE => core_reg_name(low).unwrap_or_else(|| format!("core register {id:#x}")),
        KVM_REG_ARM64_SYSREG => sysreg_of(id).map_or_else(|| format!("{id:#x}"), sysreg_name),
        KVM_REG_ARM_DEMUX if low >> 8 == 0 => format!("CCSIDR_EL1[{}]", low & 0xff),
        KVM_REG_ARM_FW => match low {
            0 => "KVM_REG_ARM_PSCI_VERSION".to_string(),
            n @ 1..=3 => format!("KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_{n}"),
            _ => format!("firmware register {low}"),
        },
        KVM_REG_ARM_FW_FEAT_BMAP => match low {
            0 => "KVM_REG_ARM_STD_BMAP".to_string(),
            1 => "KVM_REG_ARM_STD_HYP_BMAP".to_string(),
            2 => "KVM_REG_ARM_VENDOR_HYP_BMAP".to_string(),
            3 => "KVM_REG_ARM_VENDOR_HYP_BMAP_2".to_string(),
            _ => format!("firmware bitmap register {low}"),
        },
        KVM_REG_ARM64_SVE if low == 0xffff => "KVM_REG_ARM64_SVE_VLS".to_string(),
        KVM_REG_ARM64_SVE => {
            // Bits [10:9] pick Z (0), P (0x400) or FFR (0x600); [9:5] or [8:5] the register
            // number; [4:0] the slice.
            let (n, slice) = ((low >> 5) & 0x1f, low & 0x1f);
            match low & 0x0600 {
                0 | 0x0200 => format!("SVE z{n} slice {slice}"),
                0x0400 => format!("SVE p{} slice {slice}", n & 0xf),
                _ => format!("SVE ffr slice {slice}"),
            }
        }
        _ => format!("{id:#x}"),
    }
}

/// Names the core register at `index` (in 32-bit words) of `struct kvm_regs`.
fn core_reg_name(index: u64) -> Option<String> {
    Some(match index {
        0..=61 if index % 2 == 0 => format!("x{}", index / 2),
        62 => "sp".to_string(),
        64 => "pc".to_string(),
        66 => "pstate".to_string(),
        68 => "sp_el1".to_string(),
        70 => "elr_el1".to_string(),
        72..=80 if index % 2 == 0 => format!("spsr[{}]", (index - 72) / 2),
        // The 128-bit vector registers start 16-byte aligned after the SPSRs.
        84..=211 if (index - 84) % 4 == 0 => format!("v{}", (index - 84) / 4),
        212 => "fpsr".to_string(),
        213 => "fpcr".to_string(),
        _ => return None,
    })
}

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
    fn register_names_and_sizes_follow_the_id() {
        assert_eq!(reg_name(xreg_id(3)), "x3");
        assert_eq!(reg_name(SP_ID), "sp");
        assert_eq!(reg_name(PC_ID), "pc");
        assert_eq!(reg_name(PSTATE_ID), "pstate");
        assert_eq!(reg_name(0x6030_0000_0010_0044), "sp_el1");
        assert_eq!(reg_name(0x6030_0000_0010_0050), "spsr[4]");
        assert_eq!(reg_name(0x6040_0000_0010_0054), "v0");
        assert_eq!(reg_name(0x6040_0000_0010_00d0), "v31");
        assert_eq!(reg_name(0x6020_0000_0010_00d4), "fpsr");
        assert_eq!(reg_name(0x6020_0000_0010_00d5), "fpcr");
        assert_eq!(reg_name(MIDR_EL1.kvm_reg_id()), "MIDR_EL1");
        assert_eq!(reg_name(ID_AA64ISAR0_EL1.kvm_reg_id()), "ID_AA64ISAR0_EL1");
        assert_eq!(reg_name(0x6030_0000_0013_c080), "SCTLR_EL1");
        assert_eq!(
            reg_name(SysReg::new(3, 0, 9, 14, 1).kvm_reg_id()),
            "S3_0_C9_C14_1"
        );
        assert_eq!(reg_name(0x6020_0000_0011_0002), "CCSIDR_EL1[2]");
        assert_eq!(reg_name(0x6030_0000_0014_0000), "KVM_REG_ARM_PSCI_VERSION");
        assert_eq!(
            reg_name(0x6030_0000_0014_0002),
            "KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2"
        );
        assert_eq!(
            reg_name(0x6030_0000_0016_0003),
            "KVM_REG_ARM_VENDOR_HYP_BMAP_2"
        );
        assert_eq!(reg_name(SVE_VLS_ID), "KVM_REG_ARM64_SVE_VLS");
        assert_eq!(reg_name(0x6080_0000_0015_0060), "SVE z3 slice 0");
        assert_eq!(reg_name(0x6050_0000_0015_0420), "SVE p1 slice 0");
        assert_eq!(reg_name(0x6050_0000_0015_0600), "SVE ffr slice 0");
        assert_eq!(reg_name(0x1234), "0x1234");
        // Values from the kernel headers.
        assert_eq!(TIMER_CNT.kvm_reg_id(), 0x6030_0000_0013_df1a);
        assert_eq!(PTIMER_CNT.kvm_reg_id(), 0x6030_0000_0013_df01);
        assert_eq!(TIMER_CVAL.kvm_reg_id(), 0x6030_0000_0013_df02);
        assert_eq!(TIMER_CTL.kvm_reg_id(), 0x6030_0000_0013_df19);
        assert_eq!(SVE_VLS_ID, 0x6060_0000_0015_ffff);
        assert_eq!(reg_size(xreg_id(0)), 8);
        assert_eq!(reg_size(0x6040_0000_0010_0054), 16);
        assert_eq!(reg_size(0x6020_0000_0011_0000), 4);
        assert_eq!(reg_size(SVE_VLS_ID), 64);
        assert_eq!(reg_size(0x6080_0000_0015_0060), 256);
        assert_eq!(sysreg_of(MIDR_EL1.kvm_reg_id()), Some(MIDR_EL1));
        assert_eq!(sysreg_of(PC_ID), None);
    }

    #[test]
    fn core_register_ids() {
        assert_eq!(xreg_id(0), 0x6030_0000_0010_0000);
        assert_eq!(xreg_id(1), 0x6030_0000_0010_0002);
        assert_eq!(PC_ID, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE_ID, 0x6030_0000_0010_0042);
    }
}
