//! The HTTP server around both planes: accepts connections and serves HTTP/1.1 and h2c on
//! them with the limits a public edge needs, which `axum::serve` does not expose.
//!
//! - Headers must arrive within [`HEADER_READ_TIMEOUT`] of a connection's request start:
//!   a client trickling its headers (slowloris) is cut instead of holding a task and a
//!   socket forever. Bodies are bounded by the stack's `request_timeout_s`.
//! - Request headers larger than [`MAX_HEADER_BYTES`] are answered 431 by hyper.
//! - A request with both `Content-Length` and `Transfer-Encoding` (the request-smuggling
//!   shape) is read by its chunked framing only and its connection closed after the
//!   answer (hyper drops the `Content-Length` and keep-alive, as RFC 9112 §6.1 allows), so
//!   no second request can hide in its body. A `Transfer-Encoding` other than chunked is
//!   a 400 from hyper. Not a 400 for both: hyper (`proto/h1/role.rs`, server `parse`)
//!   removes a `Content-Length` seen before the `Transfer-Encoding`, skips one after it, and
//!   has no option to refuse the pair, so the service never sees both headers; a 400 would
//!   take a second HTTP parser in front of hyper's.
//! - With TLS (`tls:` / `admin.tls:`), the handshake must finish within
//!   [`TLS_HANDSHAKE_TIMEOUT`], so a client stalling it holds nothing for long. Failed
//!   handshakes (plain HTTP to the port, scanners, clients that distrust the certificate)
//!   are the client's problem and logged at debug only. HTTP/2 is chosen by ALPN; hyper's
//!   auto builder then sees the h2 preface exactly as on h2c.
//! - Shutdown: on the stop signal the listener closes, open connections finish their
//!   requests in flight (hyper's graceful shutdown), then this returns. A connection still
//!   in its TLS handshake is watched too: it is closed right after its handshake, or cut
//!   by the handshake timeout.

use std::time::Duration;

use axum::body::Body;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Time allowed for a request's headers to arrive.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Time allowed for a TLS handshake, from accept to its end; the same bound as a head.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = HEADER_READ_TIMEOUT;

fn builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        // Finds dead h2 peers so their streams are released.
        .keep_alive_interval(Duration::from_secs(30));
    builder
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` turns true, then
/// drains open connections.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let builder = builder();
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning;
                // per-connection errors (reset before accept) are simply skipped.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = tower::service_fn(move |request: Request<Incoming>| {
            let app = app.clone();
            async move { app.oneshot(request.map(Body::new)).await }
        });
        let service = TowerToHyperService::new(service);
        let Some(tls) = tls.clone() else {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                // Errors here are the client's (reset, bad request line, header timeout).
                let _ = conn.await;
            });
            continue;
        };
        // Taken now, so that a shutdown during the handshake waits for this connection.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .into_owned();
            let _ = watcher.watch(conn).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c; `serve` and `tollgate worker` both stop on it.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
