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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

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
// own, only in enabler chains right before an operation that needs them; see
// "Unknown outcomes" in the module docs for why that finds a linearization
// whenever one exists.

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
#[derive(Debug)]
struct Choice {
    /// The call node of the operation linearized.
    call: usize,
    /// The enabler chain linearized just before it, if any: its index among the
    /// chains `enablers` offered (so that backtracking can go on to the next one),
    /// and the call nodes of its unknown-outcome writes, in order.
    enabler: Option<(usize, Vec<usize>)>,
    /// The register before them all.
    before: State,
}

impl Choice {
    /// The call nodes linearized, in order: the enabler chain, then the operation.
    fn calls(&self) -> impl Iterator<Item = usize> + '_ {
        self.enabler.iter().flat_map(|(_, chain)| chain.iter().copied()).chain([self.call])
    }
}

/// An enabler chain that would let an observer fit.
#[derive(Debug)]
struct Enabler {
    /// The call nodes of its unknown-outcome writes, in order.
    calls: Vec<usize>,
    /// The register after the chain.
    written: State,
    /// The register after the chain and then the observer.
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
    /// The values that failed compare-and-sets compared against.
    failed_cas_expected: HashSet<usize>,
    /// Enabler chains longer than one write considered so far; they count
    /// against the budget with the memo's states.
    chain_steps: usize,
    max_states: usize,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [Operation], max_states: usize) -> Search<'a> {
        let words = ops.len().div_ceil(64);
        let failed_cas_expected = ops
            .iter()
            .filter_map(|op| match op.step {
                Step::CasFailed { expected } => Some(expected),
                _ => None,
            })
            .collect();
        Search {
            ops,
            timeline: Timeline::new(ops),
            state: None,
            memo_key: vec![0; words + 1],
            memo: HashSet::new(),
            undo: Vec::new(),
            depth: 0,
            longest: Vec::new(),
            failed_cas_expected,
            chain_steps: 0,
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
                // Placed only in enabler chains, by `try_linearize`.
                Kind::Call { response: None } => self.timeline.next[node],
                Kind::Call { .. } if self.try_linearize(node, None)? => self.timeline.head,
                Kind::Call { .. } => self.timeline.next[node],
                // An operation completed before being linearized: undo the last choice
                // and try the next alternative to it.
                Kind::Return => {
                    let Some(undone) = self.backtrack() else {
                        return Err(Failure::NotLinearizable { longest: self.longest });
                    };
                    let retried = match undone.enabler {
                        Some((tried, _)) => self.try_linearize(undone.call, Some(tried))?,
                        None => false,
                    };
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
    /// the register, else after an enabler chain (the next after the one at index
    /// `tried`, when resuming), provided the resulting search state is new.
    fn try_linearize(&mut self, call: usize, tried: Option<usize>) -> Result<bool, Failure> {
        let step = self.ops[self.timeline.nodes[call].op].step;
        if tried.is_none() {
            if let Some(after) = apply(self.state, step) {
                // No enabler then: one would only add a choice reaching the same state.
                return self.commit(call, None, after);
            }
        }
        // The same timeline and register as when `tried` was chosen (backtracking
        // restored both), so the same chains in the same order.
        let enablers = self.enablers(step)?;
        let start = tried.map_or(0, |index| index + 1);
        for (index, enabler) in enablers.into_iter().enumerate().skip(start) {
            if self.commit(call, Some((index, enabler.calls)), enabler.after)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The enabler chains (see the module docs) of pending unknown-outcome writes
    /// that may be linearized now (invoked before the first outstanding response)
    /// and would make `observer` fit, in a fixed order.
    fn enablers(&mut self, observer: Step) -> Result<Vec<Enabler>, Failure> {
        let mut pending = Vec::new();
        let mut cursor = self.timeline.head;
        while let Some(node) = cursor {
            match self.timeline.nodes[node].kind {
                Kind::Return => break,
                Kind::Call { response: None } => pending.push((node, self.ops[self.timeline.nodes[node].op].step)),
                Kind::Call { .. } => {}
            }
            cursor = self.timeline.next[node];
        }
        let mut chains = Chains {
            pending: &pending,
            observer,
            chain: Vec::new(),
            found: Vec::new(),
            steps: 0,
            max_steps: self.max_states.saturating_sub(self.explored()),
        };
        let complete = chains.extend(None, self.state);
        self.chain_steps += chains.steps;
        if !complete {
            return Err(Failure::Inconclusive { explored: self.explored() });
        }
        let mut found = chains.found;
        // A delete that found a value needs a chain only where the register is
        // empty, where only blind writes take effect, and rule 3 leaves single
        // ones. A write of an unread value is then the one to use up. Whatever
        // later operation it could enable instead (a delete that found a value, or
        // a failed CAS), any other write of a value x enables as well, leaving the
        // register empty alike, or holding x where it would have held the unread
        // value, which every later operation fits just as well, unless a failed
        // CAS compares against x. So only writes of such values are still offered
        // beside it.
        if observer == (Step::Delete { existed: true }) && found.iter().any(|e| e.written == Some(UNREAD)) {
            found.retain(|e| e.written.is_some_and(|v| v == UNREAD || self.failed_cas_expected.contains(&v)));
        }
        Ok(found)
    }

    /// States explored so far, for the budget.
    fn explored(&self) -> usize {
        self.memo.len() + self.chain_steps
    }

    /// Applies a choice if the search state it leads to is new.
    fn commit(&mut self, call: usize, enabler: Option<(usize, Vec<usize>)>, after: State) -> Result<bool, Failure> {
        let choice = Choice { call, enabler, before: self.state };
        self.mark(&choice, true);
        self.set_state(after);
        if self.memo.contains(self.memo_key.as_slice()) {
            self.mark(&choice, false);
            self.set_state(choice.before);
            return Ok(false);
        }
        if self.explored() >= self.max_states {
            return Err(Failure::Inconclusive { explored: self.explored() });
        }
        self.memo.insert(self.memo_key.clone().into_boxed_slice());
        for node in choice.calls() {
            self.timeline.lift(node);
        }
        self.undo.push(choice);
        self.note_progress();
        Ok(true)
    }

    /// Undoes the most recent choice and returns it, or None if there is nothing
    /// left to undo (every possibility has been tried).
    fn backtrack(&mut self) -> Option<Choice> {
        let choice = self.undo.pop()?;
        // The reverse of `commit`'s lifts.
        self.timeline.restore(choice.call);
        for &node in choice.enabler.iter().flat_map(|(_, chain)| chain).rev() {
            self.timeline.restore(node);
        }
        self.mark(&choice, false);
        self.set_state(choice.before);
        Some(choice)
    }

    /// Remembers the deepest linearization so far, for the failure report.
    fn note_progress(&mut self) {
        if self.depth > self.longest.len() {
            let nodes = &self.timeline.nodes;
            self.longest = self.undo.iter().flat_map(Choice::calls).map(|n| nodes[n].op).collect();
        }
    }

    /// Adds a choice's operations to the linearized set, or removes them.
    fn mark(&mut self, choice: &Choice, on: bool) {
        for node in choice.calls() {
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

/// The search for one observer's enabler chains, depth first.
struct Chains<'p> {
    /// The unknown-outcome writes that may be linearized now, as (call node,
    /// step), in timeline order.
    pending: &'p [(usize, Step)],
    observer: Step,
    /// The chain being built, as indices into `pending`.
    chain: Vec<usize>,
    found: Vec<Enabler>,
    /// Writes considered beyond the first of a chain, and how many may be.
    steps: usize,
    max_steps: usize,
}

impl Chains<'_> {
    /// Records every chain that extends the current one, which found the register
    /// at `before` (None: the chain is empty) and left it at `state`. Returns
    /// false if the budget ran out.
    fn extend(&mut self, before: Option<State>, state: State) -> bool {
        // Writes with equal steps are interchangeable (each stays available for
        // ever once invoked), so of several only the first is tried at each place.
        let mut tried: Vec<Step> = Vec::new();
        for (index, &(_, step)) in self.pending.iter().enumerate() {
            if self.chain.contains(&index) || tried.contains(&step) {
                continue;
            }
            // Rule 1 (and for every write, only where it takes effect).
            let Some(written) = apply(state, step) else { continue };
            if let Some(before) = before {
                // Rule 2: a CAS that the write before made possible. (A blind
                // write takes effect everywhere, so it can only come first.)
                if apply(before, step).is_some() {
                    continue;
                }
                if self.steps == self.max_steps {
                    return false;
                }
                self.steps += 1;
            }
            tried.push(step);
            self.chain.push(index);
            // Rule 3: the observer needs the last write.
            if let (None, Some(after)) = (apply(state, self.observer), apply(written, self.observer)) {
                let calls = self.chain.iter().map(|&i| self.pending[i].0).collect();
                self.found.push(Enabler { calls, written, after });
            }
            let complete = self.extend(Some(state), written);
            self.chain.pop();
            if !complete {
                return false;
            }
        }
        true
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
mod tests;
