//! CLUSTER SLOTS / SHARDS / NODES / INFO / KEYSLOT / MYID: the layout as
//! Redis Cluster clients read it (see [`crate::resp::topology`]).
//!
//! kvd's nodes are not each a master or a replica: every node leads some
//! shards and follows in others. SLOTS and SHARDS say it exactly (each slot
//! range with its own master and replicas); NODES, whose format has one
//! role per node, lists every node as a master of the ranges it leads.
//! A node whose RESP address is not known yet is left out of SLOTS and
//! SHARDS (its ranges too, if it is their master) and marked `noaddr` in
//! NODES.

use std::rc::Rc;

use kv_engine::slot;

use super::{later, now, Args, Exec};
use crate::resp::exec;
use crate::resp::frame::Frame;
use crate::resp::session::Conn;
use crate::resp::topology::{self, node_name, resp_endpoint, NodeView, ShardView};
use crate::service::Service;

pub fn keyslot(_: &Rc<Conn>, args: Args) -> Exec {
    now(Frame::Integer(slot::slot_of(&args[2]) as i64))
}

pub fn myid(conn: &Rc<Conn>, _: Args) -> Exec {
    now(Frame::bulk(node_name(conn.svc.layout.node_id)))
}

/// Runs `answer` over this node's view of the shards.
fn with_shards(conn: &Rc<Conn>, answer: fn(&Service, &NodeView, Vec<ShardView>) -> Frame) -> Exec {
    let conn = conn.clone();
    later(async move {
        match topology::node_view(&conn.svc).await {
            Ok(view) => {
                let shards = merge(topology::shards(&conn.svc, &view));
                answer(&conn.svc, &view, shards)
            }
            Err(e) => exec::core_error(e, false),
        }
    })
}

/// Adjacent shards with the same master and replicas as one range.
fn merge(shards: Vec<ShardView>) -> Vec<ShardView> {
    let mut out: Vec<ShardView> = Vec::new();
    for s in shards {
        match out.last_mut() {
            Some(last) if last.master == s.master && last.replicas == s.replicas && last.slots.end == s.slots.start => {
                last.slots.end = s.slots.end;
            }
            _ => out.push(s),
        }
    }
    out
}

pub fn slots(conn: &Rc<Conn>, _: Args) -> Exec {
    with_shards(conn, |svc, _, shards| {
        let node = |id: u64| {
            resp_endpoint(svc, id).map(|(host, port)| {
                Frame::Array(vec![Frame::bulk(host), Frame::Integer(port as i64), Frame::bulk(node_name(id))])
            })
        };
        let ranges = shards.iter().filter_map(|s| {
            let mut entry =
                vec![Frame::Integer(s.slots.start as i64), Frame::Integer(s.slots.end as i64 - 1), node(s.master)?];
            entry.extend(s.replicas.iter().filter_map(|r| node(*r)));
            Some(Frame::Array(entry))
        });
        Frame::Array(ranges.collect())
    })
}

pub fn shards(conn: &Rc<Conn>, _: Args) -> Exec {
    with_shards(conn, |svc, _, shards| {
        let node = |id: u64, role: &str| {
            let (host, port) = resp_endpoint(svc, id)?;
            Some(Frame::Map(vec![
                (Frame::bulk("id"), Frame::bulk(node_name(id))),
                (Frame::bulk("port"), Frame::Integer(port as i64)),
                (Frame::bulk("ip"), Frame::bulk(host.clone())),
                (Frame::bulk("endpoint"), Frame::bulk(host)),
                (Frame::bulk("role"), Frame::bulk(role)),
                (Frame::bulk("replication-offset"), Frame::Integer(0)),
                (Frame::bulk("health"), Frame::bulk("online")),
            ]))
        };
        let entries = shards.iter().filter_map(|s| {
            let mut nodes = vec![node(s.master, "master")?];
            nodes.extend(s.replicas.iter().filter_map(|r| node(*r, "replica")));
            let range = vec![Frame::Integer(s.slots.start as i64), Frame::Integer(s.slots.end as i64 - 1)];
            Some(Frame::Map(vec![
                (Frame::bulk("slots"), Frame::Array(range)),
                (Frame::bulk("nodes"), Frame::Array(nodes)),
            ]))
        });
        Frame::Array(entries.collect())
    })
}

pub fn nodes(conn: &Rc<Conn>, _: Args) -> Exec {
    with_shards(conn, |svc, _, shards| {
        let me = svc.layout.node_id;
        let links: Vec<(u64, bool)> =
            svc.owner.peers.iter().flat_map(|p| p.link_states()).map(|(n, _, up)| (n, up)).collect();
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        let mut text = String::new();
        for &id in &svc.layout.nodes {
            let addr = resp_endpoint(svc, id);
            let mut flags = if id == me { "myself,master".to_string() } else { "master".to_string() };
            if addr.is_none() {
                flags.push_str(",noaddr");
            }
            let (host, port) = addr.unwrap_or_default();
            let up = id == me || links.iter().any(|(n, up)| *n == id && *up);
            let ranges: Vec<String> = shards
                .iter()
                .filter(|s| s.master == id)
                .map(|s| match s.slots.end - s.slots.start {
                    1 => s.slots.start.to_string(),
                    _ => format!("{}-{}", s.slots.start, s.slots.end - 1),
                })
                .collect();
            text.push_str(&format!(
                "{} {host}:{port}@0 {flags} - 0 {now_ms} 0 {} {}\n",
                node_name(id),
                if up { "connected" } else { "disconnected" },
                ranges.join(" ")
            ));
        }
        Frame::Verbatim(text)
    })
}

pub fn info(conn: &Rc<Conn>, _: Args) -> Exec {
    with_shards(conn, |svc, _, shards| {
        let served: u32 =
            shards.iter().filter(|s| resp_endpoint(svc, s.master).is_some()).map(|s| s.slots.len() as u32).sum();
        let mut masters: Vec<u64> = shards.iter().map(|s| s.master).collect();
        masters.sort_unstable();
        masters.dedup();
        let all = slot::SLOT_COUNT as u32;
        let lines = [
            ("cluster_state", if served == all { "ok" } else { "fail" }.to_string()),
            ("cluster_slots_assigned", all.to_string()),
            ("cluster_slots_ok", served.to_string()),
            ("cluster_slots_pfail", "0".into()),
            ("cluster_slots_fail", (all - served).to_string()),
            ("cluster_known_nodes", svc.layout.nodes.len().to_string()),
            ("cluster_size", masters.len().to_string()),
            ("cluster_current_epoch", "0".into()),
            ("cluster_my_epoch", "0".into()),
            ("cluster_stats_messages_sent", "0".into()),
            ("cluster_stats_messages_received", "0".into()),
            ("total_cluster_links_buffer_limit_exceeded", "0".into()),
        ];
        Frame::Verbatim(lines.iter().map(|(k, v)| format!("{k}:{v}\r\n")).collect())
    })
}
