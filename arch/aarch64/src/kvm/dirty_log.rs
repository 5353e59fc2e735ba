//! KVM's dirty log with manual protection (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`): reading the
//! log does not clear it; the VMM clears (and so write-protects again) the pages it is about
//! to copy, 64 pages at a time. With `KVM_DIRTY_LOG_INITIALLY_SET` every page starts dirty
//! and write protection is applied lazily by the first clear, so turning logging on costs
//! nothing in proportion to guest size.
//!
//! The VMM enables the capability before registering memory, and registers each slot it
//! wants logged with `KVM_MEM_LOG_DIRTY_PAGES`. The log sees only the guest's writes: the
//! VMM's own writes into guest memory are tracked by the memory's bitmap.

use kvm_bindings::{
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_INITIALLY_SET,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVMIO, kvm_clear_dirty_log, kvm_enable_cap,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iowr_nr;

ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

/// Errors of the dirty log.
#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    /// The host does not offer manual protection.
    #[error("KVM does not offer KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (flags {0:#x})")]
    Unsupported(u32),
    /// Enabling the capability failed.
    #[error("cannot enable KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with flags {flags:#x}: {source}")]
    Enable {
        /// The flags asked for.
        flags: u32,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_GET_DIRTY_LOG failed (the slot does not exist or does not log).
    #[error("KVM_GET_DIRTY_LOG of slot {slot} failed: {source}")]
    Get {
        /// The slot.
        slot: u32,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The range to clear is not one KVM accepts.
    #[error("cannot clear the dirty log of slot {slot}: {reason}")]
    BadRange {
        /// The slot.
        slot: u32,
        /// Why.
        reason: String,
    },
    /// KVM_CLEAR_DIRTY_LOG failed.
    #[error(
        "KVM_CLEAR_DIRTY_LOG of slot {slot}, pages {first_page}..+{num_pages} failed: {source}"
    )]
    Clear {
        /// The slot.
        slot: u32,
        /// First page.
        first_page: u64,
        /// Number of pages.
        num_pages: u32,
        /// What KVM said.
        #[source]
        source: std::io::Error,
    },
}

/// Enables manual protection, and with `initially_set` (when the host offers it) every page
/// starts dirty, so that turning logging on write-protects nothing up front. Returns the flags
/// enabled. Call before registering the memory slots.
pub fn enable_manual_protect(vm: &VmFd, initially_set: bool) -> Result<u32, DirtyLogError> {
    // The capability answers with the flags it supports.
    let offered = vm.check_extension_raw(u64::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) as u32;
    if offered & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE == 0 {
        return Err(DirtyLogError::Unsupported(offered));
    }
    let wanted = if initially_set {
        KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET
    } else {
        KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
    };
    let flags = offered & wanted;
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        ..Default::default()
    };
    cap.args[0] = u64::from(flags);
    vm.enable_cap(&cap)
        .map_err(|source| DirtyLogError::Enable { flags, source })?;
    Ok(flags)
}

/// The dirty bitmap of a slot of `size` bytes: bit `n` of word `n / 64` is page `n`. With
/// manual protection this does not clear the log.
pub fn get_dirty_log(vm: &VmFd, slot: u32, size: usize) -> Result<Vec<u64>, DirtyLogError> {
    vm.get_dirty_log(slot, size)
        .map_err(|source| DirtyLogError::Get { slot, source })
}

/// Clears the pages whose bits are set in `bitmap` (bit `n` is page `first_page + n`) from
/// the dirty log, and write-protects them again so the next guest write marks them.
/// `first_page` must be a multiple of 64, and `num_pages` too unless the range ends at the
/// end of the slot (KVM checks that).
pub fn clear_dirty_log(
    vm: &VmFd,
    slot: u32,
    first_page: u64,
    num_pages: u32,
    bitmap: &[u64],
) -> Result<(), DirtyLogError> {
    let bad = |reason: String| DirtyLogError::BadRange { slot, reason };
    if first_page % 64 != 0 {
        return Err(bad(format!(
            "the first page {first_page} is not a multiple of 64"
        )));
    }
    if (bitmap.len() as u64) * 64 < u64::from(num_pages) {
        return Err(bad(format!(
            "a bitmap of {} words cannot cover {num_pages} pages",
            bitmap.len()
        )));
    }
    let mut arg = kvm_clear_dirty_log {
        slot,
        num_pages,
        first_page,
        ..Default::default()
    };
    arg.__bindgen_anon_1.dirty_bitmap = bitmap.as_ptr() as *mut std::ffi::c_void;
    // SAFETY: `arg` points at `bitmap`, which holds at least `num_pages` bits and outlives
    // the call; KVM only reads it. `vm` is a VM fd.
    let ret = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &arg) };
    if ret < 0 {
        return Err(DirtyLogError::Clear {
            slot,
            first_page,
            num_pages,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The page numbers whose bits are set in a dirty bitmap, in order.
pub fn dirty_pages(bitmap: &[u64]) -> Vec<u64> {
    let mut pages = Vec::new();
    for (w, word) in bitmap.iter().enumerate() {
        let mut bits = *word;
        while bits != 0 {
            let bit = u64::from(bits.trailing_zeros());
            pages.push(w as u64 * 64 + bit);
            bits &= bits - 1;
        }
    }
    pages
}
