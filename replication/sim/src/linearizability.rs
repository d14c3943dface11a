//! Linearizability checking of client histories against a replicated kvd.
//!
//! Tests run clients concurrently and record, for every operation, when it was
//! invoked, when (if ever) it completed, and what the client learned; `check`
//! then decides whether some single order of those operations, consistent with
//! real time, explains every answer. The model treats each key as an independent
//! register that is either absent or holds a byte string, so each key's history
//! is checked on its own (linearizability is compositional). Per key, the check
//! is the Wing–Gong–Lowe search used by Porcupine and Knossos: walk the
//! invocations and responses in time order, tentatively linearize any operation
//! invoked before the first pending response, and backtrack (with an undo stack)
//! when a response is reached whose operation could not be placed; states already
//! seen, as (set of linearized operations, register value), are memoized so that
//! no state is explored twice. An operation whose outcome is unknown has no
//! response: it may take effect at any time after its invocation, or never, so
//! nothing forces the search to place it; as it can only write, the search places
//! it only where a later read or delete needs it to explain its answer (see "The
//! search" below for why that loses nothing). The search is bounded: past a
//! configurable number of states it reports the check as inconclusive instead of
//! running on, and a failure report lists the key's events with their times.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// An operation a client invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>),
    Get,
    Delete,
}

/// What the client learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The put was acknowledged.
    PutOk,
    /// The read returned this (None: the key was absent).
    GetOk(Option<Vec<u8>>),
    /// The delete was acknowledged; `existed` says whether the key was there.
    DeleteOk { existed: bool },
    /// No answer (timeout, connection lost, an error with unknown outcome): the
    /// operation may or may not have taken effect, at any time after its invocation.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub client: usize,
    pub key: Vec<u8>,
    pub op: Op,
    /// Nanoseconds since a common origin (the test's start).
    pub invoked_ns: u64,
    /// None when the outcome is Unknown (the operation may take effect any time
    /// after invocation, including never).
    pub completed_ns: Option<u64>,
    pub outcome: Outcome,
}

/// How many distinct search states one key's check may explore before it gives up.
/// Each state is remembered as a bitset of the key's operations, so this also
/// bounds memory: for 300 operations, about 90 bytes a state, so the default
/// allows roughly half a gigabyte and ten seconds before giving up.
const MAX_STATES: usize = 5_000_000;

/// Checks every key's history; Err names the first key whose history is not
/// linearizable, and prints that key's events (sorted by invocation) in the message.
pub fn check(history: &[Event]) -> Result<(), String> {
    check_with_budget(history, MAX_STATES)
}

/// `check` with an explicit bound on the states explored per key. Keys are
/// checked in byte order, so "first" does not depend on how clients' histories
/// were merged.
fn check_with_budget(history: &[Event], max_states: usize) -> Result<(), String> {
    let mut inconclusive = None;
    for (key, events) in by_key(history) {
        match check_key(key, &events, max_states) {
            Ok(()) => {}
            Err(Rejection::Definite(report)) => return Err(report),
            // Keep going: a definite violation on another key says more.
            Err(Rejection::Inconclusive(report)) => {
                inconclusive.get_or_insert(report);
            }
        }
    }
    inconclusive.map_or(Ok(()), Err)
}

/// Why a key's check failed, as a readable report.
enum Rejection {
    /// The history is not linearizable, or is malformed.
    Definite(String),
    /// The state budget ran out.
    Inconclusive(String),
}

/// Groups events by key, each group sorted by invocation (then completion, then
/// client) so that reports list them in a stable, readable order.
fn by_key(history: &[Event]) -> BTreeMap<&[u8], Vec<&Event>> {
    let mut keys: BTreeMap<&[u8], Vec<&Event>> = BTreeMap::new();
    for event in history {
        keys.entry(event.key.as_slice()).or_default().push(event);
    }
    for events in keys.values_mut() {
        events.sort_by_key(|e| (e.invoked_ns, e.completed_ns.unwrap_or(u64::MAX), e.client));
    }
    keys
}

fn check_key(key: &[u8], events: &[&Event], max_states: usize) -> Result<(), Rejection> {
    let ops = operations(events).map_err(|(index, why)| {
        Rejection::Definite(format!(
            "malformed event #{index} for key {}: {why}\n{}",
            show_key(key),
            describe_events(events)
        ))
    })?;
    Search::new(&ops, max_states).run().map_err(|failure| {
        let report = report(key, events, &ops, &failure);
        match failure {
            Failure::NotLinearizable { .. } => Rejection::Definite(report),
            Failure::Inconclusive { .. } => Rejection::Inconclusive(report),
        }
    })
}

// ---------------------------------------------------------------------------
// The register model.

/// The register: None when the key is absent, else the id of its value.
type State = Option<usize>;

