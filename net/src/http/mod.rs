//! The HTTP/JSON API: hyper's HTTP/1.1 server on glommio, one accept loop
//! per core like the other protocols.
//!
//! - [`io`] and [`timer`]: hyper's runtime traits over glommio.
//! - [`router`]: authentication, routes and methods; [`kv`] and [`admin`]:
//!   the handlers; [`request`] and [`reply`]: reading requests and the JSON
//!   error shape.
//!
//! Limits: headers (request line included) are read within
//! [`HEADER_READ_TIMEOUT`] into a buffer of at most [`max_buf_bytes`]
//! (hyper answers 431 past it), which leaves room for a maximal key written
//! entirely in `%XX` escapes; a body over the value limit is refused by its
//! Content-Length before it is read, or as soon as it passes the limit
//! (413); connections count against the core's share of the node's limit,
//! like native ones.
//!
//! Stop: when the core shuts down, each connection finishes the request it
//! is serving and closes (bounded by [`DRAIN_TIMEOUT`]).

pub mod admin;
pub mod io;
pub mod kv;
pub mod reply;
pub mod request;
pub mod router;
pub mod timer;

use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use hyper::server::conn::http1;
use hyper::service::service_fn;

use crate::limits::Limits;
use crate::metrics::{OpLabel, Protocol, StatusLabel};
use crate::service::Service;

/// A client must send a request's headers within this time once the
/// connection waits for them (idle keep-alive connections close after it).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A write to a client that does not read for this long fails the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping core lets a connection finish its request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Room for the request line and headers besides the key.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;

/// hyper's read buffer limit: the headers, plus a maximal key in the path
/// with every byte escaped as `%XX`.
pub fn max_buf_bytes(limits: &Limits) -> usize {
    HEADER_BYTES_MAX + 3 * limits.key_bytes_max
}

/// Serves one accepted connection until the client leaves, the stream
/// breaks or the core shuts down.
pub async fn serve(stream: TcpStream, svc: Rc<Service>) {
    let peer: Rc<str> = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default().into();
    svc.connections.set(svc.connections.get() + 1);
    let result = serve_connection(stream, &svc, &peer).await;
    svc.connections.set(svc.connections.get() - 1);
    if let Err(e) = result {
        tracing::debug!(%peer, "HTTP connection closed: {e}");
    }
}

async fn serve_connection(mut stream: TcpStream, svc: &Rc<Service>, peer: &Rc<str>) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| e.to_string())?;
    if svc.connections.get() > svc.connections_max() {
        svc.metrics.request(Protocol::Http, OpLabel::Other, StatusLabel::Unavailable, Duration::ZERO);
        let _ = stream.write_all(&too_many_connections()).await;
        let _ = stream.close().await;
        return Err("refused: too many connections".into());
    }
    let (svc2, peer2) = (svc.clone(), peer.clone());
    let service = service_fn(move |req| router::handle(svc2.clone(), peer2.clone(), req));
    let mut builder = http1::Builder::new();
    builder
        .timer(timer::GlommioTimer)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(max_buf_bytes(&svc.limits))
        .keep_alive(true);
    let conn = builder.serve_connection(io::GlommioIo(stream), service);
    let mut conn = std::pin::pin!(conn);
    let finished = futures_lite::future::or(async { Some(conn.as_mut().await) }, async {
        svc.shutdown.wait().await;
        None
    })
    .await;
    let result = match finished {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            let drained = glommio::timer::timeout(DRAIN_TIMEOUT, async { Ok(conn.as_mut().await) }).await;
            drained.map_err(|_| format!("still busy {DRAIN_TIMEOUT:?} after shutdown"))?
        }
    };
    result.map_err(|e| {
        if e.is_parse() || e.is_parse_too_large() {
            let status = if e.is_parse_too_large() { StatusLabel::TooLarge } else { StatusLabel::BadRequest };
            svc.metrics.request(Protocol::Http, OpLabel::Other, status, Duration::ZERO);
        }
        e.to_string()
    })
}

/// The whole answer to a connection over the limit.
fn too_many_connections() -> Vec<u8> {
    let body = serde_json::json!({
        "error": "too many connections; retry later", "code": "too_many_connections",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        reply::RETRY_AFTER_SECONDS,
        body.len()
    )
    .into_bytes()
}
