//! One RESP connection's state (protocol version, authentication, name,
//! READONLY) and this core's registry of connections for CLIENT LIST.
//! Executors are single-threaded, so the registry is a thread-local: each
//! core lists the clients it serves.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::Instant;

use bytes::Bytes;

use super::codec::Caps;
use super::frame::Proto;
use super::stats::{self, CoreCounters};
use crate::service::Service;

/// Caps on one command's size beyond the value limit: keys and the command
/// name and options ride along with the largest value.
const COMMAND_OVERHEAD_BYTES: usize = 1024 * 1024;
/// Smallest cap on one command's total size: room for a multi-key command
/// (MSET, DEL) of many ordinary keys even when the value limit is small.
const COMMAND_BYTES_MIN: usize = 64 * 1024 * 1024;

thread_local! {
    static CLIENTS: RefCell<BTreeMap<u64, Weak<Conn>>> = const { RefCell::new(BTreeMap::new()) };
    static NEXT_SEQ: Cell<u64> = const { Cell::new(1) };
}

/// A connection as its commands see it.
pub struct Conn {
    pub svc: Rc<Service>,
    /// Unique on this node: cores hand out interleaved ids.
    pub id: u64,
    pub addr: String,
    pub laddr: String,
    pub created: Instant,
    pub last_active: Cell<Instant>,
    pub proto: Cell<Proto>,
    pub authenticated: Cell<bool>,
    /// Reads may be served by any replica, possibly stale (READONLY).
    pub readonly: Cell<bool>,
    pub name: RefCell<Bytes>,
    pub lib_name: RefCell<Bytes>,
    pub lib_ver: RefCell<Bytes>,
    pub last_command: Cell<&'static str>,
    /// QUIT was seen: answer what came before it and close.
    pub quit: Cell<bool>,
    pub counters: &'static CoreCounters,
}

impl Conn {
    /// A new connection, listed in this core's registry until dropped.
    pub fn register(svc: Rc<Service>, addr: String, laddr: String) -> Rc<Conn> {
        let seq = NEXT_SEQ.with(|s| s.replace(s.get() + 1));
        let id = seq * svc.layout.cores as u64 + svc.core_index as u64;
        let authenticated = svc.frontend.password.is_none();
        let counters = stats::of_core(svc.core_index);
        let conn = Rc::new(Conn {
            svc,
            id,
            addr,
            laddr,
            created: Instant::now(),
            last_active: Cell::new(Instant::now()),
            proto: Cell::new(Proto::Resp2),
            authenticated: Cell::new(authenticated),
            readonly: Cell::new(false),
            name: RefCell::new(Bytes::new()),
            lib_name: RefCell::new(Bytes::new()),
            lib_ver: RefCell::new(Bytes::new()),
            last_command: Cell::new("NULL"),
            quit: Cell::new(false),
            counters,
        });
        CLIENTS.with(|c| c.borrow_mut().insert(id, Rc::downgrade(&conn)));
        conn
    }

    /// Whether commands other than AUTH/HELLO/QUIT are refused for now.
    pub fn needs_auth(&self) -> bool {
        !self.authenticated.get()
    }

    /// Size limits for the next command.
    pub fn caps(&self) -> Caps {
        let limits = &self.svc.limits;
        let bulk = limits.frame_bytes_max.max(limits.key_bytes_max);
        let caps = Caps {
            args_max: super::codec::ARGS_MAX,
            bulk_bytes_max: bulk,
            command_bytes_max: (bulk + COMMAND_OVERHEAD_BYTES).max(COMMAND_BYTES_MIN),
            unauthenticated: false,
        };
        if self.needs_auth() {
            caps.unauthenticated()
        } else {
            caps
        }
    }

    /// The `CLIENT LIST` / `CLIENT INFO` line.
    pub fn info_line(&self) -> String {
        let now = Instant::now();
        let text = |b: &RefCell<Bytes>| String::from_utf8_lossy(&b.borrow()).into_owned();
        format!(
            "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db=0 sub=0 psub=0 ssub=0 multi=-1 \
             cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            text(&self.name),
            now.duration_since(self.created).as_secs(),
            now.duration_since(self.last_active.get()).as_secs(),
            if self.readonly.get() { "r" } else { "N" },
            self.last_command.get(),
            self.proto.get().number(),
            text(&self.lib_name),
            text(&self.lib_ver),
        )
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // try_with: the thread-local may be gone when the executor ends.
        let _ = CLIENTS.try_with(|c| c.borrow_mut().remove(&self.id));
    }
}

/// The connections of this core, by id.
pub fn clients_of_this_core() -> Vec<Rc<Conn>> {
    CLIENTS.with(|c| c.borrow().values().filter_map(Weak::upgrade).collect())
}
