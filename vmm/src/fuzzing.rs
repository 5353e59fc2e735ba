//! Fuzz-target bodies for the VMM's untrusted text: API requests (from anyone who can reach
//! the API socket) and Firecracker config files. Each takes arbitrary bytes and must not
//! panic; `fuzz/` wraps them for libFuzzer and the unit tests below run them on the seeds in
//! `fuzz/corpus/` and on pseudo-random inputs.

use std::time::{Duration, Instant};

use crate::api::model::RateLimiterConfig;
use crate::api::router::{self, ApiRequest};
use crate::config::VmConfig;

/// An API request, written `METHOD PATH\nBODY`: the request line is split at its first
/// space, and everything after the first newline is the body. Requests the router accepts
/// are also validated as the controller would.
pub fn api_request(data: &[u8]) {
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(nl) => (&data[..nl], &data[nl + 1..]),
        None => (data, &[][..]),
    };
    let line = String::from_utf8_lossy(line);
    let (method, path) = line.split_once(' ').unwrap_or((&line, "/"));
    match router::parse(method, path, body) {
        Ok(req) => {
            let _ = req.metric();
            validate(&req);
        }
        Err(resp) => {
            assert!(
                (400..600).contains(&resp.status),
                "an error response has an error status"
            );
        }
    }
}

/// Runs the model's own checks, which bodies from the API reach before anything acts on
/// them (the vsock socket path is left alone: checking it touches the filesystem), and
/// drives every rate limiter that passes them.
fn validate(req: &ApiRequest) {
    let (checked, limiters) = match req {
        ApiRequest::PutDrive(_, d) => (d.validate(), vec![d.rate_limiter]),
        ApiRequest::PatchDrive(_, p) => (Ok(()), vec![p.rate_limiter]),
        ApiRequest::PutNet(_, n) => (n.validate(), vec![n.rx_rate_limiter, n.tx_rate_limiter]),
        ApiRequest::PatchNet(_, p) => (Ok(()), vec![p.rx_rate_limiter, p.tx_rate_limiter]),
        ApiRequest::PutEntropy(e) => (e.validate(), vec![e.rate_limiter]),
        _ => (Ok(()), Vec::new()),
    };
    if checked.is_err() {
        return;
    }
    for r in limiters.iter().flatten() {
        if r.validate().is_ok() {
            run_limiter(r);
        }
    }
}

/// Admits requests of extreme sizes at extreme times: the token arithmetic must hold.
fn run_limiter(cfg: &RateLimiterConfig) {
    let mut limiter = cfg.build();
    let t0 = Instant::now();
    for (bytes, later) in [
        (0, 0),
        (1, 0),
        (u64::MAX, 0),
        (4096, 1),
        (u64::MAX, u64::from(u32::MAX)),
        (1, u64::MAX / 4),
    ] {
        let Some(now) = t0.checked_add(Duration::from_nanos(later)) else {
            continue;
        };
        if let Err(wait) = limiter.admit(bytes, now) {
            let _ = now.checked_add(wait);
        }
    }
}

/// A Firecracker-style config file (`--config-file`); one that is accepted must also give a
/// guest command line.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = VmConfig::from_firecracker_json(text) {
        let _ = cfg.guest_cmdline();
        assert!(cfg.validate().is_ok(), "an accepted config is valid");
    }
}

#[cfg(test)]
mod tests {
    use devices::fuzzing::{seed_corpus, smoke};

    use super::*;

    #[test]
    fn api_seeds_are_accepted_requests() {
        let seeds = seed_corpus("api_request");
        assert!(seeds.len() >= 10, "{} seeds", seeds.len());
        for s in seeds {
            let text = String::from_utf8(s).unwrap();
            let (line, body) = text.split_once('\n').unwrap_or((&text, ""));
            let (method, path) = line.split_once(' ').unwrap();
            assert!(
                router::parse(method, path, body.as_bytes()).is_ok(),
                "the seed {line} is refused"
            );
        }
    }

    #[test]
    fn config_seeds_are_accepted_files() {
        let seeds = seed_corpus("config_file");
        assert!(!seeds.is_empty());
        for s in seeds {
            let text = String::from_utf8(s).unwrap();
            if let Err(e) = VmConfig::from_firecracker_json(&text) {
                panic!("{e}: {text}");
            }
        }
    }

    #[test]
    fn smoke_api_request() {
        smoke("api_request", 2000, api_request);
    }

    #[test]
    fn smoke_config_file() {
        smoke("config_file", 2000, config_file);
    }
}
