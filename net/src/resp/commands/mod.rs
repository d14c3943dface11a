//! The RESP command table and how a command line is resolved against it.
//!
//! Every command is a [`Spec`]: its name, Redis arity (positive: exact,
//! negative: at least), flags and key positions as COMMAND reports them,
//! what it touches ([`Access`], which [`super::batch`] schedules by), and
//! its handler. Containers (CLIENT, CONFIG, CLUSTER, COMMAND) carry their
//! subcommands as specs named `container|sub`. [`resolve`] checks, in
//! Redis's order: the name, the arity, the subcommand, authentication.

mod cluster;
mod compute;
mod config;
mod connection;
mod info;
mod introspect;
mod keys;
mod scan;
mod server;
mod strings;
mod table;
mod ttl;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;

pub use table::COMMANDS;

use super::frame::Frame;
use super::session::Conn;
use super::stats;

/// A command line: the name, then its arguments.
pub type Args = Vec<Bytes>;
/// A reply that needs waiting for (a shard operation, a cross-core query).
pub type Later = Pin<Box<dyn Future<Output = Frame>>>;

/// What a handler returns.
pub enum Exec {
    Now(Frame),
    Later(Later),
}

pub type Handler = fn(&Rc<Conn>, Args) -> Exec;

/// What a command touches, which decides how it is ordered in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No stored data (it may change the connection's own state).
    None,
    /// The keys at its key positions; `write` if it may change them.
    Keys { write: bool },
    /// The whole data set, or time itself (DBSIZE, INFO, DEBUG SLEEP).
    All,
}

pub struct Spec {
    /// Lower case; `container|sub` for subcommands.
    pub name: &'static str,
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub access: Access,
    /// Key positions (first, last, step) as COMMAND reports them; last -1
    /// means the last argument.
    pub keys: (i32, i32, i32),
    pub group: &'static str,
    pub summary: &'static str,
    pub handler: Handler,
    pub subcommands: &'static [Spec],
}

impl Spec {
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = self.arity as i64;
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }

    /// The arguments that are keys.
    pub fn key_args<'a>(&self, args: &'a [Bytes]) -> impl Iterator<Item = &'a Bytes> {
        let (first, last, step) = self.keys;
        let end = if last < 0 { args.len() as i64 + last as i64 } else { last as i64 };
        let (first, end) = if first <= 0 { (1, 0) } else { (first as usize, end.max(0) as usize) };
        args.iter().take(end + 1).skip(first).step_by(step.max(1) as usize)
    }
}

/// How a batch schedules a resolved command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Touches no data: runs in place.
    Free,
    /// One key: runs beside other commands on other keys.
    Key { key: Bytes, write: bool },
    /// Several keys or all data: runs alone, after everything before it.
    Barrier,
}

pub fn class(spec: &Spec, args: &[Bytes]) -> Class {
    match spec.access {
        Access::None => Class::Free,
        Access::All => Class::Barrier,
        Access::Keys { write } => {
            let mut keys = spec.key_args(args);
            match (keys.next(), keys.next()) {
                (Some(key), None) => Class::Key { key: key.clone(), write },
                _ => Class::Barrier,
            }
        }
    }
}

