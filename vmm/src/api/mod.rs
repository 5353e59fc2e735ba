//! The HTTP API on a Unix socket: Firecracker's resources plus our extensions.
//!
//! ```text
//! client --HTTP--> API thread (hyper, current-thread tokio)
//!                    | parse: router::parse -> ApiRequest, or a 4xx answered right here
//!                    | channel + EventFd
//!                    v
//!                  VMM thread: Controller::handle -> ApiResponse --oneshot--> API thread
//! ```

pub mod client;
pub mod migration;
pub mod model;
pub mod router;
pub mod server;
pub mod snapshot;

#[cfg(test)]
mod openapi_tests;
