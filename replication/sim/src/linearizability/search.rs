//! The search for a linearization of one key's operations: the timeline of
//! their invocations and responses, and the Wing–Gong–Lowe walk over it with
//! its undo stack, memo, state budget and enabler chains of unknown-outcome
//! writes (see "Unknown outcomes" in the `linearizability` module docs).

use std::collections::HashSet;

use super::{apply, Operation, State, Step, UNREAD};

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
// "Unknown outcomes" in the `linearizability` module docs for why that finds a
// linearization whenever one exists.

/// Why a key's history was not accepted.
#[derive(Debug)]
pub(super) enum Failure {
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

pub(super) struct Search<'a> {
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
    pub(super) fn new(ops: &'a [Operation], max_states: usize) -> Search<'a> {
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
    pub(super) fn run(mut self) -> Result<(), Failure> {
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

    /// The enabler chains (see the `linearizability` module docs) of pending
    /// unknown-outcome writes that may be linearized now (invoked before the first
    /// outstanding response) and would make `observer` fit, in a fixed order.
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
