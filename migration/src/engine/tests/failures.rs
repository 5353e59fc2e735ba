//! Every way an attempt can end early, at every phase: each comes back as its error, with
//! dirty tracking stopped and the throttle lifted (the cleanup invariant).

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fakes::{SourceOp, TransportOp};
use super::{MIB, Rig};
use crate::engine::{EngineError, MigrationState, Params, ParamsError, TransportError};

/// A guest that outruns its 1 MiB/s link until auto-converge throttles it, so every phase
/// runs: round 1, dirty rounds (throttled), the final round after the pause.
fn scenario() -> (Rig, Params) {
    let rig = Rig::new(256, 2, 600.0, MIB);
    let params = Params {
        downtime: Duration::from_millis(40),
        timeout: Duration::from_secs(600),
        batch_pages: 4,
        ..Params::default()
    };
    (rig, params)
}

/// The phases of the scenario's transport calls: the end of round 1 and the pause, as
/// 1-based call numbers (calls up to `round1` are round 1's, after `paused` the final round's).
struct Phases {
    round1: usize,
    paused: usize,
    total: usize,
    last_send: usize,
    wire_bytes: u64,
    calls: Vec<(SourceOp, usize)>,
}

fn baseline() -> Phases {
    let (mut rig, params) = scenario();
    let switchover = rig.precopy(&params).expect("the scenario converges");
    let paused = rig.transport.ops.len();
    rig.guest.pause();
    rig.finish(switchover).expect("the scenario completes");
    rig.assert_destination_matches();
    let ops = &rig.transport.ops;
    let round1 = ops
        .iter()
        .position(|op| *op == TransportOp::EndRound(1))
        .expect("round 1")
        + 1;
    let last_send = ops
        .iter()
        .rposition(|op| *op == TransportOp::Send)
        .expect("sends")
        + 1;
    assert!(round1 > 10, "round 1 has batches");
    assert!(paused > round1 + 10, "dirty rounds have batches");
    assert!(last_send > paused + 1, "the final round has batches");
    assert!(
        rig.transport
            .sends
            .iter()
            .any(|s| !s.paused && s.throttle >= 20),
        "dirty rounds ran throttled"
    );
    let s = rig.guest.s.borrow();
    let calls = [
        SourceOp::Start,
        SourceOp::TakeDirty,
        SourceOp::IsZero,
        SourceOp::Read,
    ]
    .into_iter()
    .map(|op| (op, s.calls[op as usize] as usize))
    .collect();
    Phases {
        round1,
        paused,
        total: ops.len(),
        last_send,
        wire_bytes: rig.transport.wire_bytes,
        calls,
    }
}