/// An operation reduced to its effect on the register; values are interned ids,
/// so comparing them is cheap and states are small.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Sets the register without observing it: a put (Some), or a delete whose
    /// answer is unknown (None), which therefore says nothing about the old value.
    Write(State),
    /// Observes the register.
    Read(State),
    /// Empties the register, which must have held a value exactly when `existed`.
    Delete { existed: bool },
}

/// The register after `step`, or None when `step`'s answer is impossible in `state`.
fn apply(state: State, step: Step) -> Option<State> {
    match step {
        Step::Write(value) => Some(value),
        Step::Read(seen) => (seen == state).then_some(state),
        Step::Delete { existed } => (existed == state.is_some()).then_some(None),
    }
}

/// One operation the search has to place.
#[derive(Debug)]
struct Operation {
    /// Index into the key's sorted events, for reports.
    event: usize,
    step: Step,
    invoked: u64,
    /// None: no response, so the operation may take effect any time after its
    /// invocation, or never.
    completed: Option<u64>,
}

/// Turns a key's events into operations; Err carries the offending event's index.
fn operations(events: &[&Event]) -> Result<Vec<Operation>, (usize, String)> {
    let mut values = Interner::new(events);
    let mut ops = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let step = step_of(event, &mut values).map_err(|why| (index, why))?;
        let completed = completion_of(event).map_err(|why| (index, why))?;
        if let Some(step) = step {
            ops.push(Operation { event: index, step, invoked: event.invoked_ns, completed });
        }
    }
    Ok(ops)
}

/// The model step for an event, or None for an event that constrains nothing.
fn step_of<'a>(event: &'a Event, values: &mut Interner<'a>) -> Result<Option<Step>, String> {
    let step = match (&event.op, &event.outcome) {
        // A read nobody saw the answer to can always be placed somewhere harmless.
        (Op::Get, Outcome::Unknown) => return Ok(None),
        (Op::Get, Outcome::GetOk(seen)) => Step::Read(seen.as_deref().map(|v| values.id(v))),
        // Whether or not the put was acknowledged, if it takes effect it sets the value.
        (Op::Put(value), Outcome::PutOk | Outcome::Unknown) => Step::Write(Some(values.id(value))),
        (Op::Delete, Outcome::DeleteOk { existed }) => Step::Delete { existed: *existed },
        (Op::Delete, Outcome::Unknown) => Step::Write(None),
        (op, outcome) => return Err(format!("{op:?} cannot have the outcome {outcome:?}")),
    };
    Ok(Some(step))
}

/// When the operation's effect must have happened by, if there is such a time.
fn completion_of(event: &Event) -> Result<Option<u64>, String> {
    match (&event.outcome, event.completed_ns) {
        // Even if the client recorded when it gave up, the request may still be
        // applied later (a retry, a queued proposal), so that time bounds nothing.
        (Outcome::Unknown, _) => Ok(None),
        (_, None) => Err("it has an outcome but no completion time".to_string()),
        (_, Some(done)) if done < event.invoked_ns => {
            Err(format!("it completed at {done} ns, before it was invoked at {} ns", event.invoked_ns))
        }
        (_, Some(done)) => Ok(Some(done)),
    }
}

/// The id shared by every value that no read in the key's history returned.
/// Nothing can tell such values apart (a read comparing the register with a value
/// it returned finds none of them equal), so merging them loses nothing, and it
/// makes writes of them interchangeable: fewer distinct states to explore.
const UNREAD: usize = 0;

/// Gives equal byte strings equal small ids, and every value never read `UNREAD`.
struct Interner<'a> {
    read: HashSet<&'a [u8]>,
    ids: HashMap<&'a [u8], usize>,
}

impl<'a> Interner<'a> {
    fn new(events: &[&'a Event]) -> Interner<'a> {
        let read = events
            .iter()
            .filter_map(|e| match &e.outcome {
                Outcome::GetOk(Some(value)) => Some(value.as_slice()),
                _ => None,
            })
            .collect();
        Interner { read, ids: HashMap::new() }
    }

    fn id(&mut self, value: &'a [u8]) -> usize {
        if !self.read.contains(value) {
            return UNREAD;
        }
        let next = self.ids.len() + 1;
        *self.ids.entry(value).or_insert(next)
    }
}

// ---------------------------------------------------------------------------
// The timeline: invocations and responses in time order, as a doubly linked list
// from which a linearized operation's entries are lifted and later restored.

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// An invocation; `response` is the node of its response, if it has one.
    Call {
        response: Option<usize>,
    },
    Return,
}

#[derive(Debug)]
struct Node {
    op: usize,
    kind: Kind,
}

struct Timeline {
    nodes: Vec<Node>,
    head: Option<usize>,
    next: Vec<Option<usize>>,
    prev: Vec<Option<usize>>,
}

impl Timeline {
    fn new(ops: &[Operation]) -> Timeline {
        let order = time_order(ops);
        let mut response_node = vec![None; ops.len()];
        for (node, &(_, is_return, op)) in order.iter().enumerate() {
            if is_return {
                response_node[op] = Some(node);
            }
        }
        let nodes = order
            .iter()
            .map(|&(_, is_return, op)| Node {
                op,
                kind: if is_return { Kind::Return } else { Kind::Call { response: response_node[op] } },
            })
            .collect::<Vec<_>>();
        let count = nodes.len();
        Timeline {
            nodes,
            head: (count > 0).then_some(0),
            next: (0..count).map(|n| (n + 1 < count).then_some(n + 1)).collect(),
            prev: (0..count).map(|n| n.checked_sub(1)).collect(),
        }
    }

