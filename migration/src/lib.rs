//! Versioned state, the snapshot file format, the migration wire protocol and the pre-copy
//! engine. No KVM and no threads of its own, so that all of it is tested on any host.
//!
//! Empty for now: it is filled by the snapshot and migration work.
