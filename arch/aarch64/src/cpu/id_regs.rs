//! The feature-ID registers (MIDR_EL1, ID_AA64*_EL1, CTR_EL0, ...): their names and fields,
//! used to list a guest's ID registers and to name the fields that differ between a snapshot
//! and the host it is restored on.

use crate::sysreg::SysReg;

/// A bit field of an ID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The architectural name.
    pub name: &'static str,
    /// Lowest bit.
    pub lsb: u8,
    /// Width in bits.
    pub width: u8,
}

impl Field {
    /// The field's value in a register value.
    pub const fn extract(self, value: u64) -> u64 {
        (value >> self.lsb) & self.mask()
    }

    const fn mask(self) -> u64 {
        if self.width >= 64 {
            u64::MAX
        } else {
            (1 << self.width) - 1
        }
    }

    /// The field's bits in place.
    pub const fn mask_in_place(self) -> u64 {
        self.mask() << self.lsb
    }
}

/// How an ID register's bits are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The feature-ID scheme: sixteen 4-bit fields; the named ones are listed by their lsb,
    /// the others are compared as unnamed 4-bit fields.
    Nibbles(&'static [(u8, &'static str)]),
    /// Fields of their own widths; bits outside them are compared as one remainder.
    Fields(&'static [Field]),
}

/// An ID register with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdReg {
    /// The encoding.
    pub reg: SysReg,
    /// The architectural name.
    pub name: &'static str,
    /// The fields.
    pub layout: Layout,
}

const fn f(name: &'static str, lsb: u8, width: u8) -> Field {
    Field { name, lsb, width }
}

const fn nib(op1: u8, crm: u8, op2: u8, name: &'static str) -> IdReg {
    IdReg {
        reg: SysReg::new(3, op1, 0, crm, op2),
        name,
        layout: Layout::Nibbles(&[]),
    }
}

const fn named(
    op1: u8,
    crm: u8,
    op2: u8,
    name: &'static str,
    fields: &'static [(u8, &'static str)],
) -> IdReg {
    IdReg {
        reg: SysReg::new(3, op1, 0, crm, op2),
        name,
        layout: Layout::Nibbles(fields),
    }
}

const fn fields(op1: u8, crm: u8, op2: u8, name: &'static str, fs: &'static [Field]) -> IdReg {
    IdReg {
        reg: SysReg::new(3, op1, 0, crm, op2),
        name,
        layout: Layout::Fields(fs),
    }
}

