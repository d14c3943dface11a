//! The node's own routes: `/v1/cluster` (status), `/health` (the process
//! serves), `/ready` (it can serve requests) and `/metrics` (Prometheus).

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::reply::{self, ApiError, Body};
use crate::metrics;
use crate::service::Service;

/// `GET /v1/cluster`: every core's groups and links, in the shape of
/// `kvctl cluster status -o json`.
pub async fn cluster(svc: &Service) -> Result<Response<Body>, ApiError> {
    Ok(reply::json(StatusCode::OK, &svc.node_status().await?))
}

/// `GET /health`: 200 whenever the process answers at all.
pub fn health() -> Response<Body> {
    reply::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// `GET /ready`: 200 once every core has replayed its WAL and every shard
/// this node holds knows its leader; 503 naming what is missing otherwise.
pub async fn ready(svc: &Service) -> Result<Response<Body>, ApiError> {
    if svc.shutdown.is_triggered() {
        return Err(ApiError::unavailable("shutting_down", "the server is shutting down"));
    }
    let status = svc.node_status().await?;
    let missing = not_ready(&status);
    if missing.replaying_cores.is_empty() && missing.leaderless_shards.is_empty() {
        return Ok(reply::json(StatusCode::OK, &serde_json::json!({"status": "ready"})));
    }
    let message = format!(
        "not ready: {} core(s) still replaying their WAL, {} shard(s) without a known leader",
        missing.replaying_cores.len(),
        missing.leaderless_shards.len()
    );
    Err(ApiError::unavailable("not_ready", message).with_extra(serde_json::json!({
        "replaying_cores": missing.replaying_cores,
        "leaderless_shards": missing.leaderless_shards,
    })))
}

/// What keeps a node from being ready, read from its status.
#[derive(Debug, Default, PartialEq, Eq)]
struct Missing {
    replaying_cores: Vec<u64>,
    leaderless_shards: Vec<u64>,
}

fn not_ready(status: &serde_json::Value) -> Missing {
    let mut missing = Missing::default();
    for core in status["cores"].as_array().into_iter().flatten() {
        if core["replayed"] != true {
            missing.replaying_cores.push(core["core"].as_u64().expect("a core status names its core"));
        }
        for g in core["groups"].as_array().into_iter().flatten() {
            if g["leader"].is_null() {
                missing.leaderless_shards.push(g["shard"].as_u64().expect("a group status names its shard"));
            }
        }
    }
    missing
}

/// `GET /metrics`: the registry in the OpenMetrics text format.
pub fn metrics(svc: &Service) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from(svc.metrics.encode())));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_replayed_cores_and_known_leaders() {
        let status = serde_json::json!({"cores": [
            {"core": 0, "replayed": true, "groups": [{"shard": 0, "leader": 1}, {"shard": 2, "leader": null}]},
            {"core": 1, "replayed": false, "groups": [{"shard": 1, "leader": 2}]},
        ]});
        assert_eq!(not_ready(&status), Missing { replaying_cores: vec![1], leaderless_shards: vec![2] });
        let ready =
            serde_json::json!({"cores": [{"core": 0, "replayed": true, "groups": [{"shard": 0, "leader": 1}]}]});
        assert_eq!(not_ready(&ready), Missing::default());
    }
}
