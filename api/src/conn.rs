//! Connection admission: a bound on the connections one gateway process serves, with the
//! excess refused at once instead of queued.
//!
//! Invariant kept here ("one client must never make the gateway stop answering others"):
//! - every accepted connection takes a [`Ticket`] (counted while the connection lives);
//!   one accepted while [`ConnectionLimits::max`] others are open is *over* the limit, and
//!   every request on it is answered `503` problem+json with `Retry-After: 1` and
//!   `Connection: close` without reading its body — except `/healthz` and `/readyz`, which
//!   stay answerable for the orchestrator probing the process;
//! - the HTTP server itself stops accepting at [`ConnectionLimits::hard_cap`] (twice the
//!   limit, and always below the process's file-descriptor budget), so a flood can never
//!   exhaust the descriptors the store, the logs and the admitted clients need;
//! - time bounds close every connection a silent or slow client holds: no request head
//!   within [`HEAD_DEADLINE`], no body within the body deadline (`body.rs`), idle
//!   keep-alive after [`KEEP_ALIVE`].

use crate::problem::ApiError;
use actix_web::dev::{Extensions, Service, ServiceRequest, ServiceResponse};
use actix_web::ResponseError;
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default bound on connections served normally by one gateway process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// A client must send its request head within this time after connecting (or after the
/// previous response on a kept-alive connection).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// An idle kept-alive connection is closed after this time.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// File descriptors kept free for everything but client connections (store, logs,
/// tool calls, the LISTEN connection).
pub const RESERVED_FDS: usize = 512;

/// The configured bound and what it means for the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served normally; more are answered 503 at once.
    pub max: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ConnectionLimits {
    /// The bound actually used: `max`, lowered to fit the descriptor budget with room for
    /// the over-limit connections that are being refused.
    pub fn effective_max(&self) -> usize {
        let budget = fd_budget();
        self.max.min(budget / 2).max(1)
    }

    /// Connections past which the server stops accepting (they wait in the kernel's
    /// backlog): room for the refusals of a burst, never more than the descriptor budget.
    pub fn hard_cap(&self) -> usize {
        (self.effective_max() * 2).min(fd_budget()).max(2)
    }
}

/// Descriptors available for client connections: the soft `RLIMIT_NOFILE` minus
/// [`RESERVED_FDS`].
fn fd_budget() -> usize {
    nofile_limit()
        .unwrap_or(1024)
        .saturating_sub(RESERVED_FDS)
        .max(64)
}

#[cfg(unix)]
fn nofile_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then(|| usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

#[cfg(not(unix))]
fn nofile_limit() -> Option<usize> {
    None
}

/// Raises the soft descriptor limit to the hard one (as Go does at start): a gateway is
/// a program whose job is holding connections. Returns the soft limit now in force.
#[cfg(unix)]
pub fn raise_fd_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `nofile_limit`; setrlimit only reads the struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    usize::try_from(lim.rlim_cur).ok()
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<usize> {
    None
}

/// Counts open connections of one server.
#[derive(Clone, Default)]
pub struct ConnectionCounter {
    open: Arc<AtomicUsize>,
}

impl ConnectionCounter {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The `on_connect` hook: gives the new connection its ticket.
    pub fn on_connect(&self, max: usize) -> impl Fn(&dyn Any, &mut Extensions) + Clone {
        let open = self.open.clone();
        move |_, ext| {
            let now = open.fetch_add(1, Ordering::Relaxed) + 1;
            ext.insert(Ticket {
                over: now > max,
                open: open.clone(),
            });
        }
    }
}

/// A connection's place in the count; released when the connection closes.
pub struct Ticket {
    over: bool,
    open: Arc<AtomicUsize>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Paths answered even on an over-limit connection: cheap, and what probes call.
fn exempt(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// The middleware (for `App::wrap_fn`): refuses every request of an over-limit connection
/// with 503, unread.
pub fn admit<S>(
    req: ServiceRequest,
    srv: &S,
) -> futures::future::Either<
    S::Future,
    std::future::Ready<Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error>>,
>
where
    S: Service<
        ServiceRequest,
        Response = ServiceResponse<actix_web::body::BoxBody>,
        Error = actix_web::Error,
    >,
{
    let over = req.conn_data::<Ticket>().is_some_and(|t| t.over);
    if over && !exempt(req.path()) {
        let mut resp =
            ApiError::Overloaded("the gateway is at its connection limit; retry shortly".into())
                .error_response();
        resp.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        return futures::future::Either::Right(std::future::ready(Ok(req.into_response(resp))));
    }
    futures::future::Either::Left(srv.call(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_count_and_mark_the_excess() {
        let c = ConnectionCounter::default();
        let hook = c.on_connect(2);
        let mut exts: Vec<Extensions> = (0..3).map(|_| Extensions::new()).collect();
        for e in &mut exts {
            hook(&(), e);
        }
        assert_eq!(c.open(), 3);
        let over: Vec<bool> = exts
            .iter()
            .map(|e| e.get::<Ticket>().map(|t| t.over).unwrap_or(false))
            .collect();
        assert_eq!(over, vec![false, false, true]);
        drop(exts);
        assert_eq!(c.open(), 0, "closing a connection releases its ticket");
    }

    #[test]
    fn the_bound_fits_the_descriptor_budget() {
        let l = ConnectionLimits { max: usize::MAX };
        assert!(l.hard_cap() <= fd_budget());
        assert!(l.effective_max() < l.hard_cap());
        let small = ConnectionLimits { max: 10 };
        assert_eq!(small.effective_max(), 10);
        assert_eq!(small.hard_cap(), 20);
    }
}
