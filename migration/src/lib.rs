//! Versioned state, the snapshot file format, the migration wire protocol and the pre-copy
//! engine. No KVM and no threads of its own, so that all of it is tested on any host.
//!
//! - `state`: a component's state is a `Section` (name, layout version, bytes); layouts
//!   implement `Versioned` and convert older versions forward; every stateful component
//!   implements `Stateful`, which has no default methods.
//! - `snapshot`: the snapshot state file, a container of sections with a magic, a format
//!   version, a CRC-64 and a size limit, written by temporary file and rename.
//!
//! The byte layout and the versioning rules are in DESIGN.md.

mod crc64;
pub mod engine;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod protocol;
pub mod snapshot;
pub mod state;

pub use snapshot::{
    SectionSummary, SnapshotError, SnapshotSummary, decode_snapshot, encode_snapshot,
    read_snapshot, read_snapshot_bytes, read_snapshot_file, summarize, write_snapshot,
    write_snapshot_file,
};
pub use state::{Section, SectionSet, StateError, Stateful, Versioned};
