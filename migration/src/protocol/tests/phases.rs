//! The phase machine and version negotiation.

use super::*;
use Side::{Destination as D, Source as S};

/// A whole migration as both sides see it: who sends what.
fn happy_path() -> Vec<(Side, Message)> {
    let all = one_of_each();
    let take = |name: &str| {
        all.iter()
            .find(|m| m.name() == name)
            .expect("in one_of_each")
            .clone()
    };
    vec![
        (S, take("Hello")),
        (D, take("Welcome")),
        (S, take("Preflight")),
        (D, Message::Ready),
        (S, take("Memory")),
        (S, take("Memory")),
        (S, Message::RoundEnd { round: 1 }),
        (S, take("Memory")),
        (S, Message::RoundEnd { round: 2 }),
        (S, take("Memory")),
        (S, take("State")),
        (D, Message::Loaded),
        (S, Message::Commit),
        (D, Message::Running),
    ]
}

fn run(steps: &[(Side, Message)]) -> Result<Phase, ProtocolError> {
    steps
        .iter()
        .try_fold(Phase::START, |p, (side, m)| p.next(*side, m))
}

#[test]
fn a_whole_migration_goes_through_every_phase() {
    let mut p = Phase::START;
    let mut seen = vec![p];
    for (side, m) in happy_path() {
        assert!(!p.committed() || m.kind() == MessageType::Running);
        p = p.next(side, &m).unwrap();
        seen.push(p);
    }
    use Phase::*;
    seen.dedup();
    assert_eq!(
        seen,
        [
            AwaitHello,
            AwaitWelcome,
            AwaitPreflight,
            AwaitReady,
            Precopy { rounds_ended: 0 },
            Precopy { rounds_ended: 1 },
            Precopy { rounds_ended: 2 },
            AwaitLoaded,
            AwaitCommit,
            AwaitRunning,
            Done,
        ]
    );
    assert!(p.is_over() && p.committed());
    assert!(AwaitRunning.committed() && !AwaitCommit.committed());
}

