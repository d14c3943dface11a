//! Listening sockets. Every core accepts on the same address through its own
//! `SO_REUSEPORT` socket, so the kernel spreads connections over the cores.
//! Sockets are bound on the main thread before any executor starts, so an
//! occupied port is a clean startup error.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::service::Service;

/// Pending connections the kernel queues per socket.
const LISTEN_BACKLOG: i32 = 1024;
/// How long binding waits for an address that is still in use. A process
/// killed a moment ago can hold its listening sockets a little longer
/// (io_uring releases a dead ring's files asynchronously), and a restart
/// should not fail because of it.
const BIND_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const BIND_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let deadline = std::time::Instant::now() + BIND_RETRY_TIMEOUT;
    loop {
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(reuse_port)?;
        match s.bind(&addr.into()) {
            Ok(()) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(BIND_RETRY_INTERVAL);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Binds `count` listening sockets on `addr` (port 0: one port the kernel
/// picks, shared by all). Fails if anything else holds the address, even
/// another process that also uses `SO_REUSEPORT`.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    assert!(count > 0);
    if addr.port() != 0 {
        // Without SO_REUSEPORT this bind fails if anyone listens there.
        drop(socket(addr, false).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?);
    }
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let s = socket(addr, true).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        s.listen(LISTEN_BACKLOG)?;
        let l: TcpListener = s.into();
        addr = l.local_addr()?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Accepts connections on this core until shutdown, serving each with
/// `serve` in a task of its own.
pub async fn accept_loop<F, Fut>(listener: glommio::net::TcpListener, svc: Rc<Service>, serve: F)
where
    F: Fn(glommio::net::TcpStream, Rc<Service>) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            svc.shutdown.wait().await;
            None
        });
        match accepted.await {
            None => return,
            Some(Ok(stream)) => {
                glommio::spawn_local(serve(stream, svc.clone())).detach();
            }
            Some(Err(e)) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(core = svc.core_index, "accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
