//! The engine's view of a running VM's memory: KVM's dirty log on memory slot 0, with manual
//! protection and every page initially dirty (so turning logging on for a running guest
//! write-protects nothing up front; the engine's first read of the log re-protects the pages
//! it is about to send), OR'ed with the pages the VMM's devices wrote (vm-memory's bitmap).
//! Pages are read with volatile copies: the guest keeps writing them while they are sent,
//! and the dirty log catches what changes afterwards.

use arch::kvm::dirty_log::{self, DirtyLogError};
use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use migration::engine::{DirtyBitmap, DirtySource};
use vm_memory::{Bytes, GuestAddress};

use crate::vm::memory::{PAGE_SIZE, Ram};

/// Why the dirty log could not be turned on, read or turned off, or a page read.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// A dirty-log call failed.
    #[error(transparent)]
    Log(#[from] DirtyLogError),
    /// The memory slot's flags could not be changed.
    #[error("cannot {0} dirty logging on the memory slot: {1}")]
    Slot(&'static str, #[source] kvm_ioctls::Error),
    /// The log does not fit the guest.
    #[error("the dirty log does not match the guest's {0} pages")]
    Size(u64),
    /// A page could not be read.
    #[error("cannot read guest page {0}: {1}")]
    Read(u64, String),
}

/// Guest memory of a running VM as the pre-copy engine reads it.
#[derive(Debug)]
pub struct GuestDirtySource<'a> {
    vm: &'a VmFd,
    ram: &'a Ram,
    /// The VM logs dirty pages for Diff snapshots anyway: the log stays on afterwards.
    keep_logging: bool,
    /// Pages that may hold data: those of the backing's data extents when tracking began,
    /// plus every page logged dirty since. The others are holes, zero without being read
    /// (reading a hole of shared memory would allocate it).
    maybe_data: Option<DirtyBitmap>,
    /// Tracking has just started: the next read of the log also finds the data pages.
    fresh: bool,
}

impl<'a> GuestDirtySource<'a> {
    /// The memory of `vm`, whose slot 0 maps `ram`; `keep_logging` when the VM tracks dirty
    /// pages for its own sake (Diff snapshots), so turning tracking off leaves the log on.
    pub fn new(vm: &'a VmFd, ram: &'a Ram, keep_logging: bool) -> Self {
        Self {
            vm,
            ram,
            keep_logging,
            maybe_data: None,
            fresh: false,
        }
    }

    /// Notes the pages that may hold data. Called at the first read of the log, after logging
    /// is on (so a hole written later is logged, and read then), and not when logging is
    /// turned on, which must not cost time in proportion to the guest's size.
    fn find_data(&mut self) -> Result<(), DirtyError> {
        let map = self
            .ram
            .candidate_bitmap()
            .map_err(|e| DirtyError::Read(0, e.to_string()))?;
        self.maybe_data = Some(map);
        Ok(())
    }

    fn set_logging(&self, on: bool) -> Result<(), DirtyError> {
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: self.ram.base(),
            memory_size: self.ram.size(),
            userspace_addr: self.ram.host_addr(),
        };
        // SAFETY: the same slot and mapping as before, only its flags change; `ram` lives as
        // long as the VM.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| DirtyError::Slot(if on { "turn on" } else { "turn off" }, e))
    }
}

impl DirtySource for GuestDirtySource<'_> {
    type Error = DirtyError;

    fn page_count(&self) -> u64 {
        self.ram.size().div_ceil(PAGE_SIZE)
    }

    fn page_size(&self) -> usize {
        PAGE_SIZE as usize
    }

    fn start_tracking(&mut self) -> Result<(), DirtyError> {
        if self.keep_logging {
            // Already on (manual protect, set up when the VM was built); the engine's
            // first read takes what is logged, and round 1 sends every page anyway.
            let _ = self.ram.take_device_dirty();
            self.fresh = true;
            return Ok(());
        }
        dirty_log::enable_manual_protect(self.vm, true)?;
        self.set_logging(true)?;
        // What the devices wrote before now travels in the first round anyway.
        let _ = self.ram.take_device_dirty();
        self.fresh = true;
        Ok(())
    }

    fn take_dirty(&mut self) -> Result<DirtyBitmap, DirtyError> {
        let pages = self.page_count();
        if std::mem::take(&mut self.fresh) {
            self.find_data()?;
        }
        let mut words = dirty_log::get_dirty_log(self.vm, 0, self.ram.size() as usize)?;
        words.truncate(pages.div_ceil(64) as usize);
        // Cleared (and write-protected again) before the pages are read, so a write that
        // lands while one is sent is logged for the next round.
        dirty_log::clear_dirty_log(self.vm, 0, 0, pages as u32, &words)?;
        for (w, d) in words.iter_mut().zip(self.ram.take_device_dirty()) {
            *w |= d;
        }
        let dirty = DirtyBitmap::from_words(words, pages).map_err(|_| DirtyError::Size(pages))?;
        if let Some(m) = self.maybe_data.as_mut() {
            m.union_with(&dirty);
        }
        Ok(dirty)
    }

    fn is_zero(&self, index: u64) -> Result<bool, DirtyError> {
        // Holes are zero without a read; the engine checks the bytes of the others.
        Ok(self.maybe_data.as_ref().is_some_and(|m| !m.get(index)))
    }

    fn read_page(&self, index: u64, buf: &mut [u8]) -> Result<(), DirtyError> {
        let at = GuestAddress(self.ram.base() + index * PAGE_SIZE);
        self.ram
            .guest()
            .read_slice(buf, at)
            .map_err(|e| DirtyError::Read(index, e.to_string()))
    }

    fn stop_tracking(&mut self) -> Result<(), DirtyError> {
        self.maybe_data = None;
        if self.keep_logging {
            return Ok(());
        }
        self.set_logging(false)
    }
}
