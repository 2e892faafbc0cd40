//! Serving HTTP on a listener with the limits an exposed port needs: a cap on open
//! connections, a timeout for a request's headers (which also closes connections left
//! idle), a timeout for a whole request, and a bound on header size. `/metrics`, the
//! admin API and the registry are all served this way, so no client can hold the
//! process's file descriptors or a handler forever.
//!
//! A connection over the cap is closed as soon as it is accepted: it costs a moment, not a
//! descriptor, and the connections already open keep being served.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// Bytes a request's line and headers may take (hyper's buffer): more is answered 431.
pub const MAX_HEADER_BYTES: usize = 16 << 10;

/// How long connections still open at shutdown are given to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often a refused connection is logged, at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// How long a connection may take to send a request's line and headers, counted from
    /// when the server starts waiting for them: a connection idle that long between
    /// requests is closed too.
    pub header_timeout: Duration,
    /// How long a request may take from its headers to its response, body included;
    /// over it the answer is 408 and the connection is closed.
    pub request_timeout: Duration,
}

/// Serves `router` on `listener` under `limits` until `shutdown` completes, then lets the
/// requests in flight finish (for a few seconds at most). `name` is for logs.
pub async fn serve(
    name: &'static str,
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    let mut last_refusal: Option<Instant> = None;
    let mut refused = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(listener = name, error = %e, "Cannot accept a connection; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refused += 1;
            if last_refusal.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
                last_refusal = Some(Instant::now());
                tracing::warn!(
                    listener = name,
                    max_connections = limits.max_connections,
                    refused,
                    "Connection limit reached; closing new connections until some close"
                );
            }
            continue;
        };
        let router = router.clone();
        let timeout = limits.request_timeout;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let router = router.clone();
            async move {
                let request = request.map(Body::new);
                let response = match tokio::time::timeout(timeout, router.oneshot(request)).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => timed_out(timeout),
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (reset, timed out, malformed): nothing to do.
            let _ = connection.await;
            drop(slot);
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!(
            listener = name,
            "Connections still open after the shutdown grace; closing them"
        );
    }
    Ok(())
}

/// 408, closing the connection: the request's body may be half read.
fn timed_out(limit: Duration) -> Response<Body> {
    let body = serde_json::json!({
        "error_code": 408,
        "message": format!("the request took longer than {limit:?}"),
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Raises the soft limit on open files to the hard limit, as servers do: what the
/// listeners' caps leave over is then the process's, for Kafka and Postgres.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(open_files = n, "Open files limit"),
        Err(e) => tracing::debug!(error = %e, "Cannot raise the open files limit"),
    }
}
