//! What the devices' saved states share: the `Versioned` impl of a layout that has had one
//! version only, and the refusal naming a section. Each device's layouts live in its own
//! `state.rs`; `migration::state` has the section format and the `Stateful` trait.

use migration::state::{Section, StateError};

/// Implements `Versioned` at version 1 for layouts that never changed: there is no older
/// version to convert, so `upgrade` names the version it was asked for.
macro_rules! first_version {
    ($($t:ty),+ $(,)?) => {
        $(
            impl migration::state::Versioned for $t {
                const VERSION: u16 = 1;
                fn upgrade(version: u16, _data: &[u8]) -> Result<Self, String> {
                    Err(format!(
                        "no release wrote version {version} of {}",
                        stringify!($t)
                    ))
                }
            }
        )+
    };
}
pub(crate) use first_version;

/// The state in `section` cannot be applied here, for `reason`.
pub(crate) fn refused(section: &Section, reason: impl Into<String>) -> StateError {
    StateError::Refused {
        name: section.name.clone(),
        reason: reason.into(),
    }
}

/// The checks every device's state goes through in its tests.
#[cfg(test)]
pub(crate) mod testing {
    use migration::state::{Section, StateError, Stateful};

    /// Saves `from`, restores the section into `into` (freshly built), saves `into` again
    /// and checks both saves are equal; returns the section.
    pub(crate) fn round_trip<A, B>(from: &A, into: &mut B) -> Section
    where
        A: Stateful + ?Sized,
        B: Stateful + ?Sized,
    {
        let saved = from.save().expect("save");
        assert_eq!(
            saved.version, 1,
            "{}: every layout is at version 1",
            saved.name
        );
        into.restore(&saved).expect("restore into a fresh device");
        let again = into.save().expect("save after restore");
        assert_eq!(saved, again, "{}: restored state differs", saved.name);
        saved
    }

    /// A section of `from` claiming a version newer than this build is refused by `into`,
    /// naming the section, and `into` is unchanged.
    pub(crate) fn refuses_newer<A, B>(from: &A, into: &mut B)
    where
        A: Stateful + ?Sized,
        B: Stateful + ?Sized,
    {
        let before = into.save().expect("save");
        let mut s = from.save().expect("save");
        s.version += 1;
        s.name = "virtio/renamed".into();
        match into.restore(&s) {
            Err(e @ StateError::TooNew { .. }) => {
                assert!(e.to_string().contains("virtio/renamed"), "{e}");
            }
            other => panic!("expected TooNew, got {other:?}"),
        }
        assert_eq!(
            into.save().expect("save"),
            before,
            "a refused restore changed state"
        );
    }

    /// `into` refuses `s` with `Refused`, with `needle` in the message, and is unchanged.
    pub(crate) fn refuses<B: Stateful + ?Sized>(into: &mut B, s: &Section, needle: &str) {
        let before = into.save().expect("save");
        match into.restore(s) {
            Err(e @ StateError::Refused { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(needle), "{msg} should mention {needle}");
                assert!(msg.contains(&s.name), "{msg} should name {}", s.name);
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        assert_eq!(
            into.save().expect("save"),
            before,
            "a refused restore changed state"
        );
    }
}
