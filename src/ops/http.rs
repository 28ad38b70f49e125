//! The HTTP endpoints (`--http-listen`): `GET /metrics` (Prometheus),
//! `GET /healthz` (the process is up) and `GET /readyz` (200 once recovery
//! is done and puts are served; 503 with a JSON reason otherwise). Served
//! from before recovery starts, so an orchestrator sees "recovering".
//! [`serve_metrics`] is the replicator's endpoint (`flightlog replicate
//! --metrics-listen`): `GET /metrics` only.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::node::Node;

/// What the endpoints read: the node, once it has recovered.
#[derive(Clone, Default)]
pub struct Health {
    node: Arc<OnceLock<Arc<Node>>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Recovery is done: from now on the endpoints read `node`.
    pub fn set_node(&self, node: Arc<Node>) {
        let _ = self.node.set(node);
    }

    /// `Ok` when ready, else the JSON reason of the 503.
    pub fn readiness(&self) -> Result<(), serde_json::Value> {
        let Some(node) = self.node.get() else {
            return Err(json!({"ready": false, "reason": "recovering"}));
        };
        if let Some(reason) = node.wal.failure() {
            return Err(json!({"ready": false, "reason": "wal_failed", "detail": reason}));
        }
        if node.is_shutting_down() {
            return Err(json!({"ready": false, "reason": "shutting_down"}));
        }
        let quarantined = node.pending.quarantined_tables();
        if !quarantined.is_empty() {
            let tables: Vec<serde_json::Value> = quarantined
                .into_iter()
                .map(|(table, q)| json!({"table": table.to_string(), "reason": q.reason, "failures": q.failures}))
                .collect();
            return Err(json!({"ready": false, "reason": "table_quarantined", "tables": tables}));
        }
        Ok(())
    }
}

/// The router of the endpoints.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// Serves the endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Renders a registry's text at each scrape.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` alone on `listener`, with the text of `render` at
/// each scrape, until the process ends (or the listener fails).
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    render: RenderMetrics,
) -> std::io::Result<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(|State(render): State<RenderMetrics>| async move { metrics_response(render()) }),
        )
        .with_state(render);
    axum::serve(listener, router).await
}

async fn metrics(State(health): State<Health>) -> Response {
    let body = match health.node.get() {
        Some(node) => super::metrics::render(node),
        None => super::metrics::render_empty(),
    };
    metrics_response(body)
}

fn metrics_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], body).into_response()
}

async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"status": "up"}).to_string(),
    )
        .into_response()
}

async fn readyz(State(health): State<Health>) -> Response {
    let (status, body) = match health.readiness() {
        Ok(()) => (StatusCode::OK, json!({"ready": true})),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_recovery_until_a_node_is_set() {
        let health = Health::new();
        let reason = health.readiness().expect_err("no node yet");
        assert_eq!(reason["reason"], "recovering");
    }
}
