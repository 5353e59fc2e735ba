use std::os::unix::fs::MetadataExt;

use vm_memory::Bytes;

use super::*;

const BASE: u64 = 0x8000_0000;
const SIZE: u64 = 64 * PAGE_SIZE;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-mem-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn fill(ram: &Ram, page: u64, byte: u8) {
    ram.guest()
        .write_slice(
            &[byte; PAGE_SIZE as usize],
            GuestAddress(BASE + page * PAGE_SIZE),
        )
        .unwrap();
}

#[test]
fn a_full_file_holds_the_written_pages_and_holes_elsewhere() {
    let dir = scratch("full");
    let ram = Ram::new(BASE, SIZE).unwrap();
    fill(&ram, 3, 0xaa);
    fill(&ram, 4, 0xbb);
    fill(&ram, 40, 0xcc);
    // Written, then zeroed again: present in the memfd but not worth a block.
    fill(&ram, 50, 0x11);
    fill(&ram, 50, 0);
    let path = dir.join("mem");
    let stats = ram.write_full(&path).unwrap();
    assert_eq!(stats.pages, 3);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, SIZE);
    let at = |p: u64| bytes[(p * PAGE_SIZE) as usize];
    assert_eq!(
        (at(3), at(4), at(40), at(50), at(0)),
        (0xaa, 0xbb, 0xcc, 0, 0)
    );
    assert!(allocated(&path) <= 3 * PAGE_SIZE, "{}", allocated(&path));
    assert!(!temp_name(&path).exists());
}

