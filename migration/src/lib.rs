//! Versioned state, the snapshot file format, the migration wire protocol and the pre-copy
//! engine. No KVM and no threads of its own, so that all of it is tested on any host.

pub mod state;

pub use state::{Section, SectionSet, StateError, Stateful, Versioned};
