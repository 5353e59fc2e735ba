//! A frame that declares a large payload and sends little of it costs the reader a bounded
//! buffer, not the declared length: measured with a counting allocator (which is why this is
//! a test binary of its own, with a single test, so no other test allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use migration::protocol::{HEADER_LEN, Message, ProtocolError, encode_message, read_message};
use migration::{Section, SectionSet};

/// The system allocator, recording the largest single allocation while `WATCHING`.
struct Counting;

static WATCHING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; the bookkeeping only
// touches atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's layout contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: as for `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_huge_declared_length_is_not_allocated() {
    // A real State frame of 48 MiB (within the 64 MiB limit), of which the reader gets the
    // header and 100 bytes before the peer closes.
    let mut set = SectionSet::new();
    set.push(Section {
        name: "big".to_string(),
        version: 1,
        data: vec![0x5a; 48 << 20],
    })
    .expect("one section");
    let frame = encode_message(&Message::State { sections: set }).expect("within the limit");
    let sent = &frame[..HEADER_LEN + 100];

    LARGEST.store(0, Ordering::Relaxed);
    WATCHING.store(true, Ordering::Relaxed);
    let got = read_message(&mut &sent[..]);
    WATCHING.store(false, Ordering::Relaxed);

    let Err(ProtocolError::Truncated { needed, got, .. }) = got else {
        panic!("expected a truncation, got {got:?}");
    };
    assert_eq!((needed, got), (frame.len() - HEADER_LEN, 100));
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= 1 << 20,
        "the reader allocated {largest} bytes for a payload it did not get"
    );
}