#[test]
fn out_of_order_messages_are_refused() {
    let path = happy_path();
    // At every point of the migration, every message of every type from either side that the
    // phase does not allow is refused, naming the phase's expectations and what came.
    let mut p = Phase::START;
    for (side, m) in &path {
        for other in one_of_each() {
            for from in [S, D] {
                let allowed = p.allowed().contains(&(from, other.kind()));
                match p.next(from, &other) {
                    Ok(_) => assert!(allowed, "{p:?}: {} from {from}", other.name()),
                    Err(ProtocolError::Unexpected { expected, got }) => {
                        // A RoundEnd of the wrong number is refused though its type is allowed.
                        assert!(!allowed || other.kind() == MessageType::RoundEnd);
                        assert!(got.starts_with(other.name()), "{got}");
                        assert!(expected.starts_with("waiting for "), "{expected}");
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        p = p.next(*side, m).unwrap();
    }
    assert_eq!(p, Phase::Done);
}

#[test]
fn refusals_name_what_was_expected_and_what_came() {
    let cases: Vec<(usize, Side, Message, &str)> = vec![
        (
            0,
            S,
            Message::Memory { pages: vec![] },
            "unexpected Memory from the source while waiting for Hello from the source",
        ),
        (
            1,
            S,
            Message::Preflight {
                sections: SectionSet::new(),
            },
            "unexpected Preflight from the source while waiting for Welcome or Refuse or Abort from the destination, or Abort or Cancelled from the source",
        ),
        (
            3,
            S,
            Message::Memory { pages: vec![] },
            "unexpected Memory from the source while waiting for Ready or Refuse or Abort from the destination, or Abort or Cancelled from the source",
        ),
        (
            4,
            D,
            Message::Memory { pages: vec![] },
            "unexpected Memory from the destination while waiting for Memory or RoundEnd or State or Abort or Cancelled from the source, or Abort from the destination",
        ),
        (
            4,
            S,
            Message::Commit,
            "unexpected Commit from the source while waiting for Memory or RoundEnd or State or Abort or Cancelled from the source, or Abort from the destination",
        ),
        (
            // After Loaded, the destination no longer aborts.
            12,
            D,
            Message::Abort {
                reason: "late".to_string(),
            },
            "unexpected Abort from the destination while waiting for Commit or Abort or Cancelled from the source",
        ),
        (
            13,
            S,
            Message::Abort {
                reason: "too late".to_string(),
            },
            "unexpected Abort from the source while waiting for Running from the destination",
        ),
        (
            14,
            D,
            Message::Running,
            "unexpected Running from the destination while the migration is over (no message is expected)",
        ),
        (
            7,
            S,
            Message::RoundEnd { round: 5 },
            "unexpected RoundEnd of round 5 from the source while waiting for Memory or RoundEnd or State or Abort or Cancelled from the source, or Abort from the destination (the next round to end is round 2)",
        ),
    ];
    let path = happy_path();
    for (after, side, m, want) in cases {
        let p = run(&path[..after]).unwrap();
        let e = p.next(side, &m).unwrap_err();
        assert_eq!(e.to_string(), want, "after {after} steps");
    }
}

#[test]
fn refuse_abort_and_cancel_end_it_before_the_commit_point_only() {
    let path = happy_path();
    let stops = [
        (
            D,
            Message::Refuse {
                reason: "no".to_string(),
            },
        ),
        (
            S,
            Message::Abort {
                reason: "x".to_string(),
            },
        ),
        (
            D,
            Message::Abort {
                reason: "x".to_string(),
            },
        ),
        (S, Message::Cancelled),
    ];
    let mut ended = 0;
    for steps in 0..=path.len() {
        let p = run(&path[..steps]).unwrap();
        for (side, m) in &stops {
            if let Ok(next) = p.next(*side, m) {
                assert_eq!(next, Phase::Ended);
                assert!(!next.committed() && next.is_over());
                assert!(!p.committed(), "{} from {side} after Commit", m.name());
                ended += 1;
                // Nothing more is accepted.
                assert!(next.next(S, &Message::Commit).is_err());
                assert!(next.next(D, &Message::Running).is_err());
            }
        }
    }
    // Refuse after Hello and Preflight (2); the source's Abort and Cancelled at each step from
    // AwaitWelcome to AwaitCommit (3 handshake phases, Precopy at each of its 7 steps, then
    // AwaitLoaded and AwaitCommit); the destination's Abort at the same steps but AwaitCommit.
    let source_stops = 2 * (3 + 7 + 2);
    let destination_aborts = 3 + 7 + 1;
    assert_eq!(ended, 2 + source_stops + destination_aborts);
}

#[test]
fn versions_are_negotiated_to_the_highest_in_common() {
    let r = |min, max| VersionRange { min, max };
    assert_eq!(negotiate(r(1, 1), r(1, 1)), Ok(1));
    assert_eq!(negotiate(r(1, 2), r(1, 3)), Ok(2), "a newer source");
    assert_eq!(negotiate(r(1, 3), r(1, 2)), Ok(2), "an older source");
    assert_eq!(negotiate(r(2, 4), r(1, 2)), Ok(2), "the only one in common");
    assert_eq!(
        negotiate(r(1, 2), r(3, 4)),
        Err("no protocol version in common: the source speaks protocol versions 3 to 4, this destination protocol versions 1 to 2".to_string())
    );
    assert_eq!(
        negotiate(r(2, 2), r(1, 1)),
        Err("no protocol version in common: the source speaks protocol version 1, this destination protocol version 2".to_string())
    );
    assert_eq!(
        negotiate(r(1, 1), r(3, 2)),
        Err("the source announces protocol versions 3 to 2, which is no valid range".to_string())
    );
    assert!(
        negotiate(r(1, 1), r(0, 1)).is_err(),
        "version 0 never existed"
    );
}

#[test]
fn the_destination_answers_hello() {
    let ours = SUPPORTED_VERSIONS;
    assert_eq!((ours.min, ours.max), (1, 1));
    let h = hello("vmm 0.1.0");
    assert_eq!(h, small_of_each()[0]);
    assert_eq!(
        answer_hello(&h, ours).unwrap(),
        Message::Welcome {
            protocol_version: 1
        }
    );
    let future = Message::Hello {
        protocol_version: 7,
        min_protocol_version: 5,
        vmm_version: "vmm 9.0".to_string(),
        arch: crate::snapshot::ARCH_AARCH64,
    };
    assert_eq!(
        answer_hello(&future, ours).unwrap(),
        Message::Refuse {
            reason: "no protocol version in common: the source speaks protocol versions 5 to 7, this destination protocol version 1 (source vmm 9.0)".to_string()
        }
    );
    let x86 = Message::Hello {
        protocol_version: 1,
        min_protocol_version: 1,
        vmm_version: "other".to_string(),
        arch: 0x8664,
    };
    assert_eq!(
        answer_hello(&x86, ours).unwrap(),
        Message::Refuse {
            reason: "the source (other) runs a guest of architecture 0x8664; this destination runs aarch64 guests (0xaa64)".to_string()
        }
    );
    assert_eq!(
        answer_hello(&Message::Commit, ours)
            .unwrap_err()
            .to_string(),
        "unexpected Commit as the first message while waiting for Hello from the source"
    );
}

#[test]
fn the_source_checks_the_chosen_version() {
    assert_eq!(accept_welcome(1, SUPPORTED_VERSIONS).unwrap(), 1);
    let r = VersionRange { min: 2, max: 3 };
    assert_eq!(accept_welcome(3, r).unwrap(), 3);
    assert_eq!(
        accept_welcome(4, r).unwrap_err().to_string(),
        "the destination chose protocol version 4, which this source does not speak (it speaks protocol versions 2 to 3)"
    );
    assert!(accept_welcome(1, r).is_err());
}
