//! `GET`, `PUT` and `DELETE /v1/kv/{key}`: the key-value operations, turned
//! into the same [`Op`]s the native protocol runs.
//!
//! - GET answers the raw value with its version in `X-Kvd-Version` and
//!   `ETag: "N"`, and for a key with a TTL its expiry in
//!   `X-Kvd-Expires-At` (Unix milliseconds); `?consistency=strict|lease|stale`
//!   (default lease).
//! - PUT stores the raw request body; with a TTL (`X-Kvd-TTL-Seconds` or
//!   `?ttl=`) the key expires that long after the leader proposes the write,
//!   without one it never expires (a TTL it had is cleared). It answers `{"version": N}` with 201
//!   Created when the request was conditional on absence (`If-None-Match:
//!   *`: the key was created), 200 otherwise (without a condition the
//!   server cannot tell an update from a creation).
//! - DELETE answers `{"deleted": true, "version": N}` (the version the key
//!   had), or 404.
//! - A failed condition is 409 `version_conflict` with `current_version`
//!   (null when the key does not exist).
//! - An operation that gets no answer within [`REQUEST_TIMEOUT`] is a 503
//!   `timeout` (a write's outcome is then unknown): a shard that lost its
//!   quorum must not hold HTTP clients forever.

use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, ETAG};
use hyper::{Response, StatusCode};
use kv_engine::{Command, Condition, Expiry, Outcome};
use kv_replication::keyspace::wall_clock_ms;

use super::reply::{self, ApiError, Body};
use super::request::{self, Query};
use crate::mesh::{Op, Reply};
use crate::service::Service;

/// Header carrying a value's version on GET.
pub const VERSION_HEADER: &str = "x-kvd-version";
/// Header carrying a key's expiry (Unix milliseconds) on GET.
pub const EXPIRES_AT_HEADER: &str = "x-kvd-expires-at";
/// Longest wait for a key-value operation's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn get(svc: &Service, key: Bytes, query: &Query) -> Result<Response<Body>, ApiError> {
    let consistency = request::consistency(query)?;
    let reply = match svc.try_read_now(&key, consistency) {
        Some(reply) => reply,
        None => execute(svc, &key, Op::Get { key: key.clone(), consistency }).await?,
    };
    let Reply::Value(stored) = reply else { unreachable!("a read answers with a value, not {reply:?}") };
    let Some(stored) = stored else {
        return Err(ApiError::not_found("key_not_found", "no such key"));
    };
    let mut resp = Response::new(Body::new(stored.value));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(VERSION_HEADER, HeaderValue::from(stored.version));
    headers.insert(ETAG, etag(stored.version));
    if stored.expires_at_ms != 0 {
        headers.insert(EXPIRES_AT_HEADER, HeaderValue::from(stored.expires_at_ms));
    }
    Ok(resp)
}

pub async fn put(
    svc: &Service,
    key: Bytes,
    headers: &HeaderMap,
    query: &Query,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let condition = request::condition(headers, query, true)?;
    let ttl = request::ttl_seconds(headers, query)?;
    let value = request::body(body, svc.limits.value_bytes_max).await?;
    let command = match ttl {
        None => Command::Put { key, value, condition },
        Some(seconds) => {
            let expiry = Expiry::At(wall_clock_ms().saturating_add(seconds.saturating_mul(1000)));
            Command::Set { key, value, condition, expiry, get: false }
        }
    };
    let outcome = write(svc, command).await?;
    match outcome {
        Outcome::Written { version } => {
            let status = if condition == Condition::IfAbsent { StatusCode::CREATED } else { StatusCode::OK };
            let mut resp = reply::json(status, &serde_json::json!({ "version": version }));
            resp.headers_mut().insert(ETAG, etag(version));
            Ok(resp)
        }
        other => unreachable!("a put answers with Written, not {other:?}"),
    }
}

pub async fn delete(svc: &Service, key: Bytes, headers: &HeaderMap, query: &Query) -> Result<Response<Body>, ApiError> {
    let condition = request::condition(headers, query, false)?;
    match write(svc, Command::Delete { key, condition }).await? {
        Outcome::Deleted { version } => {
            Ok(reply::json(StatusCode::OK, &serde_json::json!({ "deleted": true, "version": version })))
        }
        Outcome::NotFound => Err(ApiError::not_found("key_not_found", "no such key")),
        other => unreachable!("a delete answers with Deleted or NotFound, not {other:?}"),
    }
}

/// Runs a write; a failed condition becomes a 409.
async fn write(svc: &Service, command: Command) -> Result<Outcome, ApiError> {
    let key = command.key().clone();
    match execute(svc, &key, Op::Write(command)).await? {
        Reply::Outcome(Outcome::ConditionFailed { current_version }) => {
            let message = match current_version {
                Some(v) => format!("the condition does not hold: the key is at version {v}"),
                None => "the condition does not hold: the key does not exist".to_string(),
            };
            Err(ApiError::new(StatusCode::CONFLICT, "version_conflict", message)
                .with_extra(serde_json::json!({ "current_version": current_version })))
        }
        Reply::Outcome(outcome) => Ok(outcome),
        other => unreachable!("a write answers with an outcome, not {other:?}"),
    }
}

/// Runs `op` wherever its shard lives, bounded by [`REQUEST_TIMEOUT`].
async fn execute(svc: &Service, key: &[u8], op: Op) -> Result<Reply, ApiError> {
    let run = glommio::timer::timeout(REQUEST_TIMEOUT, async { Ok(svc.execute(key, op).await) });
    match run.await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ApiError::unavailable(
            "timeout",
            format!("no answer within {REQUEST_TIMEOUT:?}; the outcome of a write is unknown"),
        )),
    }
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::try_from(format!("\"{version}\"")).expect("digits and quotes are a valid header value")
}
