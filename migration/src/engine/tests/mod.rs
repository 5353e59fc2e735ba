//! The engine against fakes: convergence, auto-converge, the cap, zero pages, contents, and
//! cleanup on every failure. Assertions are on bytes, pages, rounds and the fake clock's
//! simulated time, never on wall-clock time.

mod failures;
pub mod fakes;

use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fakes::{FakeClock, FakeGuest, FakeSourceError, FakeThrottle, FakeTransport, PAGE, Shared};

use super::precopy::{THROTTLE_MAX, rate, transfer_time};
use super::{
    Completion, EngineError, MigrationState, Params, Progress, Switchover, finish, precopy,
};

const MIB: u64 = 1024 * 1024;

type Outcome<T> = Result<T, EngineError<FakeSourceError>>;

/// A source guest, a link to a destination, and what the engine reported.
pub struct Rig {
    pub w: Shared,
    pub guest: FakeGuest,
    pub transport: FakeTransport,
    pub clock: FakeClock,
    pub throttle: FakeThrottle,
    pub cancel: Rc<AtomicBool>,
    pub reports: Vec<Progress>,
}

impl Rig {
    /// `pages` pages, one in `nonzero_every` non-zero, the guest writing `rate` pages per
    /// second, a link of `link` bytes per second.
    pub fn new(pages: u64, nonzero_every: u64, rate: f64, link: u64) -> Self {
        let w = Shared::default();
        Self {
            guest: FakeGuest::new(&w, pages, nonzero_every, rate),
            transport: FakeTransport::new(&w, pages, link),
            clock: FakeClock(Rc::clone(&w)),
            throttle: FakeThrottle(Rc::clone(&w)),
            cancel: Rc::new(AtomicBool::new(false)),
            reports: Vec::new(),
            w,
        }
    }

    pub fn precopy(&mut self, params: &Params) -> Outcome<Switchover> {
        let reports = &mut self.reports;
        precopy(
            params,
            &mut self.guest,
            &mut self.transport,
            &self.clock,
            &mut self.throttle,
            &self.cancel,
            &mut |p: &Progress| reports.push(p.clone()),
        )
    }

    pub fn finish(&mut self, switchover: Switchover) -> Outcome<Completion> {
        let reports = &mut self.reports;
        finish(
            switchover,
            &mut self.guest,
            &mut self.transport,
            &self.clock,
            &mut self.throttle,
            &self.cancel,
            &mut |p: &Progress| reports.push(p.clone()),
        )
    }

    /// Precopy, the pause, the final round: what the VMM does before sending device state.
    pub fn migrate(&mut self, params: &Params) -> Outcome<Completion> {
        let switchover = self.precopy(params)?;
        self.guest.pause();
        self.finish(switchover)
    }

    /// The cleanup invariant: tracking was stopped and is off, the throttle is lifted.
    pub fn assert_clean(&self, what: &str) {
        let s = self.guest.s.borrow();
        assert!(s.stop_calls >= 1, "{what}: stop_tracking was never called");
        assert!(
            !s.tracking || matches!(s.fail, Some((fakes::SourceOp::Stop, _))),
            "{what}: dirty tracking is still on"
        );
        assert_eq!(self.w.throttle.get(), 0, "{what}: throttle not lifted");
        let last = self.reports.last().expect("at least one report");
        assert_eq!(
            last.throttle_percent, 0,
            "{what}: the last report shows a throttle"
        );
    }

    pub fn last_state(&self) -> MigrationState {
        self.reports.last().expect("at least one report").state
    }

    /// Every page on the destination equals the source's.
    pub fn assert_destination_matches(&self) {
        let s = self.guest.s.borrow();
        for (i, (page, dest)) in s.mem.chunks(PAGE).zip(&self.transport.dest).enumerate() {
            let dest = dest
                .as_ref()
                .unwrap_or_else(|| panic!("page {i} never arrived"));
            assert!(
                dest.as_slice() == page,
                "page {i} differs on the destination"
            );
        }
    }
}