/// Every ID register this build names, in encoding order. MPIDR_EL1 is not here: it names
/// a vCPU, it does not describe the CPU model.
pub const ID_REGS: &[IdReg] = &[
    fields(
        0,
        0,
        0,
        "MIDR_EL1",
        &[
            f("Revision", 0, 4),
            f("PartNum", 4, 12),
            f("Architecture", 16, 4),
            f("Variant", 20, 4),
            f("Implementer", 24, 8),
        ],
    ),
    fields(0, 0, 6, "REVIDR_EL1", &[]),
    nib(0, 1, 0, "ID_PFR0_EL1"),
    nib(0, 1, 1, "ID_PFR1_EL1"),
    nib(0, 1, 2, "ID_DFR0_EL1"),
    nib(0, 1, 3, "ID_AFR0_EL1"),
    nib(0, 1, 4, "ID_MMFR0_EL1"),
    nib(0, 1, 5, "ID_MMFR1_EL1"),
    nib(0, 1, 6, "ID_MMFR2_EL1"),
    nib(0, 1, 7, "ID_MMFR3_EL1"),
    nib(0, 2, 0, "ID_ISAR0_EL1"),
    nib(0, 2, 1, "ID_ISAR1_EL1"),
    nib(0, 2, 2, "ID_ISAR2_EL1"),
    nib(0, 2, 3, "ID_ISAR3_EL1"),
    nib(0, 2, 4, "ID_ISAR4_EL1"),
    nib(0, 2, 5, "ID_ISAR5_EL1"),
    nib(0, 2, 6, "ID_MMFR4_EL1"),
    nib(0, 2, 7, "ID_ISAR6_EL1"),
    nib(0, 3, 0, "MVFR0_EL1"),
    nib(0, 3, 1, "MVFR1_EL1"),
    nib(0, 3, 2, "MVFR2_EL1"),
    nib(0, 3, 4, "ID_PFR2_EL1"),
    nib(0, 3, 5, "ID_DFR1_EL1"),
    nib(0, 3, 6, "ID_MMFR5_EL1"),
    named(
        0,
        4,
        0,
        "ID_AA64PFR0_EL1",
        &[
            (0, "EL0"),
            (4, "EL1"),
            (8, "EL2"),
            (12, "EL3"),
            (16, "FP"),
            (20, "AdvSIMD"),
            (24, "GIC"),
            (28, "RAS"),
            (32, "SVE"),
            (36, "SEL2"),
            (40, "MPAM"),
            (44, "AMU"),
            (48, "DIT"),
            (52, "RME"),
            (56, "CSV2"),
            (60, "CSV3"),
        ],
    ),
    named(
        0,
        4,
        1,
        "ID_AA64PFR1_EL1",
        &[
            (0, "BT"),
            (4, "SSBS"),
            (8, "MTE"),
            (12, "RAS_frac"),
            (16, "MPAM_frac"),
            (24, "SME"),
            (28, "RNDR_trap"),
            (32, "CSV2_frac"),
            (36, "NMI"),
            (40, "MTE_frac"),
            (44, "GCS"),
            (48, "THE"),
            (52, "MTEX"),
            (56, "DF2"),
            (60, "PFAR"),
        ],
    ),
    nib(0, 4, 2, "ID_AA64PFR2_EL1"),
    named(
        0,
        4,
        4,
        "ID_AA64ZFR0_EL1",
        &[
            (0, "SVEver"),
            (4, "AES"),
            (16, "BitPerm"),
            (20, "BF16"),
            (24, "B16B16"),
            (32, "SHA3"),
            (40, "SM4"),
            (44, "I8MM"),
            (52, "F32MM"),
            (56, "F64MM"),
        ],
    ),
    nib(0, 4, 5, "ID_AA64SMFR0_EL1"),
    nib(0, 4, 7, "ID_AA64FPFR0_EL1"),
    named(
        0,
        5,
        0,
        "ID_AA64DFR0_EL1",
        &[
            (0, "DebugVer"),
            (4, "TraceVer"),
            (8, "PMUVer"),
            (12, "BRPs"),
            (16, "PMSS"),
            (20, "WRPs"),
            (24, "SEBEP"),
            (28, "CTX_CMPs"),
            (32, "PMSVer"),
            (36, "DoubleLock"),
            (40, "TraceFilt"),
            (44, "TraceBuffer"),
            (48, "MTPMU"),
            (52, "BRBE"),
            (56, "ExtTrcBuff"),
            (60, "HPMN0"),
        ],
    ),
    nib(0, 5, 1, "ID_AA64DFR1_EL1"),
    nib(0, 5, 4, "ID_AA64AFR0_EL1"),
    nib(0, 5, 5, "ID_AA64AFR1_EL1"),
    named(
        0,
        6,
        0,
        "ID_AA64ISAR0_EL1",
        &[
            (4, "AES"),
            (8, "SHA1"),
            (12, "SHA2"),
            (16, "CRC32"),
            (20, "Atomic"),
            (24, "TME"),
            (28, "RDM"),
            (32, "SHA3"),
            (36, "SM3"),
            (40, "SM4"),
            (44, "DP"),
            (48, "FHM"),
            (52, "TS"),
            (56, "TLB"),
            (60, "RNDR"),
        ],
    ),
    named(
        0,
        6,
        1,
        "ID_AA64ISAR1_EL1",
        &[
            (0, "DPB"),
            (4, "APA"),
            (8, "API"),
            (12, "JSCVT"),
            (16, "FCMA"),
            (20, "LRCPC"),
            (24, "GPA"),
            (28, "GPI"),
            (32, "FRINTTS"),
            (36, "SB"),
            (40, "SPECRES"),
            (44, "BF16"),
            (48, "DGH"),
            (52, "I8MM"),
            (56, "XS"),
            (60, "LS64"),
        ],
    ),
    named(
        0,
        6,
        2,
        "ID_AA64ISAR2_EL1",
        &[
            (0, "WFxT"),
            (4, "RPRES"),
            (8, "GPA3"),
            (12, "APA3"),
            (16, "MOPS"),
            (20, "BC"),
            (24, "PAC_frac"),
            (28, "CLRBHB"),
            (32, "SYSREG_128"),
            (36, "SYSINSTR_128"),
            (40, "PRFMSLC"),
            (48, "RPRFM"),
            (52, "CSSC"),
            (56, "LUT"),
            (60, "ATS1A"),
        ],
    ),
    nib(0, 6, 3, "ID_AA64ISAR3_EL1"),
    named(
        0,
        7,
        0,
        "ID_AA64MMFR0_EL1",
        &[
            (0, "PARange"),
            (4, "ASIDBits"),
            (8, "BigEnd"),
            (12, "SNSMem"),
            (16, "BigEndEL0"),
            (20, "TGran16"),
            (24, "TGran64"),
            (28, "TGran4"),
            (32, "TGran16_2"),
            (36, "TGran64_2"),
            (40, "TGran4_2"),
            (44, "ExS"),
            (56, "FGT"),
            (60, "ECV"),
        ],
    ),
    named(
        0,
        7,
        1,
        "ID_AA64MMFR1_EL1",
        &[
            (0, "HAFDBS"),
            (4, "VMIDBits"),
            (8, "VH"),
            (12, "HPDS"),
            (16, "LO"),
            (20, "PAN"),
            (24, "SpecSEI"),
            (28, "XNX"),
            (32, "TWED"),
            (36, "ETS"),
            (40, "HCX"),
            (44, "AFP"),
            (48, "nTLBPA"),
            (52, "TIDCP1"),
            (56, "CMOW"),
            (60, "ECBHB"),
        ],
    ),
    named(
        0,
        7,
        2,
        "ID_AA64MMFR2_EL1",
        &[
            (0, "CnP"),
            (4, "UAO"),
            (8, "LSM"),
            (12, "IESB"),
            (16, "VARange"),
            (20, "CCIDX"),
            (24, "NV"),
            (28, "ST"),
            (32, "AT"),
            (36, "IDS"),
            (40, "FWB"),
            (48, "TTL"),
            (52, "BBM"),
            (56, "EVT"),
            (60, "E0PD"),
        ],
    ),
    nib(0, 7, 3, "ID_AA64MMFR3_EL1"),
    nib(0, 7, 4, "ID_AA64MMFR4_EL1"),
    fields(
        1,
        0,
        1,
        "CLIDR_EL1",
        &[
            f("Ctype1", 0, 3),
            f("Ctype2", 3, 3),
            f("Ctype3", 6, 3),
            f("Ctype4", 9, 3),
            f("Ctype5", 12, 3),
            f("Ctype6", 15, 3),
            f("Ctype7", 18, 3),
            f("LoUIS", 21, 3),
            f("LoC", 24, 3),
            f("LoUU", 27, 3),
            f("ICB", 30, 3),
        ],
    ),
    fields(1, 0, 7, "AIDR_EL1", &[]),
    fields(
        3,
        0,
        1,
        "CTR_EL0",
        &[
            f("IminLine", 0, 4),
            f("L1Ip", 14, 2),
            f("DminLine", 16, 4),
            f("ERG", 20, 4),
            f("CWG", 24, 4),
            f("IDC", 28, 1),
            f("DIC", 29, 1),
            f("TminLine", 32, 6),
        ],
    ),
    fields(3, 0, 7, "DCZID_EL0", &[f("BS", 0, 4), f("DZP", 4, 1)]),
];