    /// Removes a call and its response (if any) from the list; their own links
    /// are kept so that `restore` can put them back.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if let Kind::Call { response: Some(response) } = self.nodes[call].kind {
            self.unlink(response);
        }
    }

    /// Undoes the most recent `lift` still in effect, which must have been of `call`.
    fn restore(&mut self, call: usize) {
        // The reverse of lift's order, so that each node's saved neighbours are
        // exactly the ones around it at the time.
        if let Kind::Call { response: Some(response) } = self.nodes[call].kind {
            self.relink(response);
        }
        self.relink(call);
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        match prev {
            Some(p) => self.next[p] = next,
            None => self.head = next,
        }
        if let Some(n) = next {
            self.prev[n] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        match self.prev[node] {
            Some(p) => self.next[p] = Some(node),
            None => self.head = Some(node),
        }
        if let Some(n) = self.next[node] {
            self.prev[n] = Some(node);
        }
    }
}

/// Every invocation and response as (time, is_return, op), in time order. At equal
/// times invocations come first: an operation that completed at the very instant
/// another was invoked did not complete *before* it, so the two are concurrent.
/// Operations without a response contribute only their invocation.
fn time_order(ops: &[Operation]) -> Vec<(u64, bool, usize)> {
    let mut order = Vec::with_capacity(2 * ops.len());
    for (index, op) in ops.iter().enumerate() {
        order.push((op.invoked, false, index));
        if let Some(completed) = op.completed {
            order.push((completed, true, index));
        }
    }
    order.sort_unstable();
    order
}

// ---------------------------------------------------------------------------
// The search.
//
// Operations without a response (unknown outcome) are never linearized on their
// own. Each is a blind write, so in any linearization it either is immediately
// followed by an operation that observes the register and could not be explained
// without it, or it can be dropped: a write right after it, or the end of the
// history, hides it; an observer that fits the register without it leaves the
// same state either way. So the search places such a write only as the
// "enabler" of a read or acknowledged delete that does not fit as it is. That
// finds a linearization whenever one exists, and keeps pending writes out of the
// memo unless they matter: otherwise each would double the states explored from
// its invocation to the end of the history.

/// Why a key's history was not accepted.
#[derive(Debug)]
enum Failure {
    /// No linearization exists. `longest` is the longest sequence of operations
    /// (indices into the operations) that the search managed to linearize.
    NotLinearizable { longest: Vec<usize> },
    /// The state budget ran out before the search could decide.
    Inconclusive { explored: usize },
}

/// One step of the current partial linearization, as kept on the undo stack.
#[derive(Debug, Clone, Copy)]
struct Choice {
    /// The call node of the operation linearized.
    call: usize,
    /// The call node of an unknown-outcome write linearized just before it.
    enabler: Option<usize>,
    /// The register before both.
    before: State,
}

/// A pending unknown-outcome write that would let an observer fit.
#[derive(Debug, Clone, Copy)]
struct Enabler {
    call: usize,
    written: State,
    /// The register after the write and then the observer.
    after: State,
}

