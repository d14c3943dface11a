//! Reports: the readable text of a failed check, listing the key's events
//! with their times, and the helpers that describe operations, outcomes,
//! keys and values.

use std::fmt::Write as _;

use super::search::Failure;
use super::{Event, Op, Operation, Outcome};

pub(super) fn report(key: &[u8], events: &[&Event], ops: &[Operation], failure: &Failure) -> String {
    let mut text = match failure {
        Failure::NotLinearizable { longest } => {
            let prefix = longest.iter().map(|&op| format!("#{}", ops[op].event)).collect::<Vec<_>>();
            format!(
                "history of key {} is not linearizable; the longest linearizable prefix found is [{}], \
                 and no order of the remaining events fits\n",
                show_key(key),
                prefix.join(", "),
            )
        }
        Failure::Inconclusive { explored } => format!(
            "linearizability check of key {} was inconclusive: gave up after exploring {explored} states\n",
            show_key(key),
        ),
    };
    text.push_str(&describe_events(events));
    text
}

/// One line per event, times in microseconds since the first invocation.
pub(super) fn describe_events(events: &[&Event]) -> String {
    let origin = events.iter().map(|e| e.invoked_ns).min().unwrap_or(0);
    let mut text = String::from("events, sorted by invocation (times in µs since the first invocation):\n");
    for (index, event) in events.iter().enumerate() {
        let completed = match (&event.outcome, event.completed_ns) {
            (Outcome::Unknown, _) | (_, None) => "?".to_string(),
            (_, Some(done)) => micros(done.saturating_sub(origin)),
        };
        let _ = writeln!(
            text,
            "  #{index:<4} client {:<4} [{:>12} .. {:>12}]  {:<28} -> {}",
            event.client,
            micros(event.invoked_ns.saturating_sub(origin)),
            completed,
            describe_op(&event.op),
            describe_outcome(&event.op, &event.outcome),
        );
    }
    text
}

fn describe_op(op: &Op) -> String {
    match op {
        Op::Put(value) => format!("put {}", show_value(value)),
        Op::Get => "get".to_string(),
        Op::Delete => "delete".to_string(),
        Op::Cas { expected, new } => format!("cas {} -> {}", show_value(expected), show_value(new)),
    }
}

fn describe_outcome(op: &Op, outcome: &Outcome) -> String {
    match outcome {
        Outcome::PutOk => "ok".to_string(),
        Outcome::GetOk(Some(value)) => show_value(value),
        Outcome::GetOk(None) => "absent".to_string(),
        Outcome::DeleteOk { existed: true } => "ok (existed)".to_string(),
        Outcome::DeleteOk { existed: false } => "ok (was absent)".to_string(),
        Outcome::CasOk => "ok (swapped)".to_string(),
        Outcome::CasFailed => "failed (did not hold the expected value)".to_string(),
        Outcome::Unknown if *op == Op::Get => "unknown (ignored: constrains nothing)".to_string(),
        Outcome::Unknown => "unknown (may take effect after invocation, or never)".to_string(),
    }
}

/// Nanoseconds as microseconds with one decimal, without float rounding surprises.
fn micros(ns: u64) -> String {
    format!("{}.{}", ns / 1000, ns % 1000 / 100)
}

pub(super) fn show_key(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}

/// A value as quoted lossy UTF-8, cut short if long so a report stays readable.
fn show_value(value: &[u8]) -> String {
    const SHOWN: usize = 40;
    if value.len() <= SHOWN {
        format!("{:?}", String::from_utf8_lossy(value))
    } else {
        format!("{:?}…({} bytes)", String::from_utf8_lossy(&value[..SHOWN]), value.len())
    }
}
