//! Version negotiation. The source opens with `Hello`, naming the range of protocol versions
//! it speaks; the destination answers `Welcome` with the highest version both speak, or
//! `Refuse` naming both ranges. The frame header and the `Hello`, `Welcome` and `Refuse`
//! layouts never change, so any two builds can at least tell each other why they cannot talk.

use std::fmt;

use super::ProtocolError;
use super::message::Message;
use crate::snapshot::ARCH_AARCH64;

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// This build's range.
pub const SUPPORTED_VERSIONS: VersionRange = VersionRange {
    min: MIN_PROTOCOL_VERSION,
    max: PROTOCOL_VERSION,
};

/// A range of protocol versions, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    /// The oldest.
    pub min: u32,
    /// The newest.
    pub max: u32,
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "protocol version {}", self.min)
        } else {
            write!(f, "protocol versions {} to {}", self.min, self.max)
        }
    }
}

impl VersionRange {
    fn contains(self, v: u32) -> bool {
        (self.min..=self.max).contains(&v)
    }
}

/// The source's `Hello` from this build.
pub fn hello(vmm_version: &str) -> Message {
    Message::Hello {
        protocol_version: PROTOCOL_VERSION,
        min_protocol_version: MIN_PROTOCOL_VERSION,
        vmm_version: vmm_version.to_string(),
        arch: ARCH_AARCH64,
    }
}

/// The version a destination speaking `ours` chooses for a source speaking `theirs`: the
/// highest both speak; or why there is none, naming both ranges.
pub fn negotiate(ours: VersionRange, theirs: VersionRange) -> Result<u32, String> {
    if theirs.min == 0 || theirs.min > theirs.max {
        return Err(format!(
            "the source announces protocol versions {} to {}, which is no valid range",
            theirs.min, theirs.max
        ));
    }
    let chosen = ours.max.min(theirs.max);
    if chosen >= ours.min.max(theirs.min) {
        Ok(chosen)
    } else {
        Err(format!(
            "no protocol version in common: the source speaks {theirs}, this destination {ours}"
        ))
    }
}

/// The destination's answer to the source's first message: `Welcome` with the chosen version,
/// or `Refuse` naming the difference (protocol versions or the guest's architecture).
/// `Err` when `first` is not a `Hello` at all.
pub fn answer_hello(first: &Message, ours: VersionRange) -> Result<Message, ProtocolError> {
    let Message::Hello {
        protocol_version,
        min_protocol_version,
        vmm_version,
        arch,
    } = first
    else {
        return Err(ProtocolError::Unexpected {
            expected: "waiting for Hello from the source".to_string(),
            got: format!("{} as the first message", first.name()),
        });
    };
    if *arch != ARCH_AARCH64 {
        return Ok(Message::Refuse {
            reason: format!(
                "the source ({vmm_version}) runs a guest of architecture {arch:#06x}; this destination runs aarch64 guests ({ARCH_AARCH64:#06x})"
            ),
        });
    }
    let theirs = VersionRange {
        min: *min_protocol_version,
        max: *protocol_version,
    };
    Ok(match negotiate(ours, theirs) {
        Ok(v) => Message::Welcome {
            protocol_version: v,
        },
        Err(reason) => Message::Refuse {
            reason: format!("{reason} (source {vmm_version})"),
        },
    })
}

/// The source's check of the destination's `Welcome`: the version it chose, which must be
/// one the source speaks.
pub fn accept_welcome(chosen: u32, ours: VersionRange) -> Result<u32, ProtocolError> {
    if ours.contains(chosen) {
        Ok(chosen)
    } else {
        Err(ProtocolError::BadVersion { chosen, ours })
    }
}