struct Search<'a> {
    ops: &'a [Operation],
    timeline: Timeline,
    state: State,
    /// The set of linearized operations as a bitset, followed by one word encoding
    /// `state`: the memo key for the current point of the search, kept up to date
    /// in place so that a lookup allocates nothing.
    memo_key: Vec<u64>,
    /// Every (linearized set, state) reached so far: reaching one again cannot
    /// lead anywhere new, since what remains to be placed is the same.
    memo: HashSet<Box<[u64]>>,
    undo: Vec<Choice>,
    /// How many operations `undo` holds, enablers included.
    depth: usize,
    longest: Vec<usize>,
    max_states: usize,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [Operation], max_states: usize) -> Search<'a> {
        let words = ops.len().div_ceil(64);
        Search {
            ops,
            timeline: Timeline::new(ops),
            state: None,
            memo_key: vec![0; words + 1],
            memo: HashSet::new(),
            undo: Vec::new(),
            depth: 0,
            longest: Vec::new(),
            max_states,
        }
    }

    /// Runs to a verdict.
    fn run(mut self) -> Result<(), Failure> {
        let mut cursor = self.timeline.head;
        // Reaching the end of the list means every operation with a response has
        // been linearized; any operations left have no response and are taken to
        // have never taken effect (equivalently, to take effect after all others).
        while let Some(node) = cursor {
            let kind = self.timeline.nodes[node].kind;
            cursor = match kind {
                // Placed only as enablers, by `try_linearize`.
                Kind::Call { response: None } => self.timeline.next[node],
                Kind::Call { .. } if self.try_linearize(node, None)? => self.timeline.head,
                Kind::Call { .. } => self.timeline.next[node],
                // An operation completed before being linearized: undo the last choice
                // and try the next alternative to it.
                Kind::Return => {
                    let Some(undone) = self.backtrack() else {
                        return Err(Failure::NotLinearizable { longest: self.longest });
                    };
                    let retried = undone.enabler.is_some() && self.try_linearize(undone.call, undone.enabler)?;
                    if retried {
                        self.timeline.head
                    } else {
                        self.timeline.next[undone.call]
                    }
                }
            };
        }
        Ok(())
    }

    /// Linearizes the operation invoked at `call` next, alone if its answer fits
    /// the register, else together with an enabler (after `enablers_after`, when
    /// resuming), provided the resulting search state is new.
    fn try_linearize(&mut self, call: usize, enablers_after: Option<usize>) -> Result<bool, Failure> {
        let step = self.ops[self.timeline.nodes[call].op].step;
        if enablers_after.is_none() {
            if let Some(after) = apply(self.state, step) {
                // No enabler then: one would only add a choice reaching the same state.
                return self.commit(call, None, after);
            }
        }
        let enablers = self.enablers(step);
        let start = match enablers_after {
            Some(previous) => enablers.iter().position(|e| e.call == previous).map_or(enablers.len(), |i| i + 1),
            None => 0,
        };
        for enabler in &enablers[start..] {
            if self.commit(call, Some(enabler.call), enabler.after)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The unknown-outcome writes that may be linearized now (invoked before the
    /// first outstanding response) and would make `step` fit, in timeline order.
    /// Only the first of several writing the same value is offered: each stays
    /// available for ever once invoked, so they are interchangeable.
    fn enablers(&self, step: Step) -> Vec<Enabler> {
        let mut found: Vec<Enabler> = Vec::new();
        let mut cursor = self.timeline.head;
        while let Some(node) = cursor {
            match (self.timeline.nodes[node].kind, self.ops[self.timeline.nodes[node].op].step) {
                (Kind::Return, _) => break,
                (Kind::Call { response: None }, Step::Write(written)) => {
                    let after = apply(written, step);
                    if let (Some(after), false) = (after, found.iter().any(|e| e.written == written)) {
                        found.push(Enabler { call: node, written, after });
                    }
                }
                _ => {}
            }
            cursor = self.timeline.next[node];
        }
        // A write of an unread value fits only where the value goes unseen, where
        // any other write fits too; so using it up leaves the most options open.
        match found.iter().find(|e| e.written == Some(UNREAD)) {
            Some(&unread) => vec![unread],
            None => found,
        }
    }

    /// Applies a choice if the search state it leads to is new.
    fn commit(&mut self, call: usize, enabler: Option<usize>, after: State) -> Result<bool, Failure> {
        let choice = Choice { call, enabler, before: self.state };
        self.mark(choice, true);
        self.set_state(after);
        if self.memo.contains(self.memo_key.as_slice()) {
            self.mark(choice, false);
            self.set_state(choice.before);
            return Ok(false);
        }
        if self.memo.len() >= self.max_states {
            return Err(Failure::Inconclusive { explored: self.memo.len() });
        }
        self.memo.insert(self.memo_key.clone().into_boxed_slice());
        self.undo.push(choice);
        self.timeline.lift(call);
        if let Some(enabler) = enabler {
            self.timeline.lift(enabler);
        }
        self.note_progress();
        Ok(true)
    }

    /// Undoes the most recent choice and returns it, or None if there is nothing
    /// left to undo (every possibility has been tried).
    fn backtrack(&mut self) -> Option<Choice> {
        let choice = self.undo.pop()?;
        // The reverse of `commit`'s lifts.
        if let Some(enabler) = choice.enabler {
            self.timeline.restore(enabler);
        }
        self.timeline.restore(choice.call);
        self.mark(choice, false);
        self.set_state(choice.before);
        Some(choice)
    }

    /// Remembers the deepest linearization so far, for the failure report.
    fn note_progress(&mut self) {
        if self.depth > self.longest.len() {
            let nodes = &self.timeline.nodes;
            self.longest =
                self.undo.iter().flat_map(|c| c.enabler.into_iter().chain([c.call])).map(|n| nodes[n].op).collect();
        }
    }

    /// Adds a choice's operations to the linearized set, or removes them.
    fn mark(&mut self, choice: Choice, on: bool) {
        for node in choice.enabler.into_iter().chain([choice.call]) {
            let op = self.timeline.nodes[node].op;
            let bit = 1u64 << (op % 64);
            if on {
                self.memo_key[op / 64] |= bit;
                self.depth += 1;
            } else {
                self.memo_key[op / 64] &= !bit;
                self.depth -= 1;
            }
        }
    }

    fn set_state(&mut self, state: State) {
        self.state = state;
        let last = self.memo_key.len() - 1;
        // 0 for absent, so that ids map to 1.. and never collide with it.
        self.memo_key[last] = state.map_or(0, |id| id as u64 + 1);
    }
}

// ---------------------------------------------------------------------------
// Reports.

fn report(key: &[u8], events: &[&Event], ops: &[Operation], failure: &Failure) -> String {
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
fn describe_events(events: &[&Event]) -> String {
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
    }
}

fn describe_outcome(op: &Op, outcome: &Outcome) -> String {
    match outcome {
        Outcome::PutOk => "ok".to_string(),
        Outcome::GetOk(Some(value)) => show_value(value),
        Outcome::GetOk(None) => "absent".to_string(),
        Outcome::DeleteOk { existed: true } => "ok (existed)".to_string(),
        Outcome::DeleteOk { existed: false } => "ok (was absent)".to_string(),
        Outcome::Unknown if *op == Op::Get => "unknown (ignored: constrains nothing)".to_string(),
        Outcome::Unknown => "unknown (may take effect after invocation, or never)".to_string(),
    }
}

/// Nanoseconds as microseconds with one decimal, without float rounding surprises.
fn micros(ns: u64) -> String {
    format!("{}.{}", ns / 1000, ns % 1000 / 100)
}

fn show_key(key: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "k";

    fn event(client: usize, key: &str, op: Op, span: (u64, Option<u64>), outcome: Outcome) -> Event {
        Event { client, key: key.as_bytes().to_vec(), op, invoked_ns: span.0, completed_ns: span.1, outcome }
    }

    fn put(client: usize, key: &str, value: &str, from: u64, to: u64) -> Event {
        event(client, key, Op::Put(value.into()), (from, Some(to)), Outcome::PutOk)
    }

    fn put_unknown(client: usize, key: &str, value: &str, from: u64) -> Event {
        event(client, key, Op::Put(value.into()), (from, None), Outcome::Unknown)
    }

    fn get(client: usize, key: &str, seen: Option<&str>, from: u64, to: u64) -> Event {
        event(client, key, Op::Get, (from, Some(to)), Outcome::GetOk(seen.map(Into::into)))
    }

    fn delete(client: usize, key: &str, existed: bool, from: u64, to: u64) -> Event {
        event(client, key, Op::Delete, (from, Some(to)), Outcome::DeleteOk { existed })
    }

    fn delete_unknown(client: usize, key: &str, from: u64) -> Event {
        event(client, key, Op::Delete, (from, None), Outcome::Unknown)
    }

    fn assert_linearizable(history: &[Event]) {
        if let Err(report) = check(history) {
            panic!("expected a linearizable history, got:\n{report}");
        }
    }

    fn assert_not_linearizable(history: &[Event]) -> String {
        let report = check(history).expect_err("expected a history that is not linearizable");
        assert!(report.contains("is not linearizable"), "{report}");
        report
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_history() {
        assert_linearizable(&[
            get(0, K, None, 0, 10),
            put(0, K, "a", 20, 30),
            get(0, K, Some("a"), 40, 50),
            put(0, K, "b", 60, 70),
            get(0, K, Some("b"), 80, 90),
            delete(0, K, true, 100, 110),
            get(0, K, None, 120, 130),
            delete(0, K, false, 140, 150),
        ]);
    }

    /// Two overlapping puts with reads that only fit "b" first, then "a".
    fn overlapping_writes(final_read: &str) -> Vec<Event> {
        vec![
            put(0, K, "a", 0, 100),
            put(1, K, "b", 0, 100),
            get(2, K, Some("b"), 10, 50),
            get(3, K, Some("a"), 60, 90),
            get(2, K, Some(final_read), 110, 120),
        ]
    }

    #[test]
    fn concurrent_writes_linearizable_in_one_order() {
        assert_linearizable(&overlapping_writes("a"));
        // The reads fix the order b, a; a later read of "b" contradicts it.
        assert_not_linearizable(&overlapping_writes("b"));
    }

    #[test]
    fn events_may_be_given_in_any_order() {
        let mut history = overlapping_writes("a");
        history.reverse();
        assert_linearizable(&history);
    }

    #[test]
    fn completion_at_the_instant_of_invocation_is_concurrent() {
        // The put completes at 10 and the read is invoked at 10: they overlap, so
        // the read may come first.
        assert_linearizable(&[put(0, K, "a", 0, 10), get(1, K, None, 10, 20)]);
        assert_not_linearizable(&[put(0, K, "a", 0, 10), get(1, K, None, 11, 20)]);
    }

    #[test]
    fn stale_read_after_completed_write_fails() {
        assert_not_linearizable(&[put(0, K, "a", 0, 10), put(0, K, "b", 20, 30), get(1, K, Some("a"), 40, 50)]);
        assert_not_linearizable(&[put(0, K, "a", 0, 10), get(1, K, None, 20, 30)]);
    }

    #[test]
    fn read_of_a_value_never_written_fails() {
        assert_not_linearizable(&[get(0, K, Some("ghost"), 0, 10)]);
        assert_not_linearizable(&[put(0, K, "a", 0, 100), get(1, K, Some("ghost"), 10, 20)]);
    }

    #[test]
    fn read_of_a_value_written_to_another_key_fails() {
        assert_not_linearizable(&[put(0, "x", "a", 0, 10), get(1, "y", Some("a"), 20, 30)]);
    }

    #[test]
    fn read_may_not_precede_the_write_it_sees() {
        assert_not_linearizable(&[get(1, K, Some("a"), 0, 10), put(0, K, "a", 20, 30)]);
    }

    #[test]
    fn unknown_put_later_read_passes() {
        assert_linearizable(&[
            put(0, K, "a", 0, 10),
            put_unknown(1, K, "b", 20),
            get(2, K, Some("a"), 30, 40),
            get(2, K, Some("b"), 1_000, 1_010),
            get(2, K, Some("b"), 2_000, 2_010),
        ]);
    }

    #[test]
    fn unknown_put_never_observed_passes() {
        assert_linearizable(&[
            put(0, K, "a", 0, 10),
            put_unknown(1, K, "b", 20),
            get(2, K, Some("a"), 30, 40),
            get(2, K, Some("a"), 1_000, 1_010),
        ]);
        assert_linearizable(&[put_unknown(0, K, "a", 0), get(1, K, None, 100, 110)]);
    }

    #[test]
    fn unknown_put_cannot_take_effect_before_its_invocation() {
        assert_not_linearizable(&[get(1, K, Some("a"), 0, 10), put_unknown(0, K, "a", 20)]);
    }

    #[test]
    fn unknown_put_takes_effect_at_most_once() {
        // Once "b" overwrote it, "a" cannot come back.
        assert_not_linearizable(&[
            put_unknown(0, K, "a", 0),
            get(1, K, Some("a"), 10, 20),
            put(1, K, "b", 30, 40),
            get(1, K, Some("a"), 50, 60),
        ]);
    }

    #[test]
    fn unknown_put_with_a_recorded_give_up_time_may_still_apply_later() {
        let mut late = put_unknown(0, K, "a", 0);
        late.completed_ns = Some(10);
        assert_linearizable(&[late, get(1, K, None, 20, 30), get(1, K, Some("a"), 40, 50)]);
    }

    #[test]
    fn unknown_puts_are_used_where_needed_and_at_most_once() {
        // "x" is never read, so it must be what the delete found; "y" is then read.
        assert_linearizable(&[
            put_unknown(0, K, "x", 0),
            put_unknown(1, K, "y", 0),
            delete(2, K, true, 10, 20),
            get(2, K, Some("y"), 30, 40),
        ]);
        // Only "y" can explain the delete, which leaves nothing to explain the read.
        assert_not_linearizable(&[put_unknown(1, K, "y", 0), delete(2, K, true, 10, 20), get(2, K, Some("y"), 30, 40)]);
    }

    #[test]
    fn unknown_get_constrains_nothing() {
        let unknown_get = event(1, K, Op::Get, (20, None), Outcome::Unknown);
        assert_linearizable(&[put(0, K, "a", 0, 10), unknown_get, get(2, K, Some("a"), 30, 40)]);
    }

    #[test]
    fn newer_value_then_older_value_fails() {
        assert_not_linearizable(&[
            put(0, K, "a", 0, 10),
            put(1, K, "b", 20, 100),
            get(2, K, Some("b"), 30, 40),
            get(3, K, Some("a"), 50, 60),
        ]);
    }

    #[test]
    fn delete_existed_must_match_the_register() {
        assert_linearizable(&[
            put(0, K, "a", 0, 10),
            delete(0, K, true, 20, 30),
            delete(0, K, false, 40, 50),
            get(0, K, None, 60, 70),
        ]);
        assert_not_linearizable(&[delete(0, K, true, 0, 10)]);
        assert_not_linearizable(&[put(0, K, "a", 0, 10), delete(1, K, false, 20, 30)]);
        // Two acknowledged deletes of one value cannot both have found it.
        assert_not_linearizable(&[put(0, K, "a", 0, 10), delete(1, K, true, 20, 50), delete(2, K, true, 20, 50)]);
    }

    #[test]
    fn concurrent_delete_orders_around_put() {
        // The delete saw the key, so the overlapping put came first.
        assert_linearizable(&[put(0, K, "a", 0, 100), delete(1, K, true, 10, 20), get(2, K, None, 110, 120)]);
        assert_not_linearizable(&[put(0, K, "a", 0, 100), delete(1, K, true, 10, 20), get(2, K, Some("a"), 110, 120)]);
    }

    #[test]
    fn unknown_delete_may_apply_late_or_never() {
        let start = [put(0, K, "a", 0, 10), delete_unknown(1, K, 20), get(2, K, Some("a"), 30, 40)];
        assert_linearizable(&start);
        let mut applied = start.to_vec();
        applied.push(get(2, K, None, 50, 60));
        assert_linearizable(&applied);
        // Nothing rewrites "a" after the delete took effect.
        applied.push(get(2, K, Some("a"), 70, 80));
        assert_not_linearizable(&applied);
    }

    #[test]
    fn failure_names_the_failing_second_key() {
        let report = assert_not_linearizable(&[
            put(0, "alpha", "1", 0, 10),
            get(1, "alpha", Some("1"), 20, 30),
            put(0, "beta", "x", 1_000, 2_000),
            put(0, "beta", "y", 3_000, 4_000),
            get(1, "beta", Some("x"), 5_000, 6_500),
        ]);
        assert!(report.contains("key \"beta\""), "{report}");
        assert!(!report.contains("alpha"), "{report}");
        // Times are relative to the key's first invocation, in microseconds.
        assert!(report.contains("0.0 ..          1.0"), "{report}");
        assert!(report.contains("4.0 ..          5.5"), "{report}");
        assert!(report.contains("put \"y\""), "{report}");
    }

    #[test]
    fn report_lists_events_and_longest_prefix() {
        let report = assert_not_linearizable(&[put(0, K, "a", 0, 10), get(7, K, Some("zz"), 20, 30)]);
        assert!(report.contains("client 7"), "{report}");
        assert!(report.contains("-> \"zz\""), "{report}");
        assert!(report.contains("prefix found is [#0]"), "{report}");
    }

    #[test]
    fn report_shows_binary_keys_and_long_values_readably() {
        let mut history = vec![put(0, K, "a", 0, 10), get(1, K, None, 20, 30)];
        for e in &mut history {
            e.key = vec![0xff, b'k'];
        }
        history[0].op = Op::Put(vec![b'v'; 1000]);
        let report = assert_not_linearizable(&history);
        assert!(report.contains("key \"\u{fffd}k\""), "{report}");
        assert!(report.contains("(1000 bytes)"), "{report}");
    }

    #[test]
    fn exhausted_budget_is_inconclusive() {
        let history = overlapping_writes("a");
        let report = check_with_budget(&history, 2).expect_err("two states are not enough");
        assert!(report.contains("inconclusive"), "{report}");
        assert!(report.contains("key \"k\""), "{report}");
        assert!(check_with_budget(&history, 1_000).is_ok());
    }

    #[test]
    fn definite_failure_on_a_later_key_beats_an_inconclusive_one() {
        let mut history = overlapping_writes("a");
        history.push(get(0, "later", Some("ghost"), 0, 10));
        let report = check_with_budget(&history, 2).expect_err("the later key fails");
        assert!(report.contains("key \"later\" is not linearizable"), "{report}");
    }

    #[test]
    fn malformed_events_are_reported() {
        let mismatched = event(0, K, Op::Put("a".into()), (0, Some(10)), Outcome::GetOk(None));
        let report = check(&[mismatched]).expect_err("a put cannot return a read");
        assert!(report.contains("malformed event #0"), "{report}");
        let backwards = put(0, K, "a", 20, 10);
        assert!(check(&[backwards]).expect_err("time runs forwards").contains("before it was invoked"));
        let no_time = event(0, K, Op::Get, (0, None), Outcome::GetOk(None));
        assert!(check(&[no_time]).expect_err("needs a completion").contains("no completion time"));
    }

    /// A small deterministic generator, so that failures reproduce without a seed.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    /// A linearizable history of `count` highly concurrent operations: each takes
    /// effect on a real register at time 100·i, inside a random window around it.
    /// Some puts and deletes lose their answer (and then may or may not apply).
    fn random_linearizable_history(seed: u64, count: u64) -> Vec<Event> {
        let mut rng = XorShift(seed);
        let mut register: Option<Vec<u8>> = None;
        let mut history = Vec::new();
        for i in 0..count {
            let at = 1_000 + 100 * i;
            let span = (at - rng.below(1_000), Some(at + rng.below(1_000)));
            let unknown = rng.below(10) == 0;
            let event = match rng.below(3) {
                0 => {
                    let value = format!("v{i}").into_bytes();
                    if !unknown || rng.below(2) == 0 {
                        register = Some(value.clone());
                    }
                    (Op::Put(value), if unknown { Outcome::Unknown } else { Outcome::PutOk })
                }
                1 => (Op::Get, Outcome::GetOk(register.clone())),
                _ => {
                    let existed = register.is_some();
                    if !unknown || rng.below(2) == 0 {
                        register = None;
                    }
                    (Op::Delete, if unknown { Outcome::Unknown } else { Outcome::DeleteOk { existed } })
                }
            };
            let span = if event.1 == Outcome::Unknown { (span.0, None) } else { span };
            history.push(Event {
                client: i as usize,
                key: b"r".to_vec(),
                op: event.0,
                invoked_ns: span.0,
                completed_ns: span.1,
                outcome: event.1,
            });
        }
        history
    }

    /// The definition, checked directly: try every order of every subset that
    /// contains all operations with a response, respecting real time. Independent
    /// of the search's timeline, memo and model encoding; only for tiny histories.
    fn brute_force(history: &[Event]) -> bool {
        let ops: Vec<&Event> = history.iter().filter(|e| !(e.op == Op::Get && e.outcome == Outcome::Unknown)).collect();
        let mut placed = vec![false; ops.len()];
        brute_force_from(&ops, &mut placed, None)
    }

    fn brute_force_from(ops: &[&Event], placed: &mut [bool], register: Option<Vec<u8>>) -> bool {
        let answered = |e: &Event| e.outcome != Outcome::Unknown;
        if (0..ops.len()).all(|i| placed[i] || !answered(ops[i])) {
            return true;
        }
        for next in 0..ops.len() {
            // Every unplaced operation that completed before `next` was invoked must go first.
            let blocked = placed[next]
                || (0..ops.len()).any(|j| {
                    !placed[j] && answered(ops[j]) && ops[j].completed_ns.is_some_and(|c| c < ops[next].invoked_ns)
                });
            let Some(after) = (!blocked).then(|| reference_step(&register, ops[next])).flatten() else {
                continue;
            };
            placed[next] = true;
            let found = brute_force_from(ops, placed, after);
            placed[next] = false;
            if found {
                return true;
            }
        }
        false
    }

    /// The register after `event` (outer None: impossible), written from scratch.
    fn reference_step(register: &Option<Vec<u8>>, event: &Event) -> Option<Option<Vec<u8>>> {
        match (&event.op, &event.outcome) {
            (Op::Put(value), _) => Some(Some(value.clone())),
            (Op::Get, Outcome::GetOk(seen)) => (seen == register).then(|| register.clone()),
            (Op::Delete, Outcome::DeleteOk { existed }) => (*existed == register.is_some()).then_some(None),
            (Op::Delete, _) => Some(None),
            _ => panic!("the generator makes no other events"),
        }
    }

    /// Small random histories, linearizable or not, on one key.
    fn random_small_history(rng: &mut XorShift) -> Vec<Event> {
        let value = |rng: &mut XorShift| ["a", "b"][rng.below(2) as usize].as_bytes().to_vec();
        (0..1 + rng.below(7))
            .map(|client| {
                let (from, unknown) = (rng.below(60), rng.below(3) == 0);
                let to = (!unknown).then(|| from + rng.below(30));
                let (op, outcome) = match rng.below(3) {
                    0 => (Op::Put(value(rng)), Outcome::PutOk),
                    1 => (Op::Get, Outcome::GetOk((rng.below(3) > 0).then(|| value(rng)))),
                    _ => (Op::Delete, Outcome::DeleteOk { existed: rng.below(2) == 0 }),
                };
                let outcome = if unknown { Outcome::Unknown } else { outcome };
                event(client as usize, K, op, (from, to), outcome)
            })
            .collect()
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut passed, mut failed) = (0, 0);
        for round in 0..20_000 {
            let history = random_small_history(&mut rng);
            let expected = brute_force(&history);
            let verdict = check(&history);
            assert_eq!(verdict.is_ok(), expected, "round {round}: {history:#?}\n{verdict:?}");
            if expected {
                passed += 1;
            } else {
                failed += 1;
            }
        }
        // Both verdicts must be well represented for the comparison to mean much.
        assert!(passed > 2_000 && failed > 2_000, "{passed} linearizable, {failed} not");
    }

    #[test]
    fn large_concurrent_histories_are_checked_quickly() {
        for seed in 1..=20 {
            let history = random_linearizable_history(seed, 300);
            if let Err(report) = check_with_budget(&history, 1_000_000) {
                panic!("seed {seed}: {report}");
            }
        }
    }
}
