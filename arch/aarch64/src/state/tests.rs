use migration::state::{StateError, decode, encode};

use super::*;
use crate::sysreg::{
    ID_AA64ISAR0_EL1, ID_AA64PFR0_EL1, MIDR_EL1, MPIDR_EL1, PC_ID, TIMER_CNT, xreg_id,
};

fn vcpu(isar0: u64, midr: u64) -> VcpuState {
    VcpuState {
        mpidr: 0x8000_0001,
        features: [1 << 2, 0, 0, 0, 0, 0, 0],
        mp_state: 5,
        regs: vec![
            RegValue::u64(xreg_id(0), 0x1234),
            RegValue::u64(PC_ID, 0x8020_0000),
            // V0: 128 bits.
            RegValue {
                id: 0x6040_0000_0010_0054,
                value: (0u8..16).collect(),
            },
            // FPSR: 32 bits.
            RegValue {
                id: 0x6020_0000_0010_00d4,
                value: vec![1, 0, 0, 0],
            },
            RegValue::u64(MIDR_EL1.kvm_reg_id(), midr),
            RegValue::u64(MPIDR_EL1.kvm_reg_id(), 0x8000_0001),
            RegValue::u64(ID_AA64PFR0_EL1.kvm_reg_id(), 0x1100_0000_0011_1112),
            RegValue::u64(ID_AA64ISAR0_EL1.kvm_reg_id(), isar0),
            RegValue::u64(TIMER_CNT.kvm_reg_id(), 99),
        ],
        events: Some(VcpuEvents {
            serror_pending: true,
            serror_has_esr: true,
            ext_dabt_pending: false,
            serror_esr: 0x1234,
        }),
    }
}

fn gic() -> GicState {
    let spis = 96;
    GicState {
        nr_irqs: 128,
        dist: GicDistState {
            ctlr: 0x12,
            iidr: 0x0300_043b,
            statusr: 0,
            igroupr: vec![!0; spis / 32],
            isenabler: vec![0, 1 << 5, 0],
            ispendr: vec![0; spis / 32],
            isactiver: vec![0; spis / 32],
            ipriorityr: vec![0xa0a0_a0a0; spis / 4],
            icfgr: vec![0; spis / 16],
            irouter: vec![0; spis],
            line_level: vec![0, 4, 0],
        },
        redists: vec![GicRedistState {
            mpidr: 0x8000_0000,
            ipriorityr: vec![0; GICR_IPRIORITYR_COUNT],
            cpu: GicCpuState {
                sre: 7,
                ctlr: 0x0400,
                pmr: 0xf0,
                ap0r: vec![0],
                ap1r: vec![0],
                ..Default::default()
            },
            ..Default::default()
        }],
    }
}

#[test]
fn vcpu_state_round_trips_through_a_section() {
    let s = vcpu(0x0011_2110, 0x413f_d0c1);
    let section = encode("vcpu0", &s).expect("encode");
    assert_eq!(section.version, 1);
    assert_eq!(decode::<VcpuState>(&section).expect("decode"), s);
    // A layout that never changed refuses older versions, naming them.
    let mut old = section.clone();
    old.version = 0;
    assert!(matches!(
        decode::<VcpuState>(&old),
        Err(StateError::BadVersion { .. })
    ));
    let mut newer = section;
    newer.version = 2;
    assert!(matches!(
        decode::<VcpuState>(&newer),
        Err(StateError::TooNew { found: 2, .. })
    ));
}

#[test]
fn truncated_vcpu_state_is_malformed_not_a_panic() {
    let section = encode("vcpu0", &vcpu(0, 0)).expect("encode");
    for cut in [0, 1, section.data.len() / 2, section.data.len() - 1] {
        let mut s = section.clone();
        s.data.truncate(cut);
        assert!(
            matches!(decode::<VcpuState>(&s), Err(StateError::Malformed { .. })),
            "cut at {cut}"
        );
    }
}

