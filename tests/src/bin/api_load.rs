//! `api-load SOCKET CLIENTS REQUESTS`: GET / from CLIENTS concurrent keep-alive connections,
//! REQUESTS each, and print `p50_us=.. p99_us=.. requests=.. errors=..`. A benchmark client
//! for `cargo xtask bench`; it reads responses by their Content-Length.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

fn one(stream: &mut BufReader<UnixStream>) -> std::io::Result<u16> {
    stream
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut status_line = String::new();
    stream.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        stream.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(status)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: api-load SOCKET CLIENTS REQUESTS");
        std::process::exit(2);
    }
    let (sock, clients, requests) = (
        args[1].clone(),
        args[2].parse::<usize>().unwrap_or(10),
        args[3].parse::<usize>().unwrap_or(100),
    );
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut errors = 0u32;
                let Ok(s) = UnixStream::connect(&sock) else {
                    return (lat, requests as u32);
                };
                let mut r = BufReader::new(s);
                for _ in 0..requests {
                    let t = Instant::now();
                    match one(&mut r) {
                        Ok(200) => lat.push(t.elapsed().as_micros() as u64),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        if let Ok((l, e)) = h.join() {
            all.extend(l);
            errors += e;
        }
    }
    all.sort_unstable();
    let pct = |p: usize| {
        all.get((all.len() * p / 100).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "p50_us={} p99_us={} requests={} errors={errors}",
        pct(50),
        pct(99),
        all.len()
    );
}
