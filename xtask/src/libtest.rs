//! Counting test results from libtest's output, binary by binary.
//!
//! A binary is delimited either by xtask's own markers (`XT_BINARY_START NAME`, then
//! `XT_BINARY_END NAME STATUS`), printed around each binary the emulated layer runs, or by
//! cargo's lines in `cargo test` output (`Running ...` and `Doc-tests ...` open one;
//! `error: test failed, to rerun pass ...` says that the one open exited non-zero).
//!
//! Every binary counts: its `test result` line gives passes and failures, and a binary that
//! exited non-zero with no failing test to show for it (it crashed, was killed at its time
//! limit, or failed after printing `test result: ok`) is one more failure, as is a binary that
//! printed no `test result` line at all, or one that was expected and never ran. A layer in
//! which no test passed and none failed gets one failure: zero tests is not a pass.

/// Pass and fail counts of one layer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u32,
    pub failed: u32,
}

impl Tally {
    /// Counts one check.
    pub fn check(&mut self, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// Whether the layer passed: something passed and nothing failed.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }
}

/// How the end of an open binary becomes known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimiter {
    /// `XT_BINARY_END` carries its exit status; a binary without one never finished.
    Marker,
    /// cargo opens the next binary, or says this one failed; without either, it ended with
    /// the run.
    Cargo,
}

#[derive(Debug)]
struct Binary {
    name: String,
    delimiter: Delimiter,
    /// `test result` lines seen.
    results: u32,
    /// Failures those lines counted.
    failures: u32,
}

/// Reads libtest's output and counts. Ignored tests count as failures: a skip is never a pass.
#[derive(Debug, Default)]
pub struct LibtestCounter {
    tally: Tally,
    open: Option<Binary>,
    /// Binaries that must appear; those that never do count as failures.
    expected: Vec<String>,
    seen: Vec<String>,
    /// Why each binary-level failure was counted, for the report.
    notes: Vec<String>,
}

impl LibtestCounter {
    /// A counter that also fails every binary in `names` that never starts.
    pub fn expecting(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            expected: names.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Feeds one output line.
    pub fn line(&mut self, l: &str) {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("test result: ") {
            self.result(rest);
        } else if let Some(name) = l.strip_prefix("XT_BINARY_START ") {
            self.start(name.trim(), Delimiter::Marker);
        } else if let Some(rest) = l.strip_prefix("XT_BINARY_END ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or("?").to_string();
            let status = words.next();
            if self.open.as_ref().is_none_or(|b| b.name != name) {
                self.start(&name, Delimiter::Marker);
            }
            self.end(&match status.map(|s| (s, s.parse::<i32>())) {
                Some((_, Ok(0))) => Ok(()),
                Some((_, Ok(rc))) => Err(format!("exited with status {rc}")),
                // xtask's own word for how it ended, such as "killed" at its time limit.
                Some((word, Err(_))) => Err(format!("was {word}")),
                None => Err("reported no exit status".to_string()),
            });
        } else if let Some(what) = cargo_binary(t) {
            self.start(what, Delimiter::Cargo);
        } else if t.starts_with("error: ") && t.contains("failed, to rerun pass") {
            if self.open.is_none() {
                self.start("(unnamed)", Delimiter::Cargo);
            }
            self.end(&Err("exited with a failure status".into()));
        }
    }

    /// Ends the count: judges the binary still open (`complete`: the run ended by itself, not
    /// at a time limit, so cargo would have reported a failure of its last binary), fails each
    /// expected binary that never ran, and fails a count with no test at all.
    pub fn finish(mut self, complete: bool) -> (Tally, Vec<String>) {
        if let Some(b) = &self.open {
            let verdict = match b.delimiter {
                Delimiter::Cargo if complete => Ok(()),
                Delimiter::Cargo => Err("was stopped at the time limit".to_string()),
                Delimiter::Marker => Err("never reported its exit status".to_string()),
            };
            self.end(&verdict);
        }
        for name in std::mem::take(&mut self.expected) {
            if !self.seen.contains(&name) {
                self.tally.failed += 1;
                self.notes.push(format!("{name}: never ran"));
            }
        }
        if self.tally.passed == 0 && self.tally.failed == 0 {
            self.tally.failed += 1;
            self.notes.push("no test ran".into());
        }
        (self.tally, self.notes)
    }

    fn start(&mut self, name: &str, delimiter: Delimiter) {
        if let Some(b) = &self.open {
            let verdict = match b.delimiter {
                Delimiter::Cargo => Ok(()),
                Delimiter::Marker => Err("never reported its exit status".to_string()),
            };
            self.end(&verdict);
        }
        self.seen.push(name.to_string());
        self.open = Some(Binary {
            name: name.to_string(),
            delimiter,
            results: 0,
            failures: 0,
        });
    }

    /// Closes the open binary with its exit verdict.
    fn end(&mut self, exit: &Result<(), String>) {
        let Some(b) = self.open.take() else {
            return;
        };
        let why = match exit {
            _ if b.results == 0 => Some(match exit {
                Ok(()) => "printed no test result".to_string(),
                Err(e) => format!("{e} before printing a test result"),
            }),
            Err(e) if b.failures == 0 => Some(format!("{e} after its tests passed")),
            _ => None,
        };
        if let Some(why) = why {
            self.tally.failed += 1;
            self.notes.push(format!("{}: {why}", b.name));
        }
    }

    fn result(&mut self, rest: &str) {
        if self.open.is_none() {
            self.start("(unnamed)", Delimiter::Cargo);
        }
        let num = |word: &str| {
            rest.split(';')
                .find_map(|part| {
                    part.trim()
                        .strip_suffix(word)
                        .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u32>().ok())
                })
                .unwrap_or(0)
        };
        let mut failures = num(" failed") + num(" ignored");
        if rest.starts_with("FAILED") && num(" failed") == 0 {
            failures += 1;
        }
        self.tally.passed += num(" passed");
        self.tally.failed += failures;
        if let Some(b) = &mut self.open {
            b.results += 1;
            b.failures += failures;
        }
    }
}