fn params() -> Params {
    Params {
        batch_pages: 64,
        ..Params::default()
    }
}

#[test]
fn idle_guest_converges_after_the_first_round() {
    let mut rig = Rig::new(2048, 4, 0.0, 100 * MIB);
    let done = rig.migrate(&params()).expect("an idle guest migrates");
    let rounds: Vec<_> = rig
        .transport
        .ops
        .iter()
        .filter(|op| matches!(op, fakes::TransportOp::EndRound(_)))
        .collect();
    assert_eq!(rounds.len(), 2, "round 1 and the final round: {rounds:?}");
    assert_eq!(done.final_pages, 0);
    assert_eq!(
        rig.transport.zero_records + rig.transport.byte_records,
        2048,
        "each page once"
    );
    assert!(
        rig.w.throttle_log.borrow().iter().all(|&t| t == 0),
        "never throttled"
    );
    assert_eq!(done.progress.round, 2);
    rig.assert_destination_matches();
    rig.assert_clean("after finish");
}

#[test]
fn a_guest_dirtying_slower_than_the_link_converges_without_throttle() {
    // 16 MiB guest, link 64 MiB/s = 16384 pages/s, guest writes 4000 pages/s.
    let mut rig = Rig::new(4096, 1, 4000.0, 64 * MIB);
    let p = Params {
        downtime: Duration::from_millis(20),
        ..params()
    };
    let switchover = rig.precopy(&p).expect("converges");
    let progress = switchover.progress().clone();
    assert!(
        progress.round >= 2,
        "a dirtying guest needs dirty rounds: {}",
        progress.round
    );
    let expected = progress.expected_downtime.expect("an estimate");
    assert!(expected <= p.downtime, "{expected:?}");
    // The estimate is what the rule says: remaining at the round's bandwidth.
    let bw = progress.round_bandwidth.expect("a measured round");
    assert_eq!(expected, transfer_time(progress.bytes_remaining, bw));
    assert_eq!(progress.state, MigrationState::Switchover);
    rig.guest.pause();
    rig.finish(switchover).expect("final round");
    assert!(
        rig.w.throttle_log.borrow().iter().all(|&t| t == 0),
        "never throttled"
    );
    rig.assert_destination_matches();
    rig.assert_clean("after finish");
}