/// The ID register with this encoding, if named here.
pub fn find(reg: SysReg) -> Option<&'static IdReg> {
    ID_REGS.iter().find(|r| r.reg == reg)
}

/// Whether a register describes the CPU model: every register of KVM's feature-ID range
/// (op0 = 3, op1 in {0, 1, 3}, CRn = 0, CRm 0..=7) except MPIDR_EL1, which names a vCPU.
pub fn is_id_reg(reg: SysReg) -> bool {
    reg.feature_id_index().is_some() && reg != crate::sysreg::MPIDR_EL1
}

fn bits(lsb: u8, width: u8) -> String {
    if width == 1 {
        format!("bit [{lsb}]")
    } else {
        format!("bits [{}:{lsb}]", lsb + width - 1)
    }
}

/// Names each field that differs between two values of one register, as
/// `NAME bits [7:4] (AES): saved vs host` with the field values in decimal.
pub fn field_differences(name: &str, reg: SysReg, saved: u64, host: u64) -> Vec<String> {
    let mut out = Vec::new();
    if saved == host {
        return out;
    }
    let layout = find(reg).map_or(Layout::Fields(&[]), |r| r.layout);
    match layout {
        Layout::Nibbles(named) => {
            for lsb in (0..64).step_by(4) {
                let field = f("", lsb, 4);
                let (a, b) = (field.extract(saved), field.extract(host));
                if a != b {
                    let label = named
                        .iter()
                        .find(|(l, _)| *l == lsb)
                        .map_or(String::new(), |(_, n)| format!(" ({n})"));
                    out.push(format!("{name} {}{label}: {a} vs {b}", bits(lsb, 4)));
                }
            }
        }
        Layout::Fields(fs) => {
            let mut covered = 0u64;
            for field in fs {
                covered |= field.mask_in_place();
                let (a, b) = (field.extract(saved), field.extract(host));
                if a != b {
                    out.push(format!(
                        "{name} {} ({}): {a} vs {b}",
                        bits(field.lsb, field.width),
                        field.name
                    ));
                }
            }
            let rest = (saved ^ host) & !covered;
            if rest != 0 {
                out.push(format!(
                    "{name} bits {rest:#x} outside the named fields: {:#x} vs {:#x}",
                    saved & !covered,
                    host & !covered
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysreg::{ID_AA64ISAR0_EL1, ID_AA64PFR0_EL1, MIDR_EL1, MPIDR_EL1};

    #[test]
    fn the_table_is_sorted_unique_and_in_the_feature_id_range() {
        for w in ID_REGS.windows(2) {
            assert!(w[0].reg < w[1].reg, "{} before {}", w[0].name, w[1].name);
        }
        for r in ID_REGS {
            assert!(is_id_reg(r.reg), "{}", r.name);
            if let Layout::Nibbles(named) = r.layout {
                assert!(
                    named.iter().all(|(lsb, _)| lsb % 4 == 0 && *lsb < 64),
                    "{}",
                    r.name
                );
            }
            if let Layout::Fields(fs) = r.layout {
                let mut seen = 0u64;
                for field in fs {
                    assert_eq!(seen & field.mask_in_place(), 0, "{} overlaps", field.name);
                    seen |= field.mask_in_place();
                }
            }
        }
        assert!(!is_id_reg(MPIDR_EL1));
        assert_eq!(
            find(ID_AA64PFR0_EL1).map(|r| r.name),
            Some("ID_AA64PFR0_EL1")
        );
    }

    #[test]
    fn differing_fields_are_named_with_their_bits() {
        // AES 2 (PMULL) saved, 1 on the host; CRC32 the same.
        assert_eq!(
            field_differences("ID_AA64ISAR0_EL1", ID_AA64ISAR0_EL1, 0x1_0020, 0x1_0010),
            vec!["ID_AA64ISAR0_EL1 bits [7:4] (AES): 2 vs 1"]
        );
        // Bits [3:0] are RES0 and unnamed: still reported, without a name.
        assert_eq!(
            field_differences("ID_AA64ISAR0_EL1", ID_AA64ISAR0_EL1, 1, 0),
            vec!["ID_AA64ISAR0_EL1 bits [3:0]: 1 vs 0"]
        );
        // Neoverse-N1 r3p1 against Neoverse-V1 r1p1.
        assert_eq!(
            field_differences("MIDR_EL1", MIDR_EL1, 0x413f_d0c1, 0x411f_d401),
            vec![
                "MIDR_EL1 bits [15:4] (PartNum): 3340 vs 3392",
                "MIDR_EL1 bits [23:20] (Variant): 3 vs 1",
            ]
        );
        assert!(field_differences("x", MIDR_EL1, 5, 5).is_empty());
    }

    #[test]
    fn registers_without_fields_compare_as_a_whole() {
        let revidr = SysReg::new(3, 0, 0, 0, 6);
        assert_eq!(
            field_differences("REVIDR_EL1", revidr, 0x10, 0x0),
            vec!["REVIDR_EL1 bits 0x10 outside the named fields: 0x10 vs 0x0"]
        );
        let ctr = SysReg::new(3, 3, 0, 0, 1);
        assert_eq!(
            field_differences("CTR_EL0", ctr, 1 << 28, 0),
            vec!["CTR_EL0 bit [28] (IDC): 1 vs 0"]
        );
    }
}