#[test]
fn a_memory_file_maps_privately_and_a_short_one_is_refused() {
    let dir = scratch("private");
    let ram = Ram::new(BASE, SIZE).unwrap();
    fill(&ram, 7, 0x77);
    let path = dir.join("mem");
    ram.write_full(&path).unwrap();

    let restored = Ram::from_file(BASE, SIZE, &path).unwrap();
    let mut b = [0u8; 1];
    restored
        .guest()
        .read_slice(&mut b, GuestAddress(BASE + 7 * PAGE_SIZE))
        .unwrap();
    assert_eq!(b[0], 0x77);
    // The guest's writes stay in the process: the file is unchanged.
    fill(&restored, 7, 0x01);
    fill(&restored, 9, 0x09);
    assert_eq!(
        std::fs::read(&path).unwrap()[(7 * PAGE_SIZE) as usize],
        0x77
    );
    // A full snapshot of a restored guest has the file's pages and the ones written since.
    let again = dir.join("mem2");
    assert_eq!(restored.write_full(&again).unwrap().pages, 2);
    let bytes = std::fs::read(&again).unwrap();
    assert_eq!(bytes[(7 * PAGE_SIZE) as usize], 0x01);
    assert_eq!(bytes[(9 * PAGE_SIZE) as usize], 0x09);

    let e = Ram::from_file(BASE, SIZE * 2, &path).unwrap_err();
    assert!(matches!(e, MemoryError::TooShort { need, .. } if need == SIZE * 2));
    assert!(e.to_string().contains("mem"), "{e}");
    let e = Ram::from_file(BASE, SIZE, &dir.join("missing")).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn device_writes_are_tracked_and_a_diff_laid_over_its_base_gives_the_memory() {
    let dir = scratch("diff");
    let ram = Ram::new(BASE, SIZE).unwrap();
    fill(&ram, 1, 0x10);
    fill(&ram, 2, 0x20);
    let base = dir.join("base");
    ram.write_full(&base).unwrap();
    let _ = ram.take_device_dirty();

    fill(&ram, 2, 0); // dirtied to zero: the diff must carry it
    fill(&ram, 33, 0x33);
    let dirty = ram.take_device_dirty();
    let set: Vec<u64> = (0..64).filter(|i| dirty[0] & (1 << i) != 0).collect();
    assert_eq!(set, vec![2, 33]);
    assert!(ram.take_device_dirty().iter().all(|w| *w == 0));

    let diff = dir.join("diff");
    assert_eq!(ram.write_diff(&diff, &dirty).unwrap().pages, 2);
    assert!(allocated(&diff) <= 2 * PAGE_SIZE, "{}", allocated(&diff));
    let full = dir.join("full");
    ram.write_full(&full).unwrap();

    assert_eq!(rebase(&base, &diff).unwrap(), 2 * PAGE_SIZE);
    assert_eq!(std::fs::read(&base).unwrap(), std::fs::read(&full).unwrap());
}

#[test]
fn a_failed_write_leaves_nothing_and_a_mismatched_diff_is_refused() {
    let dir = scratch("fail");
    let ram = Ram::new(BASE, SIZE).unwrap();
    let path = dir.join("no-such-dir").join("mem");
    assert!(ram.write_full(&path).is_err());
    assert!(!path.exists() && !temp_name(&path).exists());

    let a = dir.join("a");
    let b = dir.join("b");
    std::fs::write(&a, vec![0u8; 4096]).unwrap();
    std::fs::write(&b, vec![1u8; 8192]).unwrap();
    let e = rebase(&a, &b).unwrap_err();
    assert!(matches!(e, MemoryError::Mismatch { .. }), "{e}");
    assert_eq!(std::fs::read(&a).unwrap(), vec![0u8; 4096]);
}

#[test]
fn scattered_pages_of_a_larger_guest_reach_the_file() {
    let dir = scratch("scattered");
    let size = 1024 * PAGE_SIZE;
    let ram = Ram::new(BASE, size).unwrap();
    let pages = [0u64, 63, 64, 300, 511, 512, 700, 1023];
    for (n, p) in pages.iter().enumerate() {
        ram.guest()
            .write_slice(
                &[n as u8 + 1; PAGE_SIZE as usize],
                GuestAddress(BASE + p * PAGE_SIZE),
            )
            .unwrap();
    }
    let path = dir.join("mem");
    let stats = ram.write_full(&path).unwrap();
    assert_eq!(stats.pages, pages.len() as u64);
    let bytes = std::fs::read(&path).unwrap();
    for (n, p) in pages.iter().enumerate() {
        let at = (p * PAGE_SIZE) as usize;
        assert!(
            bytes[at..at + PAGE_SIZE as usize]
                .iter()
                .all(|b| *b == n as u8 + 1),
            "page {p}"
        );
    }
    let nonzero = bytes.iter().filter(|b| **b != 0).count() as u64;
    assert_eq!(nonzero, pages.len() as u64 * PAGE_SIZE);
}

#[test]
fn zero_pages_are_told_apart_from_pages_with_one_byte_set() {
    let mut page = vec![0u8; PAGE_SIZE as usize + 3];
    assert!(is_zero(&page));
    for at in [0, 63, 64, 4095, 4096, 4098] {
        page[at] = 1;
        assert!(!is_zero(&page), "byte {at}");
        page[at] = 0;
    }
    assert!(is_zero(&[]));
}

#[test]
fn the_candidate_bitmap_names_exactly_the_pages_that_may_hold_data() {
    let dir = scratch("bitmap");
    let ram = Ram::new(BASE, SIZE).unwrap();
    fill(&ram, 2, 0x22);
    fill(&ram, 33, 0x33);
    let map = ram.candidate_bitmap().unwrap();
    assert_eq!(map.len(), SIZE / PAGE_SIZE);
    // The memfd's data extents cover at least the written pages (a file system may report
    // more as data; those are read and found zero).
    let got: Vec<u64> = map.iter().collect();
    assert!(got.contains(&2) && got.contains(&33), "{got:?}");
    // A private mapping of a memory file: the file's pages and the ones written since.
    let path = dir.join("mem");
    ram.write_full(&path).unwrap();
    let restored = Ram::from_file(BASE, SIZE, &path).unwrap();
    fill(&restored, 60, 0x60);
    let got: Vec<u64> = restored.candidate_bitmap().unwrap().iter().collect();
    for p in [2, 33, 60] {
        assert!(got.contains(&p), "page {p} in {got:?}");
    }
}
