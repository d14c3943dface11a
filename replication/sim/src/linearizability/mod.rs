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
//! it only where a later operation needs it to explain its answer (see "Unknown
//! outcomes" below for why that loses nothing). The search is bounded: past a
//! configurable number of states it reports the check as inconclusive instead of
//! running on, and a failure report lists the key's events with their times.
//!
//! Clients put, get and delete, and compare-and-set: "if the register holds
//! `expected`, set it to `new`" (`Op::Cas`), which succeeds (`Outcome::CasOk`),
//! fails having found another value or none (`Outcome::CasFailed`), or has an
//! unknown outcome like any other operation.
//!
//! # Unknown outcomes
//!
//! An unknown put is a blind write (it sets the register whatever it held), and
//! so is an unknown delete (it says nothing about what it found). An unknown
//! compare-and-set is a *conditional* write: it sets the register to `new` only
//! where the register holds `expected`, and elsewhere does nothing. None of them
//! is ever linearized on its own. The search places them only in *enabler
//! chains*: right before an operation with a response (the observer) whose answer
//! does not fit the register as it is, a sequence W1 … Wk of pending unknown
//! writes after which it fits, where
//!
//! 1. W1 takes effect on the register as it is;
//! 2. each later Wi is a CAS that W(i-1) made possible: the register holds its
//!    `expected` value after W(i-1) but did not before it;
//! 3. the observer does not fit the register as it was before Wk.
//!
//! With values unique per write, as in the tests' histories, chains are short
//! (mostly a single write). Placing unknown operations only there still finds a
//! linearization whenever one exists, because any linearization can be rewritten
//! into one of that shape, taking its unknown operations one at a time from the
//! last. An unknown CAS that did not take effect (the register did not hold
//! `expected`) changed nothing, so it is dropped. Any other unknown operation W
//! sets the register from some `s` to some `w`; look at the operation X right
//! after it:
//!
//! - There is none: nothing saw `w`, so W is dropped.
//! - X does not fit `s` (for an unknown X, would not take effect on it): X needs
//!   W. If X has a response, W becomes its chain; otherwise X, being later, is
//!   already the head of a chain, and W joins it at the front (a blind X fits
//!   every register, so X is a CAS that W made possible, as rule 2 asks).
//! - X fits `s` and leaves the register the same from `s` as from `w`: W is
//!   dropped, changing nothing after X. This covers every write (a put, a delete
//!   or a successful CAS leaves the same value whatever it found; an unknown CAS
//!   that takes effect on `s` did not need W) and every read (a read that fits
//!   both found the same value).
//! - X fits `s` but leaves the register different from `s` than from `w`: then X
//!   only observed, and is a failed CAS whose `expected` is neither `s` nor `w`.
//!   W moves after X, which still fails on `s` and leaves it for W, which still
//!   takes effect on it (a CAS's condition included).
//!
//! Each step moves W later or removes it, so the rewriting ends, and every W left
//! is in a chain that obeys rules 1 to 3. So an unknown CAS that succeeds is moved
//! later past every operation that does not observe it, until the first one that
//! needs its value, exactly like a blind write. Keeping unknown operations out of
//! the search unless they are needed also keeps them out of the memo: otherwise
//! each would double the states explored from its invocation to the end of the
//! history.

mod report;
mod search;

use std::collections::{BTreeMap, HashMap, HashSet};

use report::{describe_events, report, show_key};
use search::{Failure, Search};

/// An operation a client invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>),
    Get,
    Delete,
    /// Compare-and-set: if the register holds `expected`, set it to `new`. (A
    /// client sends a version it read earlier; values are unique per write in the
    /// tests' histories, so a version identifies a value.)
    Cas {
        expected: Vec<u8>,
        new: Vec<u8>,
    },
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
    /// The compare-and-set found `expected` and wrote `new`.
    CasOk,
    /// The compare-and-set found something other than `expected` (or nothing),
    /// and wrote nothing.
    CasFailed,
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
/// allows roughly half a gigabyte and ten seconds before giving up. (Enabler
/// chains longer than one write, which the search considers without storing,
/// count against the same budget.)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Sets the register without observing it: a put (Some), or a delete whose
    /// answer is unknown (None), which therefore says nothing about the old value.
    Write(State),
    /// Observes the register.
    Read(State),
    /// Empties the register, which must have held a value exactly when `existed`.
    Delete { existed: bool },
    /// Sets the register to `new` where it holds `expected`. Acknowledged, it
    /// observes and writes; with an unknown outcome it is a conditional write,
    /// which has no effect where the register holds anything else (`apply` then
    /// says it does not fit, and the search does not place it there).
    Cas { expected: usize, new: usize },
    /// Observes that the register does not hold `expected` (and leaves it so).
    CasFailed { expected: usize },
}

/// The register after `step`, or None when `step`'s answer is impossible in `state`.
fn apply(state: State, step: Step) -> Option<State> {
    match step {
        Step::Write(value) => Some(value),
        Step::Read(seen) => (seen == state).then_some(state),
        Step::Delete { existed } => (existed == state.is_some()).then_some(None),
        Step::Cas { expected, new } => (state == Some(expected)).then_some(Some(new)),
        Step::CasFailed { expected } => (state != Some(expected)).then_some(state),
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
        // Acknowledged, or unknown (a conditional write, placed only where it fits).
        (Op::Cas { expected, new }, Outcome::CasOk | Outcome::Unknown) => {
            Step::Cas { expected: values.id(expected), new: values.id(new) }
        }
        (Op::Cas { expected, .. }, Outcome::CasFailed) => Step::CasFailed { expected: values.id(expected) },
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

/// The id shared by every value that no read in the key's history returned and
/// no compare-and-set compared against. Nothing can tell such values apart (a
/// read or a CAS comparing the register with an observed value finds none of
/// them equal), so merging them loses nothing, and it makes writes of them
/// interchangeable: fewer distinct states to explore.
const UNREAD: usize = 0;

/// Gives equal byte strings equal small ids, and every value never observed
/// (read, or compared against by a CAS) `UNREAD`.
struct Interner<'a> {
    observed: HashSet<&'a [u8]>,
    ids: HashMap<&'a [u8], usize>,
}

impl<'a> Interner<'a> {
    fn new(events: &[&'a Event]) -> Interner<'a> {
        let observed = events
            .iter()
            .filter_map(|e| match (&e.op, &e.outcome) {
                (_, Outcome::GetOk(Some(value))) => Some(value.as_slice()),
                // Whatever the outcome: an unknown CAS takes effect only on its
                // expected value, so that value must keep its own id too.
                (Op::Cas { expected, .. }, _) => Some(expected.as_slice()),
                _ => None,
            })
            .collect();
        Interner { observed, ids: HashMap::new() }
    }

    fn id(&mut self, value: &'a [u8]) -> usize {
        if !self.observed.contains(value) {
            return UNREAD;
        }
        let next = self.ids.len() + 1;
        *self.ids.entry(value).or_insert(next)
    }
}
#[cfg(test)]
mod tests;