#[test]
fn a_transport_failure_at_each_call_ends_the_attempt_with_cleanup() {
    let phases = baseline();
    let mut hit = [0; 3];
    for n in 1..=phases.total {
        let (mut rig, params) = scenario();
        rig.transport.fail_at_call = Some(n);
        let what = format!("transport call {n} of {} failing", phases.total);
        match rig.migrate(&params) {
            Err(EngineError::Transport(TransportError::Closed)) => {}
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(
            rig.transport.ops.len(),
            n,
            "{what}: nothing is sent after the failure"
        );
        let phase = if n <= phases.round1 {
            0
        } else if n <= phases.paused {
            1
        } else {
            2
        };
        hit[phase] += 1;
        assert_eq!(
            rig.w.paused.get(),
            phase == 2,
            "{what}: failed in the wrong phase"
        );
        assert_eq!(rig.last_state(), MigrationState::Failed, "{what}");
        rig.assert_clean(&what);
    }
    assert!(
        hit.iter().all(|&h| h > 2),
        "round 1, dirty rounds, final round: {hit:?}"
    );
}

#[test]
fn a_transport_failure_at_each_twentieth_of_the_bytes_ends_the_attempt_with_cleanup() {
    let phases = baseline();
    let offsets = (0..20)
        .map(|k| phases.wire_bytes * k / 20)
        .chain([phases.wire_bytes - 1]);
    for byte in offsets {
        let (mut rig, params) = scenario();
        rig.transport.fail_at_byte = Some(byte);
        let what = format!("the wire failing at byte {byte} of {}", phases.wire_bytes);
        match rig.migrate(&params) {
            Err(EngineError::Transport(TransportError::Io(e))) => {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(rig.transport.wire_bytes <= byte, "{what}");
        rig.assert_clean(&what);
    }
}

#[test]
fn cancel_during_each_call_ends_the_attempt_with_cleanup() {
    let phases = baseline();
    for n in 1..=phases.total {
        let (mut rig, params) = scenario();
        rig.transport.cancel_at_call = Some((n, Rc::clone(&rig.cancel)));
        let what = format!("cancel during transport call {n} of {}", phases.total);
        let result = rig.migrate(&params);
        if n < phases.last_send {
            // Checked before the next batch or at the end of the round.
            assert!(
                matches!(result, Err(EngineError::Cancelled)),
                "{what}: {result:?}"
            );
            assert_eq!(rig.last_state(), MigrationState::Cancelled, "{what}");
            assert!(rig.transport.ops.len() <= n + 1, "{what}: kept sending");
        } else {
            // Every page has gone: there is no batch left to stop; the caller sees the flag
            // before it commits.
            assert!(result.is_ok(), "{what}: {result:?}");
        }
        rig.assert_clean(&what);
    }
}

#[test]
fn cancel_before_the_start_touches_nothing() {
    let (mut rig, params) = scenario();
    rig.cancel.store(true, Ordering::Release);
    assert!(matches!(rig.precopy(&params), Err(EngineError::Cancelled)));
    assert_eq!(
        rig.guest.s.borrow().start_calls,
        0,
        "tracking never started"
    );
    assert!(rig.transport.ops.is_empty());
    rig.assert_clean("cancelled before the start");
}

#[test]
fn a_guest_memory_failure_at_each_phase_ends_the_attempt_with_cleanup() {
    let phases = baseline();
    for &(op, count) in &phases.calls {
        assert!(count >= 1, "{op:?} was called");
        let mut picks = vec![1, 2, count / 2, count.saturating_sub(1), count];
        picks.retain(|&n| n >= 1 && n <= count);
        picks.dedup();
        for n in picks {
            let (mut rig, params) = scenario();
            rig.guest.s.borrow_mut().fail = Some((op, n as u32));
            let what = format!("{op:?} call {n} of {count} failing");
            match rig.migrate(&params) {
                Err(EngineError::Source(e)) => assert_eq!(e.0, op, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(rig.last_state(), MigrationState::Failed, "{what}");
            rig.assert_clean(&what);
        }
    }
}

#[test]
fn a_failure_to_stop_tracking_is_reported_with_its_cause() {
    let (mut rig, params) = scenario();
    rig.transport.fail_at_call = Some(5);
    rig.guest.s.borrow_mut().fail = Some((SourceOp::Stop, 1));
    match rig.migrate(&params) {
        Err(EngineError::StopTracking { cause, stop }) => {
            assert!(matches!(
                *cause,
                EngineError::Transport(TransportError::Closed)
            ));
            assert_eq!(stop.0, SourceOp::Stop);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rig.w.throttle.get(),
        0,
        "the throttle is lifted all the same"
    );
}

#[test]
fn a_failure_to_stop_tracking_after_the_final_round_is_an_error_with_cleanup() {
    let (mut rig, params) = scenario();
    rig.guest.s.borrow_mut().fail = Some((SourceOp::Stop, 1));
    match rig.migrate(&params) {
        Err(EngineError::Source(e)) => assert_eq!(e.0, SourceOp::Stop),
        other => panic!("{other:?}"),
    }
    let s = rig.guest.s.borrow();
    assert_eq!(s.stop_calls, 2, "tried again on the way out");
    assert!(!s.tracking, "the second try turned it off");
    assert_eq!(rig.w.throttle.get(), 0);
}

#[test]
fn a_dirty_log_of_the_wrong_size_is_refused_with_cleanup() {
    for pages in [255, 257, 0] {
        let (mut rig, params) = scenario();
        rig.guest.s.borrow_mut().bitmap_pages = Some(pages);
        match rig.migrate(&params) {
            Err(EngineError::BitmapSize { expected: 256, got }) => assert_eq!(got, pages),
            other => panic!("{pages}: {other:?}"),
        }
        assert!(rig.transport.ops.is_empty(), "refused before round 1");
        rig.assert_clean("wrong bitmap");
    }
}

#[test]
fn bad_parameters_are_refused_before_anything_starts() {
    let cases = [
        (
            Params {
                downtime: Duration::ZERO,
                ..Params::default()
            },
            ParamsError::ZeroDowntime,
        ),
        (
            Params {
                timeout: Duration::ZERO,
                ..Params::default()
            },
            ParamsError::ZeroTimeout,
        ),
        (
            Params {
                max_bandwidth: Some(0),
                ..Params::default()
            },
            ParamsError::ZeroBandwidth,
        ),
        (
            Params {
                batch_pages: 0,
                ..Params::default()
            },
            ParamsError::BatchPages(0),
        ),
        (
            Params {
                batch_pages: 4097,
                ..Params::default()
            },
            ParamsError::BatchPages(4097),
        ),
    ];
    for (params, expected) in cases {
        let (mut rig, _) = scenario();
        match rig.precopy(&params) {
            Err(EngineError::Params(e)) => assert_eq!(e, expected),
            other => panic!("{expected}: {other:?}"),
        }
        assert_eq!(
            rig.guest.s.borrow().start_calls,
            0,
            "{expected}: tracking never started"
        );
        assert!(rig.transport.ops.is_empty());
        assert_eq!(rig.last_state(), MigrationState::Failed);
    }
    let big = Params {
        batch_pages: 4096,
        ..Params::default()
    };
    assert_eq!(
        big.check(64 * 1024),
        Err(ParamsError::BatchTooLarge {
            pages: 4096,
            page_size: 64 * 1024
        })
    );
    assert_eq!(Params::default().check(0), Err(ParamsError::PageSize(0)));
    assert_eq!(Params::default().check(4096), Ok(()));
}

#[test]
fn a_timeout_in_the_first_round_ends_the_attempt_with_cleanup() {
    // 128 KiB of non-zero pages over 64 KiB/s take 2 s; the timeout is 1 s.
    let mut rig = Rig::new(64, 2, 0.0, 64 * 1024);
    let params = Params {
        timeout: Duration::from_secs(1),
        batch_pages: 4,
        ..Params::default()
    };
    match rig.precopy(&params) {
        Err(EngineError::Timeout {
            round: 1,
            remaining,
            ..
        }) => assert!(remaining > 0),
        other => panic!("{other:?}"),
    }
    assert!(
        !rig.transport.ops.contains(&TransportOp::EndRound(1)),
        "stopped between batches, not at the end of the round"
    );
    rig.assert_clean("timeout in round 1");
}

#[test]
fn abort_after_switchover_stops_tracking_and_lifts_the_throttle() {
    let (mut rig, params) = scenario();
    let switchover = rig.precopy(&params).expect("converges");
    assert!(
        rig.guest.s.borrow().tracking,
        "still tracking at the switchover"
    );
    assert!(
        rig.w.throttle.get() > 0,
        "still throttled at the switchover"
    );
    assert!(switchover.pending_pages() > 0 || switchover.progress().bytes_remaining == 0);
    let progress = switchover
        .abort(&mut rig.guest, &mut rig.throttle)
        .expect("tracking turns off");
    assert_eq!(progress.state, MigrationState::Failed);
    assert_eq!(progress.throttle_percent, 0);
    assert!(!rig.guest.s.borrow().tracking);
    assert_eq!(rig.w.throttle.get(), 0);
}
