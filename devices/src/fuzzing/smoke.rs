//! Running the fuzz-target bodies without libFuzzer, for the unit layer: the seed corpus,
//! then deterministic pseudo-random inputs.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// A small deterministic generator (xorshift64), so an input that fails is found again.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (zero is replaced, as it would stay zero).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The seed corpus of a target, `fuzz/corpus/<target>/*`, sorted by name (empty if absent).
pub fn seed_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// The inputs of a smoke run: the seed corpus, then `count` deterministic pseudo-random
/// inputs, half random bytes and half seeds with a few bytes changed, inserted or cut.
pub fn smoke_inputs(target: &str, count: usize) -> Vec<Vec<u8>> {
    let seeds = seed_corpus(target);
    let mut r = XorShift::new(0x5eed_f022 ^ target.len() as u64);
    let mut out = seeds.clone();
    for i in 0..count {
        let mut v = match seeds.get(r.below(seeds.len() as u64) as usize) {
            Some(seed) if i % 2 == 1 => seed.clone(),
            _ => (0..r.below(300)).map(|_| r.next_u64() as u8).collect(),
        };
        for _ in 0..=r.below(4) {
            let at = r.below(v.len() as u64 + 1) as usize;
            match r.below(6) {
                0 => v.insert(at, r.next_u64() as u8),
                1 => v.truncate(at),
                2 => {
                    // An interesting value: all ones, or a small number.
                    let b = if r.below(2) == 0 {
                        0xff
                    } else {
                        r.below(4) as u8
                    };
                    if let Some(x) = v.get_mut(at) {
                        *x = b;
                    }
                }
                _ => {
                    if let Some(x) = v.get_mut(at) {
                        *x ^= 1 << r.below(8);
                    }
                }
            }
        }
        out.push(v);
    }
    out
}

/// How long one smoke input may run before it counts as a hang (libFuzzer's `-timeout`, as
/// `cargo xtask fuzz` passes it). A hang guard, not a measurement: inputs take microseconds.
const HANG: Duration = Duration::from_secs(10);

/// Runs `target_fn` on every smoke input of `target`, on a worker thread; fails naming the
/// input if one panics or does not return within [`HANG`] (the worker is then left behind).
pub fn smoke(target: &str, count: usize, target_fn: fn(&[u8])) {
    smoke_within(target, count, target_fn, HANG);
}

#[allow(
    clippy::panic,
    reason = "test support: a failed smoke run fails the calling test"
)]
fn smoke_within(target: &str, count: usize, target_fn: fn(&[u8]), hang: Duration) {
    let inputs = smoke_inputs(target, count);
    let (tx, rx) = mpsc::channel();
    let work = inputs.clone();
    std::thread::spawn(move || {
        for input in &work {
            let slice: &[u8] = input;
            let outcome = std::panic::catch_unwind(|| target_fn(slice));
            if tx.send(outcome).is_err() {
                return;
            }
        }
    });
    for (i, input) in inputs.iter().enumerate() {
        let hex = || input.iter().map(|b| format!("{b:02x}")).collect::<String>();
        match rx.recv_timeout(hang) {
            Ok(Ok(())) => {}
            Ok(Err(payload)) => {
                // The panic itself was printed above by the panic hook.
                eprintln!(
                    "{target}: smoke input {i} panicked; its bytes in hex: {}",
                    hex()
                );
                std::panic::resume_unwind(payload);
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "{target}: smoke input {i} did not return in {hang:?} (a hang); its bytes in hex: {}",
                hex()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{target}: the worker stopped at smoke input {i}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hangs_on_an_odd_first_byte(data: &[u8]) {
        while data.first().is_some_and(|b| b % 2 == 1) {
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    #[test]
    #[should_panic(expected = "did not return")]
    fn a_hanging_input_fails_the_smoke_run() {
        // No seeds for this name; some of the pseudo-random inputs start with an odd byte.
        smoke_within(
            "no-such-target",
            50,
            hangs_on_an_odd_first_byte,
            Duration::from_millis(200),
        );
    }

    #[test]
    fn inputs_that_return_pass() {
        smoke_within("no-such-target", 50, |_| {}, HANG);
    }
}
