//! Talks to a `vmm` API socket with curl, as users and Firecracker's getting-started guide do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A fresh socket path for this test process.
pub fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-{tag}-{}.sock", std::process::id()))
}

/// Sends one request with curl; returns the status and the body.
pub fn curl(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--unix-socket"]).arg(sock).args([
        "-X",
        method,
        "-H",
        "Content-Type: application/json",
    ]);
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    c.args(["-w", "\n%{http_code}", &format!("http://localhost{path}")]);
    let out = c.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The JSON of a GET.
pub fn get_json(sock: &Path, path: &str) -> serde_json::Value {
    let (code, body) = curl(sock, "GET", path, None);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

/// Asks for `FlushMetrics` and returns the line it wrote, the last of the metrics file.
pub fn flush_metrics(sock: &Path, metrics: &Path) -> serde_json::Value {
    let (code, body) = curl(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    assert_eq!(code, 204, "FlushMetrics: {body}");
    let text = std::fs::read_to_string(metrics).expect("metrics file");
    serde_json::from_str(text.lines().last().expect("a metrics line")).expect("JSON")
}

/// Waits until the socket answers `GET /`.
pub fn wait_ready(sock: &Path) {
    let deadline = Instant::now() + crate::guest::PATIENCE;
    while curl(sock, "GET", "/", None).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the API socket {} never answered",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
