//! Portable knowledge of the CPU the guest sees: the feature-ID registers and their fields.

pub mod id_regs;
