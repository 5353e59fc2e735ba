//! The API server: HTTP/1.1 on a Unix socket with hyper, on its own thread. Requests that do
//! not parse are answered on this thread; the rest go to the VMM thread through a channel and
//! an EventFd, and the answer comes back on a oneshot, so a slow client only holds its own
//! connection and never the guest or other clients.

use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::router::{self, ApiRequest, ApiResponse, MAX_BODY};

/// How long a client may take to send its headers, and then its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors setting up the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A live process already serves the socket.
    #[error("another process is already serving the API socket {0}; refusing to take it over")]
    InUse(PathBuf),
    /// Something other than a socket is at the path.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Binding or starting failed.
    #[error("cannot serve the API on {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A request waiting for the VMM thread's answer.
#[derive(Debug)]
pub struct ApiCall {
    /// The request.
    pub request: ApiRequest,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ApiResponse>,
}

/// The API thread's side of the channel.
#[derive(Debug, Clone)]
pub struct ApiSender {
    tx: Sender<ApiCall>,
    wake: Arc<EventFd>,
}

/// The VMM thread's side of the channel.
#[derive(Debug)]
pub struct ApiReceiver {
    rx: Receiver<ApiCall>,
    wake: Arc<EventFd>,
}

impl ApiReceiver {
    /// Becomes readable when requests wait.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Takes every waiting request.
    pub fn drain(&self) -> Vec<ApiCall> {
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }
}

/// A connected sender and receiver.
pub fn channel() -> std::io::Result<(ApiSender, ApiReceiver)> {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    Ok((
        ApiSender {
            tx,
            wake: wake.clone(),
        },
        ApiReceiver { rx, wake },
    ))
}

impl ApiSender {
    async fn call(&self, request: ApiRequest) -> ApiResponse {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(ApiCall { request, reply }).is_err() || self.wake.write(1).is_err() {
            return ApiResponse::fault(503, "the VMM is shutting down");
        }
        answer
            .await
            .unwrap_or_else(|_| ApiResponse::fault(503, "the VMM is shutting down"))
    }
}

/// Binds the socket. A stale socket (nobody accepting) is replaced; a live one is refused.
pub fn bind(path: &Path) -> Result<StdListener, ServerError> {
    use devices::unix_socket::{self, BindError};
    unix_socket::bind(path).map_err(|e| match e {
        BindError::InUse(p) => ServerError::InUse(p),
        BindError::NotASocket(p) => ServerError::NotASocket(p),
        BindError::Io { path, source } => ServerError::Io { path, source },
    })
}

fn to_http(r: ApiResponse) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(r.status);
    if let Some(allow) = &r.allow {
        b = b.header("Allow", allow.as_str());
    }
    let body = match r.body {
        Some(v) => {
            b = b.header("Content-Type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    b.body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn handle(
    req: Request<Incoming>,
    api: ApiSender,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Ok(to_http(ApiResponse::fault(
                413,
                format!("request body over {MAX_BODY} bytes"),
            )));
        }
        Ok(Err(e)) => {
            return Ok(to_http(ApiResponse::bad_request(format!(
                "cannot read the request body: {e}"
            ))));
        }
        Err(_) => {
            return Ok(to_http(ApiResponse::fault(
                408,
                "the request body did not arrive in time",
            )));
        }
    };
    let resp = match router::parse(&method, &path, &body) {
        Ok(r) => api.call(r).await,
        Err(r) => r,
    };
    Ok(to_http(resp))
}

async fn serve(listener: StdListener, api: ApiSender) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let api = api.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, api.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                log::debug!("API connection: {e}");
            }
        });
    }
}

/// Starts the API thread on a bound listener.
pub fn spawn(
    listener: StdListener,
    api: ApiSender,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("api".into())
        .stack_size(crate::THREAD_STACK)
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("API runtime: {e}");
                    return;
                }
            };
            if let Err(e) = rt.block_on(serve(listener, api)) {
                log::error!("API server stopped: {e}");
            }
        })
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub struct SocketGuard(pub PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::client::Client;
    use std::os::unix::net::UnixStream as StdStream;

    fn sock(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vmm-api-{tag}-{}.sock", std::process::id()))
    }

    /// Serves with a VMM thread that answers every request with its debug name.
    fn start(path: &Path) {
        let listener = bind(path).unwrap();
        let (tx, rx) = channel().unwrap();
        spawn(listener, tx).unwrap();
        std::thread::spawn(move || {
            loop {
                let mut fds = [libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(rx.wake_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
                for call in rx.drain() {
                    let _ = call.reply.send(ApiResponse::ok(
                        serde_json::json!({"got": format!("{:?}", call.request)}),
                    ));
                }
            }
        });
    }

    #[test]
    fn requests_reach_the_vmm_thread_and_errors_do_not() {
        let path = sock("roundtrip");
        start(&path);
        let c = Client::new(&path);
        let (s, body) = c.request("GET", "/", None).unwrap();
        assert_eq!(s, 200);
        assert_eq!(body.unwrap()["got"], "GetInstanceInfo");
        let (s, body) = c
            .request("PUT", "/actions", Some(r#"{"action_type": 7}"#))
            .unwrap();
        assert_eq!(s, 400);
        let m = body.unwrap()["fault_message"].as_str().unwrap().to_string();
        assert!(m.contains("invalid request body"), "{m}");
        let (s, _) = c.request("GET", "/nowhere", None).unwrap();
        assert_eq!(s, 404);
        let big = format!(r#"{{"metrics_path": "{}"}}"#, "x".repeat(MAX_BODY));
        let (s, _) = c.request("PUT", "/metrics", Some(&big)).unwrap();
        assert_eq!(s, 413);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let path = sock("live");
        start(&path);
        assert!(matches!(bind(&path), Err(ServerError::InUse(_))));
        std::fs::remove_file(&path).unwrap();

        let stale = sock("stale");
        drop(StdListener::bind(&stale).unwrap()); // a socket file nobody serves
        assert!(bind(&stale).is_ok());
        std::fs::remove_file(&stale).unwrap();

        let file = sock("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(ServerError::NotASocket(_))));
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn a_stuck_client_does_not_block_others() {
        use std::io::Write;
        let path = sock("stuck");
        start(&path);
        // Sends headers promising a body that never comes.
        let mut stuck = StdStream::connect(&path).unwrap();
        stuck
            .write_all(b"PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .unwrap();
        let mut half = StdStream::connect(&path).unwrap();
        half.write_all(b"GET / HT").unwrap();
        let c = Client::new(&path);
        for _ in 0..5 {
            assert_eq!(c.request("GET", "/version", None).unwrap().0, 200);
        }
        std::fs::remove_file(&path).unwrap();
    }
}
