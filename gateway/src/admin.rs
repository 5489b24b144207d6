//! The internal admin listener: `/metrics` (Prometheus text format) and
//! `/healthz`. Bind it to loopback or an operations network only; it has no
//! authentication of its own.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tracing::warn;

use crate::server::Shared;

/// Serve until the gateway shuts down.
pub async fn serve(s: Arc<Shared>, l: TcpListener) {
    let stop = s.shutdown_token();
    let app = Router::new()
        .route(
            "/metrics",
            get({
                let s = s.clone();
                move || async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        s.metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(l, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        warn!(error = %e, "Admin listener failed");
    }
}
