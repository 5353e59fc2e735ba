//! The logger: `vmm: LEVEL message` lines to stderr, or to a file or FIFO given by `--log-path`
//! or `PUT /logger`, at a level that can change while running.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

use log::{LevelFilter, Log, Metadata, Record};

struct Target {
    out: Option<Box<dyn Write + Send>>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

struct VmmLogger {
    target: Mutex<Target>,
}

impl Log for VmmLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut t = self
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = &t.module {
            if !r.module_path().is_some_and(|p| p.starts_with(m.as_str())) {
                return;
            }
        }
        let mut line = String::from("vmm:");
        if t.show_level {
            line.push_str(&format!(" {}", r.level()));
        }
        if t.show_origin {
            line.push_str(&format!(
                " {}:{}",
                r.file().unwrap_or("?"),
                r.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!(" {}", r.args()));
        match t.out.as_mut() {
            Some(f) => {
                let _ = writeln!(f, "{line}");
                let _ = f.flush();
            }
            // \r keeps lines tidy when the terminal is in raw mode for the guest console.
            None => {
                let _ = write!(std::io::stderr(), "{line}\r\n");
            }
        }
    }

    fn flush(&self) {}
}

static LOGGER: VmmLogger = VmmLogger {
    target: Mutex::new(Target {
        out: None,
        show_level: true,
        show_origin: false,
        module: None,
    }),
};

/// Installs the logger at `level` (only the first call takes effect).
pub fn init(level: LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Changes where and how the log is written. `path` None keeps the current destination.
pub fn configure(
    path: Option<&str>,
    level: Option<LevelFilter>,
    show_level: Option<bool>,
    show_origin: Option<bool>,
    module: Option<&str>,
) -> std::io::Result<()> {
    let out: Option<Box<dyn Write + Send>> = match path {
        Some(p) => Some(Box::new(
            OpenOptions::new().create(true).append(true).open(p)?,
        )),
        None => None,
    };
    let mut t = LOGGER
        .target
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if out.is_some() {
        t.out = out;
    }
    if let Some(s) = show_level {
        t.show_level = s;
    }
    if let Some(s) = show_origin {
        t.show_origin = s;
    }
    if let Some(m) = module {
        t.module = Some(m.to_string());
    }
    if let Some(l) = level {
        log::set_max_level(l);
    }
    Ok(())
}