#[test]
fn a_guest_dirtying_faster_than_the_link_times_out_without_auto_converge() {
    // Link 4 MiB/s = 1024 pages/s, guest writes 2048 pages/s over all of its 4 MiB.
    let mut rig = Rig::new(1024, 1, 2048.0, 4 * MIB);
    let p = Params {
        auto_converge: false,
        timeout: Duration::from_secs(20),
        downtime: Duration::from_millis(50),
        ..params()
    };
    let error = rig.precopy(&p).expect_err("cannot converge");
    match error {
        EngineError::Timeout { timeout, round, .. } => {
            assert_eq!(timeout, p.timeout);
            assert!(round > 3, "it kept trying for rounds: {round}");
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(rig.clock.0.now.get() >= p.timeout);
    assert!(
        rig.w.throttle_log.borrow().iter().all(|&t| t == 0),
        "never throttled"
    );
    assert_eq!(rig.last_state(), MigrationState::Failed);
    rig.assert_clean("after the timeout");
}

#[test]
fn auto_converge_steps_the_throttle_from_20_by_10_and_converges() {
    // Link 1024 pages/s, guest 2048 pages/s unthrottled: only a throttle over 50 % lets the
    // link keep up, so the steps must go 20, 30, 40, 50, 60.
    let mut rig = Rig::new(1024, 1, 2048.0, 4 * MIB);
    let p = Params {
        downtime: Duration::from_millis(50),
        timeout: Duration::from_secs(600),
        ..params()
    };
    let switchover = rig.precopy(&p).expect("converges through auto-converge");
    let log = rig.w.throttle_log.borrow().clone();
    assert!(log.len() >= 5, "{log:?}");
    let expected: Vec<u8> = (0..log.len() as u8)
        .map(|i| (20 + 10 * i).min(THROTTLE_MAX))
        .collect();
    assert_eq!(log, expected, "steps of 10 from 20");
    assert!(*log.last().expect("a step") > 50, "{log:?}");
    let reported: Vec<u8> = rig.reports.iter().map(|r| r.throttle_percent).collect();
    for step in &log {
        assert!(
            reported.contains(step),
            "throttle {step} was never reported"
        );
    }
    assert_eq!(
        switchover.progress().throttle_percent,
        *log.last().expect("a step")
    );
    // The dirty rounds ran throttled, and the estimate met the target.
    assert!(rig.transport.sends.iter().any(|s| s.throttle >= 60));
    assert!(switchover.progress().expected_downtime.expect("estimate") <= p.downtime);
    rig.guest.pause();
    let done = rig.finish(switchover).expect("final round");
    assert_eq!(done.progress.throttle_percent, 0);
    rig.assert_destination_matches();
    rig.assert_clean("after finish");
}

#[test]
fn the_throttle_stops_at_99() {
    // A guest that outruns the link even at 99 %: 400000 pages/s against 1024.
    let mut rig = Rig::new(256, 1, 400_000.0, 4 * MIB);
    let p = Params {
        downtime: Duration::from_millis(1),
        timeout: Duration::from_secs(30),
        ..params()
    };
    assert!(matches!(rig.precopy(&p), Err(EngineError::Timeout { .. })));
    let log = rig.w.throttle_log.borrow().clone();
    let steps: Vec<u8> = log.iter().copied().filter(|&t| t != 0).collect();
    assert_eq!(steps, vec![20, 30, 40, 50, 60, 70, 80, 90, 99], "{log:?}");
    assert_eq!(log.last(), Some(&0), "lifted at the end");
    rig.assert_clean("after the timeout");
}

#[test]
fn the_bandwidth_cap_holds_within_one_batch() {
    // Link 64 MiB/s, cap 8 MiB/s, a dirtying guest so dirty rounds are paced too.
    let cap = 8 * MIB;
    let mut rig = Rig::new(2048, 1, 1000.0, 64 * MIB);
    let p = Params {
        max_bandwidth: Some(cap),
        batch_pages: 32,
        ..params()
    };
    let switchover = rig.precopy(&p).expect("converges");
    let sends = rig.transport.sends.clone();
    let first = sends.first().expect("sends").at;
    assert!(sends.len() > 64);
    for s in &sends {
        let allowed = u128::from(cap) * (s.at - first).as_nanos() / 1_000_000_000;
        assert!(
            u128::from(s.page_bytes_before) <= allowed,
            "{} bytes sent before {:?}: over the cap ({allowed})",
            s.page_bytes_before,
            s.at - first
        );
    }
    let elapsed = rig.clock.0.now.get() - first;
    let total = rig.transport.page_bytes;
    assert!(rate(total, elapsed).expect("time passed") <= cap);
    assert!(
        rig.w.slept.get() > Duration::ZERO,
        "the cap made the engine wait"
    );
    // Not too slow either: the average is close to the cap.
    assert!(rate(total, elapsed).expect("time passed") >= cap * 9 / 10);
    rig.guest.pause();
    let slept = rig.w.slept.get();
    rig.finish(switchover).expect("final round");
    assert_eq!(rig.w.slept.get(), slept, "the final round is not paced");
    rig.assert_destination_matches();
}

#[test]
fn zero_pages_travel_as_markers() {
    // One page in 8 non-zero, a guest that writes some pages (1 in 5 writes zeros).
    let mut rig = Rig::new(4096, 8, 3000.0, 32 * MIB);
    rig.guest.s.borrow_mut().zero_every = 5;
    let nonzero = rig.guest.nonzero_pages();
    assert_eq!(nonzero, 512);
    let done = rig.migrate(&params()).expect("migrates");
    let writes = rig.guest.s.borrow().writes;
    assert!(writes > 100, "the guest dirtied pages: {writes}");
    let bound = (nonzero + writes) * PAGE as u64;
    assert!(
        rig.transport.wire_bytes * 100 <= bound * 102,
        "{} bytes on the wire for {bound} bytes of non-zero and dirtied pages",
        rig.transport.wire_bytes
    );
    assert!(
        rig.transport.zero_records >= 4096 - 512,
        "zero pages went as markers"
    );
    assert_eq!(done.progress.zero_pages_sent, rig.transport.zero_records);
    assert_eq!(done.progress.bytes_sent, rig.transport.page_bytes);
    assert_eq!(
        rig.transport.page_bytes,
        rig.transport.byte_records * PAGE as u64
    );
    rig.assert_destination_matches();
}

#[test]
fn every_page_arrives_with_its_last_contents() {
    // Writes interleave with sending (the guest runs as the fake link moves the clock), some
    // of them zeros, over a working set in the middle of memory; the final round runs after
    // the pause.
    let mut rig = Rig::new(3000, 3, 5000.0, 48 * MIB);
    {
        let mut s = rig.guest.s.borrow_mut();
        s.zero_every = 7;
        s.working_set = (1000, 1500);
    }
    let p = Params {
        downtime: Duration::from_millis(5),
        batch_pages: 50,
        ..params()
    };
    let done = rig.migrate(&p).expect("migrates");
    assert!(
        done.progress.round >= 3,
        "dirty rounds ran: {}",
        done.progress.round
    );
    assert!(done.final_pages > 0, "pages were dirty at the pause");
    assert!(
        rig.transport.sends.iter().any(|s| s.paused),
        "a final round after the pause"
    );
    rig.assert_destination_matches();
    rig.assert_clean("after finish");
}

#[test]
fn progress_goes_setup_precopy_switchover_with_bytes_and_rounds() {
    let mut rig = Rig::new(512, 2, 1000.0, 16 * MIB);
    let done = rig.migrate(&params()).expect("migrates");
    let states: Vec<MigrationState> = rig.reports.iter().map(|r| r.state).collect();
    let mut seen = states.clone();
    seen.dedup();
    assert_eq!(
        seen,
        vec![
            MigrationState::Setup,
            MigrationState::Precopy,
            MigrationState::Switchover
        ]
    );
    let bytes: Vec<u64> = rig.reports.iter().map(|r| r.bytes_sent).collect();
    assert!(
        bytes.windows(2).all(|w| w[0] <= w[1]),
        "bytes sent never go down"
    );
    assert!(
        rig.reports
            .iter()
            .any(|r| r.round_bandwidth.is_some() && r.dirty_rate.is_some())
    );
    assert!(rig.reports.iter().any(|r| r.bytes_remaining > 0));
    assert_eq!(done.progress.bytes_sent, rig.transport.page_bytes);
    assert_eq!(done.progress.bytes_remaining, 0);
    assert_eq!(
        done.progress.pages_sent,
        rig.transport.zero_records + rig.transport.byte_records
    );
}

#[test]
fn rate_and_transfer_time_round_trip() {
    assert_eq!(rate(1000, Duration::ZERO), None);
    assert_eq!(rate(1000, Duration::from_millis(500)), Some(2000));
    assert_eq!(transfer_time(2000, 1000), Duration::from_secs(2));
    assert_eq!(
        transfer_time(1, 3),
        Duration::from_nanos(333_333_334),
        "rounded up"
    );
    assert_eq!(
        rate(u64::MAX, Duration::from_nanos(1)),
        Some(u64::MAX),
        "saturates"
    );
}
