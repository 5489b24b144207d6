//! The internal admin listener: `/metrics` (Prometheus text format) and
//! `/healthz`. Bind it to loopback or an operations network only; it has no
//! authentication of its own.

use axum::routing::get;
use axum::Router;
use kakehashi_transport::Shutdown;
use tokio::net::TcpListener;
use tracing::warn;

/// Serve `render()` at `/metrics` until `stop`.
pub async fn serve<F>(render: F, stop: Shutdown, l: TcpListener)
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    let app = Router::new()
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(l, app)
        .with_graceful_shutdown(async move { stop.draining().await })
        .await
    {
        warn!(error = %e, "Admin listener failed");
    }
}