/// The binary a line of cargo's opens: `Running unittests src/lib.rs (target/...)`,
/// `Running tests/x.rs (target/...)`, `Doc-tests crate`.
fn cargo_binary(t: &str) -> Option<&str> {
    if let Some(rest) = t.strip_prefix("Running ") {
        return rest.ends_with(')').then_some(rest);
    }
    t.strip_prefix("Doc-tests ")
        .filter(|c| !c.is_empty() && !c.contains(' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(c: &mut LibtestCounter, lines: &[&str]) {
        for l in lines {
            c.line(l);
        }
    }

    const OK4: &str = "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s";

    #[test]
    fn counts_results_and_crashes() {
        let mut c = LibtestCounter::default();
        count(
            &mut c,
            &[
                "XT_BINARY_START a",
                OK4,
                "XT_BINARY_END a 0",
                "XT_BINARY_START b",
                "test result: FAILED. 1 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out",
                "XT_BINARY_END b 101",
                "XT_BINARY_START c",
                "XT_BINARY_END c 139",
            ],
        );
        let (t, notes) = c.finish(true);
        assert_eq!(
            t,
            Tally {
                passed: 5,
                failed: 4
            }
        );
        assert_eq!(
            notes,
            ["c: exited with status 139 before printing a test result"]
        );
    }

    #[test]
    fn a_non_zero_status_after_test_result_ok_is_a_failure() {
        let mut c = LibtestCounter::default();
        count(&mut c, &["XT_BINARY_START a", OK4, "XT_BINARY_END a 3"]);
        let (t, notes) = c.finish(true);
        assert_eq!(
            t,
            Tally {
                passed: 4,
                failed: 1
            }
        );
        assert!(!t.ok());
        assert_eq!(notes, ["a: exited with status 3 after its tests passed"]);
    }

    #[test]
    fn cargo_reports_a_binary_failing_after_test_result_ok() {
        // `cargo test --no-fail-fast` with stderr merged: a binary that printed its results
        // and exited 3, then a failing one, then a passing one. All three count.
        let mut c = LibtestCounter::default();
        count(
            &mut c,
            &[
                "     Running tests/bad.rs (target/debug/deps/bad-66949add5eca537d)",
                OK4,
                "error: test failed, to rerun pass `--test bad`",
                "Caused by:",
                "  process didn't exit successfully: `...` (exit status: 3)",
                "     Running tests/fail.rs (target/debug/deps/fail-1)",
                "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
                "error: test failed, to rerun pass `--test fail`",
                "     Running tests/good.rs (target/debug/deps/good-2)",
                "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
                "   Doc-tests a",
                "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
                "error: 2 targets failed:",
            ],
        );
        let (t, notes) = c.finish(true);
        assert_eq!(
            t,
            Tally {
                passed: 5,
                failed: 2
            }
        );
        assert_eq!(
            notes,
            [
                "tests/bad.rs (target/debug/deps/bad-66949add5eca537d): exited with a failure status after its tests passed"
            ]
        );
    }

    #[test]
    fn two_binaries_first_failing_both_count() {
        let mut c = LibtestCounter::default();
        count(
            &mut c,
            &[
                "     Running unittests src/lib.rs (target/debug/deps/a-1)",
                "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
                "error: test failed, to rerun pass `-p a --lib`",
                "     Running unittests src/lib.rs (target/debug/deps/b-2)",
                "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            ],
        );
        let (t, notes) = c.finish(true);
        assert_eq!(
            t,
            Tally {
                passed: 5,
                failed: 1
            }
        );
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn zero_tests_is_a_failure() {
        let mut c = LibtestCounter::default();
        count(
            &mut c,
            &[
                "     Running unittests src/lib.rs (target/debug/deps/a-1)",
                "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 3 filtered out",
            ],
        );
        let (t, notes) = c.finish(true);
        assert_eq!(
            t,
            Tally {
                passed: 0,
                failed: 1
            }
        );
        assert_eq!(notes, ["no test ran"]);
        assert!(!LibtestCounter::default().finish(true).0.ok());
    }

    #[test]
    fn unfinished_missing_and_silent_binaries_fail() {
        // a: killed with the host before its end marker; b: expected, never started;
        // c: exited 0 without libtest's summary; d: still running when cargo was stopped.
        let mut c = LibtestCounter::expecting(["a".to_string(), "b".to_string()]);
        count(&mut c, &["XT_BINARY_START a", OK4]);
        let (t, notes) = c.finish(true);
        assert_eq!(
            t,
            Tally {
                passed: 4,
                failed: 2
            }
        );
        assert_eq!(
            notes,
            [
                "a: never reported its exit status after its tests passed",
                "b: never ran"
            ]
        );

        let mut c = LibtestCounter::default();
        count(&mut c, &["XT_BINARY_START k", "XT_BINARY_END k killed"]);
        let (t, notes) = c.finish(true);
        assert_eq!(t.failed, 1);
        assert_eq!(notes, ["k: was killed before printing a test result"]);

        let mut c = LibtestCounter::default();
        count(&mut c, &["XT_BINARY_START c", "XT_BINARY_END c 0"]);
        count(
            &mut c,
            &["     Running tests/d.rs (target/debug/deps/d-1)", OK4],
        );
        let (t, notes) = c.finish(false);
        assert_eq!(
            t,
            Tally {
                passed: 4,
                failed: 2
            }
        );
        assert_eq!(
            notes,
            [
                "c: printed no test result",
                "tests/d.rs (target/debug/deps/d-1): was stopped at the time limit after its tests passed"
            ]
        );
    }

    #[test]
    fn cargo_lines_are_recognised_narrowly() {
        assert_eq!(
            cargo_binary("Running unittests src/lib.rs (target/debug/deps/a-1)"),
            Some("unittests src/lib.rs (target/debug/deps/a-1)")
        );
        assert_eq!(cargo_binary("Doc-tests vmm"), Some("vmm"));
        assert_eq!(cargo_binary("Running the guest now"), None);
        assert_eq!(cargo_binary("Doc-tests are not here"), None);
    }
}
