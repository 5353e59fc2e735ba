//! A small logger to stderr (or a file, later): `vmm: LEVEL message`.

use std::io::Write;
use std::sync::Mutex;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    out: Mutex<()>,
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let _guard = self.out.lock();
            // \r keeps lines tidy when the terminal is in raw mode for the guest console.
            let _ = write!(std::io::stderr(), "vmm: {} {}\r\n", r.level(), r.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger {
    out: Mutex::new(()),
};

/// Installs the logger at `level` (only the first call takes effect).
pub fn init(level: LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
