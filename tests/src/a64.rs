//! Encodes the handful of A64 instructions the hand-assembled test guests use.

/// `hvc #0`.
pub const HVC_0: u32 = 0xd400_0002;
/// `b .`: branch to itself.
pub const B_SELF: u32 = 0x1400_0000;

/// PSCI 0.2 `SYSTEM_OFF` function ID (SMC32).
pub const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
/// PSCI 0.2 `SYSTEM_RESET` function ID (SMC32).
pub const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;

fn reg(r: u32) -> u32 {
    assert!(r < 32, "register x{r} does not exist");
    r
}

/// `movz xD, #imm16, lsl #(16 * hw)`.
pub fn movz(rd: u32, imm16: u16, hw: u32) -> u32 {
    assert!(hw < 4);
    0xd280_0000 | (hw << 21) | (u32::from(imm16) << 5) | reg(rd)
}

/// `movk xD, #imm16, lsl #(16 * hw)`.
pub fn movk(rd: u32, imm16: u16, hw: u32) -> u32 {
    assert!(hw < 4);
    0xf280_0000 | (hw << 21) | (u32::from(imm16) << 5) | reg(rd)
}

/// Loads a 64-bit constant into `xD` with one movz and up to three movk.
pub fn mov_imm64(rd: u32, value: u64) -> Vec<u32> {
    let mut out = vec![movz(rd, value as u16, 0)];
    for hw in 1..4 {
        let part = (value >> (16 * hw)) as u16;
        if part != 0 {
            out.push(movk(rd, part, hw));
        }
    }
    out
}

/// `str xT, [xN, #offset]` (offset a multiple of 8 below 32 KiB).
pub fn str_x(rt: u32, rn: u32, offset: u32) -> u32 {
    assert!(offset % 8 == 0 && offset / 8 < 4096);
    0xf900_0000 | ((offset / 8) << 10) | (reg(rn) << 5) | reg(rt)
}

/// `ldr xT, [xN, #offset]` (offset a multiple of 8 below 32 KiB).
pub fn ldr_x(rt: u32, rn: u32, offset: u32) -> u32 {
    assert!(offset % 8 == 0 && offset / 8 < 4096);
    0xf940_0000 | ((offset / 8) << 10) | (reg(rn) << 5) | reg(rt)
}

/// `add xD, xN, #imm12`.
pub fn add_imm(rd: u32, rn: u32, imm12: u32) -> u32 {
    assert!(imm12 < 4096);
    0x9100_0000 | (imm12 << 10) | (reg(rn) << 5) | reg(rd)
}

/// `subs xD, xN, #imm12`.
pub fn subs_imm(rd: u32, rn: u32, imm12: u32) -> u32 {
    assert!(imm12 < 4096);
    0xf100_0000 | (imm12 << 10) | (reg(rn) << 5) | reg(rd)
}

/// `isb`.
pub const ISB: u32 = 0xd503_3fdf;

/// `mrs xT, cntvct_el0`: the virtual counter.
pub fn mrs_cntvct(rt: u32) -> u32 {
    0xd53b_e040 | reg(rt)
}

/// `b` by a signed number of instructions.
pub fn b(offset_instrs: i32) -> u32 {
    0x1400_0000 | ((offset_instrs as u32) & 0x03ff_ffff)
}

/// `b.ne` by a signed number of instructions.
pub fn b_ne(offset_instrs: i32) -> u32 {
    0x5400_0001 | (((offset_instrs as u32) & 0x7ffff) << 5)
}

/// Calls a PSCI function through `hvc #0` (x0 holds the function ID).
pub fn psci_call(function: u64) -> Vec<u32> {
    let mut v = mov_imm64(0, function);
    v.push(HVC_0);
    v
}

/// Little-endian bytes of a program.
pub fn to_bytes(program: &[u32]) -> Vec<u8> {
    program.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected words are what GNU as emits for the same instructions.
    #[test]
    fn encodings_match_the_assembler() {
        assert_eq!(movz(0, 8, 0), 0xd280_0100); // mov x0, #0x8
        assert_eq!(movk(0, 0x8400, 1), 0xf2b0_8000); // movk x0, #0x8400, lsl #16
        assert_eq!(str_x(2, 1, 0), 0xf900_0022); // str x2, [x1]
        assert_eq!(ldr_x(3, 1, 0), 0xf940_0023); // ldr x3, [x1]
        assert_eq!(str_x(3, 1, 8), 0xf900_0423); // str x3, [x1, #8]
        assert_eq!(add_imm(1, 1, 1), 0x9100_0421); // add x1, x1, #1
        assert_eq!(subs_imm(0, 0, 1), 0xf100_0400); // subs x0, x0, #1
        assert_eq!(b_ne(-1), 0x54ff_ffe1); // b.ne .-4
        assert_eq!(HVC_0, 0xd400_0002); // hvc #0
        assert_eq!(b(-2), 0x17ff_fffe); // b .-8
        assert_eq!(b(0), B_SELF);
        assert_eq!(mrs_cntvct(6), 0xd53b_e046); // mrs x6, cntvct_el0
        assert_eq!(ISB, 0xd503_3fdf); // isb
    }

    #[test]
    fn constants_take_only_needed_halves() {
        assert_eq!(
            mov_imm64(0, PSCI_SYSTEM_OFF),
            vec![0xd280_0100, 0xf2b0_8000]
        );
        assert_eq!(mov_imm64(5, 0).len(), 1);
        assert_eq!(mov_imm64(1, u64::MAX).len(), 4);
        assert_eq!(to_bytes(&[0x1122_3344]), vec![0x44, 0x33, 0x22, 0x11]);
    }
}
