//! The state of one component is a `Section`: a name unique in the snapshot, the version of
//! the layout its bytes follow, and the bytes. Layouts are plain serde types that implement
//! `Versioned`; a section written by an older build is decoded by its own layout and converted
//! forward, and one from a newer build is refused, naming the section and both versions.
//!
//! Every stateful component implements `Stateful`, which has no default methods: a component
//! cannot be added without saying how it is saved, and one that cannot be saved says so.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One component's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Unique in a snapshot: `vcpu0`, `gic`, `serial`, `virtio/block_root`.
    pub name: String,
    /// The version of the layout `data` follows.
    pub version: u16,
    /// The encoded layout.
    pub data: Vec<u8>,
}

/// Why state could not be saved, decoded or restored. Each names the section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Written by a newer build.
    #[error(
        "section {name} has version {found}, newer than this build reads (up to version {known})"
    )]
    TooNew {
        /// The section.
        name: String,
        /// Its version.
        found: u16,
        /// The newest this build reads.
        known: u16,
    },
    /// Version 0 or one that never existed.
    #[error("section {name} has version {found}, which no release wrote")]
    BadVersion {
        /// The section.
        name: String,
        /// Its version.
        found: u16,
    },
    /// The bytes do not follow the layout of their version.
    #[error("section {name} (version {version}) is malformed: {reason}")]
    Malformed {
        /// The section.
        name: String,
        /// Its version.
        version: u16,
        /// What is wrong.
        reason: String,
    },
    /// The state decodes but cannot be applied here.
    #[error("section {name} cannot be restored: {reason}")]
    Refused {
        /// The section.
        name: String,
        /// Why.
        reason: String,
    },
    /// A component that cannot be saved.
    #[error("{name} cannot be saved: {reason}")]
    Unsaveable {
        /// The component.
        name: String,
        /// Why.
        reason: String,
    },
    /// A section the restore needs is not in the snapshot.
    #[error("the snapshot has no section {0}")]
    Missing(String),
    /// A section in the snapshot that nothing in this build restores.
    #[error("the snapshot has a section {0} that this build does not know")]
    Unknown(String),
    /// Two sections with one name.
    #[error("the snapshot has section {0} twice")]
    Duplicate(String),
}

/// A stored layout of a component's state: plain data with a version. Bump `VERSION` for any
/// change to the layout and teach `upgrade` to read the old one; never change a released
/// layout in place.
pub trait Versioned: Sized + Serialize + DeserializeOwned {
    /// The version this build writes.
    const VERSION: u16;
    /// Decodes `data` written with `version` (1 to `VERSION - 1`) and converts it to the
    /// current layout. Layouts that never changed answer with an error naming the version.
    fn upgrade(version: u16, data: &[u8]) -> Result<Self, String>;
}

/// Encodes a layout as a section named `name`.
pub fn encode<T: Versioned>(name: &str, state: &T) -> Result<Section, StateError> {
    let data = postcard::to_stdvec(state).map_err(|e| StateError::Unsaveable {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Section {
        name: name.to_string(),
        version: T::VERSION,
        data,
    })
}

/// Decodes bytes of exactly one value of `T`; trailing bytes are an error.
pub fn decode_exact<T: DeserializeOwned>(data: &[u8]) -> Result<T, String> {
    let (v, rest) = postcard::take_from_bytes::<T>(data).map_err(|e| e.to_string())?;
    if rest.is_empty() {
        Ok(v)
    } else {
        Err(format!("{} bytes left over after the state", rest.len()))
    }
}

/// Decodes a section into the current layout, converting older versions forward.
pub fn decode<T: Versioned>(s: &Section) -> Result<T, StateError> {
    let malformed = |reason| StateError::Malformed {
        name: s.name.clone(),
        version: s.version,
        reason,
    };
    match s.version {
        0 => Err(StateError::BadVersion {
            name: s.name.clone(),
            found: 0,
        }),
        v if v == T::VERSION => decode_exact(&s.data).map_err(malformed),
        v if v > T::VERSION => Err(StateError::TooNew {
            name: s.name.clone(),
            found: v,
            known: T::VERSION,
        }),
        v => T::upgrade(v, &s.data).map_err(malformed),
    }
}

/// Every stateful component: no default methods, so none is forgotten.
pub trait Stateful {
    /// Saves the component's state, or says why it cannot (never saves nothing silently).
    fn save(&self) -> Result<Section, StateError>;
    /// Restores what `save` wrote, or refuses naming the section.
    fn restore(&mut self, section: &Section) -> Result<(), StateError>;
}

/// The sections of a snapshot, taken one by one by the components that restore them; what
/// is left over at the end was written by something this build does not know.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SectionSet {
    sections: Vec<Section>,
}

impl SectionSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set of sections whose names the caller has found unique (the snapshot decoder,
    /// which checks that in one pass instead of `push`'s search per section).
    pub(crate) fn from_unique(sections: Vec<Section>) -> Self {
        Self { sections }
    }

    /// Adds a section; a second one with the same name is refused.
    pub fn push(&mut self, s: Section) -> Result<(), StateError> {
        if self.get(&s.name).is_some() {
            return Err(StateError::Duplicate(s.name));
        }
        self.sections.push(s);
        Ok(())
    }

    /// The section named `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Takes the section named `name` out of the set.
    pub fn take(&mut self, name: &str) -> Result<Section, StateError> {
        let i = self
            .sections
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| StateError::Missing(name.to_string()))?;
        Ok(self.sections.remove(i))
    }

    /// Takes and decodes the section named `name`.
    pub fn take_decoded<T: Versioned>(&mut self, name: &str) -> Result<T, StateError> {
        decode(&self.take(name)?)
    }

    /// All sections, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &Section> {
        self.sections.iter()
    }

    /// How many sections are left.
    pub fn len(&self) -> usize {
        self.sections.len()
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    /// Succeeds when every section was taken; otherwise names the first one left.
    pub fn finish(self) -> Result<(), StateError> {
        match self.sections.into_iter().next() {
            None => Ok(()),
            Some(s) => Err(StateError::Unknown(s.name)),
        }
    }
}

impl IntoIterator for SectionSet {
    type Item = Section;
    type IntoIter = std::vec::IntoIter<Section>;
    fn into_iter(self) -> Self::IntoIter {
        self.sections.into_iter()
    }
}

#[cfg(test)]
mod tests;
