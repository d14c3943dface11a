//! Deep pipelines keep their order: a seeded random mix of reads, writes,
//! conditional writes and multi-key commands on a few keys, sent in one go
//! over two cores, must answer exactly what running them one by one does.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};

use super::{encode, Raw, Reply};
use crate::harness::{data_dir, seed, Kvd};

/// The commands of the mix and what a sequential server answers.
struct Model {
    map: BTreeMap<String, String>,
}

impl Model {
    fn apply(&mut self, cmd: &[String]) -> Reply {
        let m = &mut self.map;
        let get = |m: &BTreeMap<String, String>, k: &str| m.get(k).map_or(Reply::Nil, |v| Reply::bulk(v));
        match cmd[0].as_str() {
            "GET" => get(m, &cmd[1]),
            "SET" => {
                m.insert(cmd[1].clone(), cmd[2].clone());
                Reply::ok()
            }
            "SETNX" => Reply::Int(if m.contains_key(&cmd[1]) {
                0
            } else {
                m.insert(cmd[1].clone(), cmd[2].clone());
                1
            }),
            "GETSET" => {
                let old = get(m, &cmd[1]);
                m.insert(cmd[1].clone(), cmd[2].clone());
                old
            }
            "DEL" => Reply::Int(
                cmd[1..]
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .iter()
                    .filter(|k| m.remove(**k).is_some())
                    .count() as i64,
            ),
            "EXISTS" => Reply::Int(cmd[1..].iter().filter(|k| m.contains_key(*k)).count() as i64),
            "MGET" => Reply::Array(cmd[1..].iter().map(|k| get(m, k)).collect()),
            "MSET" => {
                for pair in cmd[1..].chunks(2) {
                    m.insert(pair[0].clone(), pair[1].clone());
                }
                Reply::ok()
            }
            "STRLEN" => Reply::Int(m.get(&cmd[1]).map_or(0, |v| v.len() as i64)),
            "DBSIZE" => Reply::Int(m.len() as i64),
            "PING" => Reply::Simple("PONG".into()),
            other => unreachable!("{other}"),
        }
    }
}

fn random_command(rng: &mut impl Rng, step: usize) -> Vec<String> {
    let key = |rng: &mut dyn rand::RngCore| format!("pk{}", rng.gen_range(0..6));
    let value = format!("v{step}");
    let cmd: Vec<String> = match rng.gen_range(0..12) {
        0..=2 => vec!["GET".into(), key(rng)],
        3..=5 => vec!["SET".into(), key(rng), value],
        6 => vec!["SETNX".into(), key(rng), value],
        7 => vec!["GETSET".into(), key(rng), value],
        8 => {
            let n = rng.gen_range(1..4);
            std::iter::once("DEL".to_string()).chain((0..n).map(|_| key(rng))).collect()
        }
        9 => {
            let n = rng.gen_range(1..5);
            let name = if rng.gen() { "MGET" } else { "EXISTS" };
            std::iter::once(name.to_string()).chain((0..n).map(|_| key(rng))).collect()
        }
        10 => vec!["MSET".into(), key(rng), value.clone(), key(rng), format!("{value}b")],
        _ => match rng.gen_range(0..3) {
            0 => vec!["STRLEN".into(), key(rng)],
            1 => vec!["DBSIZE".into()],
            _ => vec!["PING".into()],
        },
    };
    cmd
}

#[test]
fn pipelined_commands_answer_in_order_with_sequential_semantics() {
    let seed = seed("resp pipeline order");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0,1", "--fsync", "never"]);
    let mut model = Model { map: BTreeMap::new() };
    let mut conn = Raw::connect(kvd.resp_addr);
    for round in 0..5 {
        let commands: Vec<Vec<String>> = (0..2000).map(|i| random_command(&mut rng, round * 10_000 + i)).collect();
        let mut bytes = Vec::new();
        for c in &commands {
            let args: Vec<&[u8]> = c.iter().map(|a| a.as_bytes()).collect();
            bytes.extend_from_slice(&encode(&args));
        }
        conn.send(&bytes);
        for (i, c) in commands.iter().enumerate() {
            let want = model.apply(c);
            let got = conn.read().expect("a reply");
            assert_eq!(got, want, "round {round}, command {i}: {c:?} (seed {seed})");
        }
    }
    assert!(kvd.stop().success());
}
