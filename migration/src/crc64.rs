//! CRC-64/XZ (the ECMA-182 polynomial, reflected, initial value and final XOR all ones), the
//! checksum of the snapshot file. A table of 256 entries built at compile time; no crate.
//!
//! Chosen over CRC32C for its 64 bits: a snapshot of up to 64 MiB has a 2^-64 chance of a
//! random corruption passing, and the parameters are those of the `.xz` format's CRC64 check,
//! so a file can be checked with independent tools.

/// The ECMA-182 polynomial, bit-reversed for the LSB-first (reflected) form.
const POLY_REFLECTED: u64 = 0xC96C_5795_D787_0F42;

/// `TABLE[b]` is the CRC register after shifting the byte `b` through it.
const TABLE: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
};

/// The CRC-64/XZ of `bytes`.
pub(crate) fn crc64(bytes: &[u8]) -> u64 {
    let mut crc = u64::MAX;
    for &b in bytes {
        crc = TABLE[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc ^ u64::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_check_value() {
        // The check value of CRC-64/XZ in the CRC catalogue (reveng).
        assert_eq!(crc64(b"123456789"), 0x995D_C9BB_DF19_39FA);
        assert_eq!(crc64(b""), 0);
    }

    #[test]
    fn every_single_bit_flip_changes_the_checksum() {
        let data = b"a snapshot of a few bytes".to_vec();
        let good = crc64(&data);
        for bit in 0..data.len() * 8 {
            let mut d = data.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(crc64(&d), good, "bit {bit}");
        }
    }
}