#[test]
fn gic_state_round_trips_and_checks_its_shape() {
    let g = gic();
    let section = encode("gic", &g).expect("encode");
    assert_eq!(decode::<GicState>(&section).expect("decode"), g);
    g.check(128, &[0x8000_0000]).expect("fits");
    let err = g
        .check(128, &[0x8000_0000, 0x8000_0001])
        .expect_err("two vCPUs");
    assert!(err.contains("MPIDRs"), "{err}");
    let err = g.check(256, &[0x8000_0000]).expect_err("more IRQs");
    assert!(err.contains("128 interrupt IDs"), "{err}");
    let mut bad = g.clone();
    bad.dist.irouter.pop();
    let err = bad.check(128, &[0x8000_0000]).expect_err("short IROUTER");
    assert!(err.contains("95 GICD_IROUTER"), "{err}");
    let mut bad = g;
    bad.redists[0].cpu.ap1r.push(0);
    assert!(bad.check(128, &[0x8000_0000]).is_err());
}

#[test]
fn reg_reads_registers_up_to_eight_bytes() {
    let s = vcpu(0, 0);
    assert_eq!(s.reg(xreg_id(0)), Some(0x1234));
    assert_eq!(s.reg(0x6020_0000_0010_00d4), Some(1), "FPSR is 32 bits");
    assert_eq!(s.reg(0x6040_0000_0010_0054), None, "V0 is 128 bits");
    assert_eq!(s.reg(xreg_id(7)), None, "not saved");
}

#[test]
fn id_registers_are_listed_with_names_and_without_mpidr() {
    let s = vcpu(0x10, 0x413f_d0c1);
    let ids: Vec<(String, u64)> = s
        .id_registers()
        .into_iter()
        .map(|r| (r.name, r.value))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("MIDR_EL1".to_string(), 0x413f_d0c1),
            ("ID_AA64PFR0_EL1".to_string(), 0x1100_0000_0011_1112),
            ("ID_AA64ISAR0_EL1".to_string(), 0x10),
        ]
    );
}

#[test]
fn id_register_differences_name_the_fields() {
    let saved = vcpu(0x0001_0020, 0x413f_d0c1);
    assert!(id_register_differences(&saved, &saved.clone()).is_empty());
    // Only non-ID registers differ: no difference.
    let mut other = saved.clone();
    other.regs[0] = RegValue::u64(xreg_id(0), 7);
    other.regs.retain(|r| r.id != TIMER_CNT.kvm_reg_id());
    assert!(id_register_differences(&saved, &other).is_empty());

    let host = vcpu(0x0001_0010, 0x411f_d401);
    assert_eq!(
        id_register_differences(&saved, &host),
        vec![
            "MIDR_EL1 bits [15:4] (PartNum): 3340 vs 3392",
            "MIDR_EL1 bits [23:20] (Variant): 3 vs 1",
            "ID_AA64ISAR0_EL1 bits [7:4] (AES): 2 vs 1",
        ]
    );

    let mut fewer = host.clone();
    fewer.regs.retain(|r| r.id != ID_AA64PFR0_EL1.kvm_reg_id());
    let d = id_register_differences(&saved, &fewer);
    assert!(
        d.contains(
            &"ID_AA64PFR0_EL1 is in the snapshot but this host's KVM does not have it".to_string()
        ),
        "{d:?}"
    );
    let d = id_register_differences(&fewer, &host);
    assert!(
        d.contains(&"ID_AA64PFR0_EL1 is on this host but not in the snapshot".to_string()),
        "{d:?}"
    );
}

#[test]
fn check_names_a_register_of_the_wrong_size_or_saved_twice() {
    let mut s = vcpu(0, 0);
    s.check().expect("consistent");
    s.regs[1].value.pop();
    let err = s.check().expect_err("7-byte PC");
    assert!(err.contains("pc") && err.contains("7 bytes"), "{err}");
    let mut s = vcpu(0, 0);
    let dup = s.regs[0].clone();
    s.regs.push(dup);
    let err = s.check().expect_err("x0 twice");
    assert!(err.contains("x0") && err.contains("twice"), "{err}");
}
