//! The order of the conversation. Both sides keep a `Phase` and pass every message through
//! `Phase::next`, the ones they send as well as the ones they receive, so that a message out of
//! order is refused (`ProtocolError::Unexpected`) instead of acted on, and a side cannot send
//! one either.
//!
//! The commit point is the source's `Commit`: before it, the source still owns the guest and
//! every failure ends with the source running it; from it on, only the destination may run the
//! guest, and only once it has received `Commit`. So after `Loaded` the destination no longer
//! aborts (it waits for `Commit`, `Abort` or `Cancelled`: an abort of its own could cross the
//! source's `Commit` on the wire, and then nobody would run the guest), and after `Commit` the
//! only message is the destination's `Running`.

use std::fmt;

use super::ProtocolError;
use super::message::{Message, MessageType};

/// Which end of the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The VMM that runs the guest now.
    Source,
    /// The VMM the guest moves to.
    Destination,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Source => "the source",
            Self::Destination => "the destination",
        })
    }
}

/// Where the conversation is: what may come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The destination waits for the source's `Hello`.
    AwaitHello,
    /// The source waits for `Welcome` or `Refuse`.
    AwaitWelcome,
    /// The destination waits for `Preflight`.
    AwaitPreflight,
    /// The source waits for `Ready` or `Refuse`.
    AwaitReady,
    /// The source sends pages (`Memory`), ends rounds (`RoundEnd`), and at the switchover
    /// sends `State`.
    Precopy {
        /// How many rounds have ended: the next `RoundEnd` is of round `rounds_ended + 1`.
        rounds_ended: u32,
    },
    /// The source waits for `Loaded`.
    AwaitLoaded,
    /// The destination has loaded the state and waits for `Commit`.
    AwaitCommit,
    /// Committed: the source waits for `Running`.
    AwaitRunning,
    /// The destination runs the guest; the migration is complete.
    Done,
    /// Ended before the commit point by `Refuse`, `Abort` or `Cancelled`: the source runs
    /// the guest, the destination runs nothing.
    Ended,
}

use MessageType as T;
use Side::{Destination as D, Source as S};

/// Aborting (either side) and cancelling (the source), allowed before the commit point.
const STOPS: [(Side, MessageType); 3] = [(S, T::Abort), (S, T::Cancelled), (D, T::Abort)];

impl Phase {
    /// The first phase of both sides.
    pub const START: Phase = Phase::AwaitHello;

    /// The messages allowed in this phase, by sender.
    pub fn allowed(self) -> &'static [(Side, MessageType)] {
        match self {
            Self::AwaitHello => &[(S, T::Hello)],
            Self::AwaitWelcome => &[
                (D, T::Welcome),
                (D, T::Refuse),
                STOPS[0],
                STOPS[1],
                STOPS[2],
            ],
            Self::AwaitPreflight => &[(S, T::Preflight), STOPS[0], STOPS[1], STOPS[2]],
            Self::AwaitReady => &[(D, T::Ready), (D, T::Refuse), STOPS[0], STOPS[1], STOPS[2]],
            Self::Precopy { .. } => &[
                (S, T::Memory),
                (S, T::RoundEnd),
                (S, T::State),
                STOPS[0],
                STOPS[1],
                STOPS[2],
            ],
            Self::AwaitLoaded => &[(D, T::Loaded), STOPS[0], STOPS[1], STOPS[2]],
            Self::AwaitCommit => &[(S, T::Commit), STOPS[0], STOPS[1]],
            Self::AwaitRunning => &[(D, T::Running)],
            Self::Done | Self::Ended => &[],
        }
    }

    /// The phase after `m`, sent by `from`; `Unexpected` naming what this phase allows and
    /// what came, when `m` is out of order.
    pub fn next(self, from: Side, m: &Message) -> Result<Phase, ProtocolError> {
        let kind = m.kind();
        let unexpected = || ProtocolError::Unexpected {
            expected: self.expected(),
            got: format!("{} from {from}", kind.name()),
        };
        if !self.allowed().contains(&(from, kind)) {
            return Err(unexpected());
        }
        Ok(match (self, m) {
            (_, Message::Refuse { .. } | Message::Abort { .. } | Message::Cancelled) => Self::Ended,
            (Self::AwaitHello, _) => Self::AwaitWelcome,
            (Self::AwaitWelcome, _) => Self::AwaitPreflight,
            (Self::AwaitPreflight, _) => Self::AwaitReady,
            (Self::AwaitReady, _) => Self::Precopy { rounds_ended: 0 },
            (Self::Precopy { rounds_ended }, Message::RoundEnd { round }) => {
                let next = rounds_ended.checked_add(1).filter(|n| n == round);
                match next {
                    Some(n) => Self::Precopy { rounds_ended: n },
                    None => {
                        return Err(ProtocolError::Unexpected {
                            expected: format!(
                                "{} (the next round to end is round {})",
                                self.expected(),
                                u64::from(rounds_ended) + 1
                            ),
                            got: format!("RoundEnd of round {round} from {from}"),
                        });
                    }
                }
            }
            (Self::Precopy { .. }, Message::State { .. }) => Self::AwaitLoaded,
            (Self::Precopy { .. }, _) => self,
            (Self::AwaitLoaded, _) => Self::AwaitCommit,
            (Self::AwaitCommit, _) => Self::AwaitRunning,
            (Self::AwaitRunning, _) => Self::Done,
            // Nothing is allowed there, so this is not reached; refused all the same.
            (Self::Done | Self::Ended, _) => return Err(unexpected()),
        })
    }

    /// What this phase allows, in words: "waiting for Welcome or Refuse from the destination,
    /// or Abort or Cancelled from the source".
    pub fn expected(self) -> String {
        let names = |side: Side| -> Vec<&'static str> {
            self.allowed()
                .iter()
                .filter(|(s, _)| *s == side)
                .map(|(_, t)| t.name())
                .collect()
        };
        let mut parts = Vec::new();
        // The side that drives this phase first.
        let first = match self.allowed().first() {
            Some((side, _)) => *side,
            None => return "the migration is over (no message is expected)".to_string(),
        };
        let second = if first == S { D } else { S };
        for side in [first, second] {
            let n = names(side);
            if !n.is_empty() {
                parts.push(format!("{} from {side}", n.join(" or ")));
            }
        }
        format!("waiting for {}", parts.join(", or "))
    }

    /// Whether the source has committed: from here on, the source never runs the guest again.
    pub fn committed(self) -> bool {
        matches!(self, Self::AwaitRunning | Self::Done)
    }

    /// Whether the conversation is over (completed, or ended before the commit point).
    pub fn is_over(self) -> bool {
        matches!(self, Self::Done | Self::Ended)
    }
}
