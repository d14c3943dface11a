//! COMMAND, COMMAND COUNT / LIST / INFO / DOCS, from the command table:
//! what cluster clients read to find key positions, and what redis-cli
//! reads for its hints.

use std::rc::Rc;

use super::{lookup, now, Access, Args, Exec, Spec, COMMANDS};
use crate::resp::frame::Frame;
use crate::resp::session::Conn;

/// COMMAND without a subcommand: every command's INFO entry.
pub fn command(_: &Rc<Conn>, _: Args) -> Exec {
    now(Frame::Array(COMMANDS.iter().map(info_entry).collect()))
}

pub fn count(_: &Rc<Conn>, _: Args) -> Exec {
    now(Frame::Integer(COMMANDS.len() as i64))
}

pub fn list(_: &Rc<Conn>, _: Args) -> Exec {
    now(Frame::Array(COMMANDS.iter().map(|s| Frame::bulk(s.name)).collect()))
}

/// COMMAND INFO [name ...]: an entry per name, nil for unknown names.
pub fn info(_: &Rc<Conn>, args: Args) -> Exec {
    if args.len() == 2 {
        return now(Frame::Array(COMMANDS.iter().map(info_entry).collect()));
    }
    now(Frame::Array(args[2..].iter().map(|n| find(n).map_or(Frame::NullArray, info_entry)).collect()))
}

/// COMMAND DOCS [name ...]: a map of name to summary, group and subcommands.
pub fn docs(_: &Rc<Conn>, args: Args) -> Exec {
    let specs: Vec<&Spec> =
        if args.len() == 2 { COMMANDS.iter().collect() } else { args[2..].iter().filter_map(|n| find(n)).collect() };
    now(Frame::Map(specs.into_iter().map(|s| (Frame::bulk(s.name), doc_entry(s))).collect()))
}

/// A command, or a subcommand named `container|sub`.
fn find(name: &[u8]) -> Option<&'static Spec> {
    let text = String::from_utf8_lossy(name).to_ascii_lowercase();
    match text.split_once('|') {
        Some((container, sub)) => lookup(lookup(COMMANDS, container.as_bytes())?.subcommands, sub.as_bytes()),
        None => lookup(COMMANDS, name),
    }
}

/// Redis 7's ten-field entry: name, arity, flags, first key, last key,
/// step, ACL categories, tips, key specs, subcommands.
fn info_entry(s: &Spec) -> Frame {
    let flags = s.flags.iter().map(|f| Frame::Simple(f)).collect();
    Frame::Array(vec![
        Frame::bulk(s.name),
        Frame::Integer(s.arity as i64),
        Frame::Set(flags),
        Frame::Integer(s.keys.0 as i64),
        Frame::Integer(s.keys.1 as i64),
        Frame::Integer(s.keys.2 as i64),
        Frame::Set(categories(s).into_iter().map(Frame::Simple).collect()),
        Frame::Array(Vec::new()),
        Frame::Array(Vec::new()),
        Frame::Array(s.subcommands.iter().map(info_entry).collect()),
    ])
}

fn categories(s: &Spec) -> Vec<&'static str> {
    let mut cats = Vec::new();
    match s.access {
        Access::Keys { write: true } => cats.extend(["@write", "@keyspace"]),
        Access::Keys { write: false } => cats.extend(["@read", "@keyspace"]),
        Access::All | Access::None => {}
    }
    cats.push(match s.group {
        "string" => "@string",
        "connection" => "@connection",
        "generic" => "@keyspace",
        _ => "@admin",
    });
    cats.push(if s.has_flag("fast") { "@fast" } else { "@slow" });
    cats.dedup();
    cats
}

fn doc_entry(s: &Spec) -> Frame {
    let mut fields =
        vec![(Frame::bulk("summary"), Frame::bulk(s.summary)), (Frame::bulk("group"), Frame::bulk(s.group))];
    if !s.subcommands.is_empty() {
        let subs = s.subcommands.iter().map(|sub| (Frame::bulk(sub.name), doc_entry(sub))).collect();
        fields.push((Frame::bulk("subcommands"), Frame::Map(subs)));
    }
    Frame::Map(fields)
}
