//! From a request to a handler: authentication, routes, methods, and the
//! bookkeeping every request gets (metrics, a debug log line on failure).
//!
//! | route            | methods                 | auth | op label          |
//! |------------------|-------------------------|------|-------------------|
//! | `/v1/kv/{key}`   | GET HEAD PUT DELETE     | yes  | get / set / del   |
//! | `/v1/cluster`    | GET HEAD                | yes  | status            |
//! | `/ready`         | GET HEAD                | yes  | ready             |
//! | `/metrics`       | GET HEAD                | yes  | metrics           |
//! | `/health`        | GET HEAD                | no   | health            |
//!
//! With a password set, every route but `/health` needs `Authorization:
//! Bearer <password>`, `/metrics` included (Prometheus sends one with
//! `authorization: {credentials: ...}` in its scrape config): metrics name
//! the node's shape and load, which is not for everyone.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, Response};
use sha2::{Digest, Sha256};

use super::reply::{self, ApiError, Body};
use super::request::{self, Query};
use super::{admin, kv};
use crate::metrics::{OpLabel, Protocol};
use crate::service::Service;

/// Characters of a request path quoted in a log line at most.
const LOGGED_PATH_CHARS_MAX: usize = 200;

const KV_PREFIX: &str = "/v1/kv/";

enum Route<'p> {
    /// The key, still percent-encoded.
    Kv(&'p str),
    Cluster,
    Health,
    Ready,
    Metrics,
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    if let Some(key) = path.strip_prefix(KV_PREFIX) {
        return Route::Kv(key);
    }
    match path {
        "/v1/cluster" => Route::Cluster,
        "/health" => Route::Health,
        "/ready" => Route::Ready,
        "/metrics" => Route::Metrics,
        _ => Route::Unknown,
    }
}

/// Answers one request. Never fails: every error is a JSON response.
pub async fn handle(svc: Rc<Service>, peer: Rc<str>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(LOGGED_PATH_CHARS_MAX).collect();
    let (op, result) = dispatch(&svc, req).await;
    let resp = result.unwrap_or_else(|e| {
        tracing::debug!(%peer, %method, %path, status = e.status.as_u16(), code = e.code, "HTTP request failed: {}", e.message);
        e.into_response()
    });
    svc.metrics.request(Protocol::Http, op, reply::status_label(resp.status()), started.elapsed());
    Ok(resp)
}

async fn dispatch(svc: &Service, req: Request<Incoming>) -> (OpLabel, Result<Response<Body>, ApiError>) {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let route = route(req.uri().path());
    let op = match (&route, req.method()) {
        (Route::Kv(_), &Method::GET | &Method::HEAD) => OpLabel::Get,
        (Route::Kv(_), &Method::PUT) => OpLabel::Set,
        (Route::Kv(_), &Method::DELETE) => OpLabel::Del,
        (Route::Cluster, _) => OpLabel::Status,
        (Route::Health, _) => OpLabel::Health,
        (Route::Ready, _) => OpLabel::Ready,
        (Route::Metrics, _) => OpLabel::Metrics,
        _ => OpLabel::Other,
    };
    if !matches!(route, Route::Health) && !authorized(svc, &req) {
        return (op, Err(ApiError::unauthorized()));
    }
    let result = match route {
        Route::Kv(key) => {
            let key = key.to_string();
            kv_route(svc, &key, req).await
        }
        Route::Unknown => Err(ApiError::not_found("no_route", format!("no route {}", req.uri().path()))),
        _ if !get => Err(ApiError::method_not_allowed("GET, HEAD")),
        _ if req.uri().query().is_some_and(|q| !q.is_empty()) => {
            Err(ApiError::bad_request("this route takes no query parameters"))
        }
        Route::Health => Ok(admin::health()),
        Route::Ready => admin::ready(svc).await,
        Route::Metrics => Ok(admin::metrics(svc)),
        Route::Cluster => admin::cluster(svc).await,
    };
    (op, result)
}

async fn kv_route(svc: &Service, encoded_key: &str, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let allowed: &[&str] = match *req.method() {
        Method::GET | Method::HEAD => &["consistency"],
        Method::PUT => &["version", "ttl"],
        Method::DELETE => &["version"],
        _ => return Err(ApiError::method_not_allowed("GET, HEAD, PUT, DELETE")),
    };
    let query = Query::parse(req.uri().query(), allowed)?;
    let key = request::key(encoded_key, svc.limits.key_bytes_max)?;
    let (parts, body) = req.into_parts();
    match parts.method {
        Method::PUT => kv::put(svc, key, &parts.headers, &query, body).await,
        Method::DELETE => kv::delete(svc, key, &parts.headers, &query).await,
        _ => kv::get(svc, key, &query).await,
    }
}

/// Whether the request may pass: no password set, or the right bearer
/// token. The comparison is of SHA-256 digests in constant time, so it
/// reveals neither the password's bytes nor its length through timing.
fn authorized(svc: &Service, req: &Request<Incoming>) -> bool {
    let Some(password) = &svc.frontend.password else { return true };
    let Some(value) = req.headers().get(AUTHORIZATION) else { return false };
    let value = value.as_bytes();
    let scheme = b"bearer ";
    if value.len() < scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return false;
    }
    let given = Sha256::digest(&value[scheme.len()..]);
    let wanted = Sha256::digest(password.as_slice());
    given.iter().zip(wanted.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
