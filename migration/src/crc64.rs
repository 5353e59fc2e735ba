//! CRC-64/XZ (the ECMA-182 polynomial, reflected, initial value and final XOR all ones), the
//! checksum of the snapshot file and of every migration frame. Eight tables of 256 entries
//! built at compile time ("slicing by 8": eight bytes per step, a few operations per byte
//! instead of a table lookup and a shift each); no crate.
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

/// `TABLES[k][b]`: the register after shifting byte `b` and then `k` zero bytes through it,
/// so that eight bytes are folded in with one lookup each.
static TABLES: [[u64; 256]; 8] = {
    let mut t = [[0u64; 256]; 8];
    t[0] = TABLE;
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ TABLE[(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// Shifts `bytes` through the register one byte at a time.
fn bytewise(mut crc: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        crc = TABLE[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The CRC-64/XZ of `bytes`.
pub(crate) fn crc64(bytes: &[u8]) -> u64 {
    let mut crc = u64::MAX;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(w);
        let x = crc ^ u64::from_le_bytes(eight);
        crc = TABLES[7][(x & 0xff) as usize]
            ^ TABLES[6][((x >> 8) & 0xff) as usize]
            ^ TABLES[5][((x >> 16) & 0xff) as usize]
            ^ TABLES[4][((x >> 24) & 0xff) as usize]
            ^ TABLES[3][((x >> 32) & 0xff) as usize]
            ^ TABLES[2][((x >> 40) & 0xff) as usize]
            ^ TABLES[1][((x >> 48) & 0xff) as usize]
            ^ TABLES[0][(x >> 56) as usize];
    }
    bytewise(crc, words.remainder()) ^ u64::MAX
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
    fn eight_at_a_time_equals_one_at_a_time() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 4096, 4991 - start] {
                let d = &data[start..start + len];
                assert_eq!(crc64(d), bytewise(u64::MAX, d) ^ u64::MAX, "{start}+{len}");
            }
        }
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