/// The outcome of looking a command line up.
pub enum Resolved {
    Run(&'static Spec, Args),
    Reply(Frame),
    /// Not a Redis client (an HTTP request): close without answering.
    Close,
}

/// Looks up `args` and checks it may run now.
pub fn resolve(conn: &Conn, args: Args) -> Resolved {
    let name = &args[0];
    if name.eq_ignore_ascii_case(b"post") || name.eq_ignore_ascii_case(b"host:") {
        tracing::warn!(peer = %conn.addr, "an HTTP request on the RESP port (possible cross-protocol attack); closing");
        return Resolved::Close;
    }
    stats::add(&conn.counters.commands_total, 1);
    let Some(mut spec) = lookup(COMMANDS, name) else {
        return Resolved::Reply(unknown_command(&args));
    };
    if !spec.arity_ok(args.len()) {
        return Resolved::Reply(wrong_arity(spec.name));
    }
    if !spec.subcommands.is_empty() && args.len() >= 2 {
        match lookup(spec.subcommands, &args[1]) {
            Some(sub) if !sub.arity_ok(args.len()) => return Resolved::Reply(wrong_arity(sub.name)),
            Some(sub) => spec = sub,
            None if args[1].eq_ignore_ascii_case(b"help") => return Resolved::Reply(help(spec)),
            None => {
                let sub = String::from_utf8_lossy(&args[1]);
                let container = spec.name.to_uppercase();
                return Resolved::Reply(Frame::error(format!(
                    "ERR unknown subcommand '{sub:.128}'. Try {container} HELP."
                )));
            }
        }
    }
    if conn.needs_auth() && !spec.has_flag("no-auth") {
        return Resolved::Reply(Frame::error("NOAUTH Authentication required."));
    }
    conn.last_command.set(spec.name);
    Resolved::Run(spec, args)
}

/// A command (or a subcommand: matched on the part after `|`) by name,
/// case-insensitively.
pub fn lookup(table: &'static [Spec], name: &[u8]) -> Option<&'static Spec> {
    table.iter().find(|s| s.name.rsplit('|').next().expect("a name").as_bytes().eq_ignore_ascii_case(name))
}

fn unknown_command(args: &[Bytes]) -> Frame {
    let mut rest = String::new();
    for a in &args[1..] {
        if rest.len() >= 128 {
            break;
        }
        let text = String::from_utf8_lossy(a);
        let room = 128 - rest.len();
        rest.push_str(&format!("'{}' ", text.chars().take(room).collect::<String>()));
    }
    let name: String = String::from_utf8_lossy(&args[0]).chars().take(128).collect();
    Frame::error(format!("ERR unknown command '{name}', with args beginning with: {rest}"))
}

fn wrong_arity(name: &str) -> Frame {
    Frame::error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn help(spec: &Spec) -> Frame {
    let container = spec.name.to_uppercase();
    let mut lines = vec![Frame::bulk(format!("{container} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"))];
    for sub in spec.subcommands {
        lines.push(Frame::bulk(sub.name.rsplit('|').next().expect("a name").to_uppercase()));
        lines.push(Frame::bulk(format!("    {}", sub.summary)));
    }
    lines.push(Frame::bulk("HELP"));
    lines.push(Frame::bulk("    Print this help."));
    Frame::Array(lines)
}

// Helpers the handlers share.

fn now(frame: Frame) -> Exec {
    Exec::Now(frame)
}

fn later(f: impl Future<Output = Frame> + 'static) -> Exec {
    Exec::Later(Box::pin(f))
}

fn syntax_error() -> Frame {
    Frame::error("ERR syntax error")
}

fn not_an_integer() -> Frame {
    Frame::error("ERR value is not an integer or out of range")
}

/// An integer argument, as Redis parses one (no spaces, no `+`).
fn int_arg(arg: &[u8]) -> Result<i64, Frame> {
    let text = std::str::from_utf8(arg).map_err(|_| not_an_integer())?;
    if text.starts_with('+') || text.len() > 20 {
        return Err(not_an_integer());
    }
    text.parse().map_err(|_| not_an_integer())
}

fn lower(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut names = std::collections::BTreeSet::new();
        for spec in COMMANDS {
            assert!(names.insert(spec.name), "{} twice", spec.name);
            assert_eq!(spec.name, spec.name.to_lowercase());
            assert!(!spec.name.contains('|'));
            for sub in spec.subcommands {
                assert!(sub.name.starts_with(&format!("{}|", spec.name)), "{}", sub.name);
                assert!(sub.arity.unsigned_abs() >= 2, "{}", sub.name);
            }
            if matches!(spec.access, Access::Keys { .. }) {
                assert!(spec.keys.0 >= 1, "{} has keys", spec.name);
            }
        }
    }

    #[test]
    fn key_positions() {
        let args: Vec<Bytes> = ["mset", "a", "1", "b", "2"].iter().map(|s| Bytes::from(*s)).collect();
        let mset = lookup(COMMANDS, b"MSET").unwrap();
        assert_eq!(mset.key_args(&args).collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(class(mset, &args), Class::Barrier);
        let del = lookup(COMMANDS, b"del").unwrap();
        assert_eq!(class(del, &args[..2]), Class::Key { key: Bytes::from("a"), write: true });
        let get = lookup(COMMANDS, b"Get").unwrap();
        assert_eq!(class(get, &args[..2]), Class::Key { key: Bytes::from("a"), write: false });
        assert_eq!(class(lookup(COMMANDS, b"ping").unwrap(), &args[..1]), Class::Free);
    }

    #[test]
    fn arity_and_errors_read_like_redis() {
        let get = lookup(COMMANDS, b"get").unwrap();
        assert!(get.arity_ok(2) && !get.arity_ok(3));
        let args: Vec<Bytes> = ["foo", "a", "b"].iter().map(|s| Bytes::from(*s)).collect();
        assert_eq!(
            unknown_command(&args),
            Frame::error("ERR unknown command 'foo', with args beginning with: 'a' 'b' ")
        );
        assert_eq!(int_arg(b"-12"), Ok(-12));
        assert!(int_arg(b"+1").is_err() && int_arg(b"1.5").is_err() && int_arg(b"").is_err());
    }
}
