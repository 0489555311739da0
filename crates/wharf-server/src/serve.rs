//! The accept loop: hyper's connection builder rather than `axum::serve`, which offers no
//! header-read timeout. A client that trickles its headers (slow loris), or keeps a connection
//! open without sending a request, is dropped after `header_read_timeout`.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long a stopping server waits for requests in flight before it closes their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in flight end.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Also bounds how long an idle keep-alive connection is kept: hyper starts the same timer
    // when it waits for the next request's first byte.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Streamed bodies go out in several writes; without TCP_NODELAY each small response
        // waits on Nagle and the peer's delayed ACK (tens of milliseconds).
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            match conn.await {
                Ok(()) => {}
                Err(e)
                    if e.downcast_ref::<hyper::Error>()
                        .is_some_and(|e| e.is_timeout()) =>
                {
                    tracing::info!(client = %peer, "connection dropped: no complete request headers in time");
                }
                Err(e) => {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error")
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; closing them");
    }
}
