//! The checker's tests: hand-written histories, and random ones cross-checked
//! against a brute-force search of every order.

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

fn cas_op(expected: &str, new: &str) -> Op {
    Op::Cas { expected: expected.into(), new: new.into() }
}

fn cas(client: usize, key: &str, expected: &str, new: &str, from: u64, to: u64) -> Event {
    event(client, key, cas_op(expected, new), (from, Some(to)), Outcome::CasOk)
}

fn cas_failed(client: usize, key: &str, expected: &str, new: &str, from: u64, to: u64) -> Event {
    event(client, key, cas_op(expected, new), (from, Some(to)), Outcome::CasFailed)
}

fn cas_unknown(client: usize, key: &str, expected: &str, new: &str, from: u64) -> Event {
    event(client, key, cas_op(expected, new), (from, None), Outcome::Unknown)
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
fn acknowledged_cas_observes_and_writes() {
    assert_linearizable(&[put(0, K, "a", 0, 10), cas(1, K, "a", "b", 20, 30), get(2, K, Some("b"), 40, 50)]);
    // It wrote: the old value is gone.
    assert_not_linearizable(&[put(0, K, "a", 0, 10), cas(1, K, "a", "b", 20, 30), get(2, K, Some("a"), 40, 50)]);
    // Of two CASes from one value, only one can have found it.
    assert_not_linearizable(&[put(0, K, "a", 0, 10), cas(1, K, "a", "b", 20, 50), cas(2, K, "a", "c", 20, 50)]);
    assert_linearizable(&[put(0, K, "a", 0, 10), cas(1, K, "a", "b", 20, 50), cas(2, K, "b", "c", 20, 50)]);
}

#[test]
fn cas_that_succeeded_on_a_value_never_there_fails() {
    // Never written at all, or only to another key.
    assert_not_linearizable(&[cas(0, K, "ghost", "b", 0, 10)]);
    assert_not_linearizable(&[put(0, "other", "a", 0, 10), cas(1, K, "a", "b", 20, 30)]);
    // Written, but only after the CAS completed.
    assert_not_linearizable(&[cas(1, K, "a", "b", 0, 10), put(0, K, "a", 20, 30)]);
    // Written, but overwritten before the CAS was invoked.
    assert_not_linearizable(&[put(0, K, "a", 0, 10), put(0, K, "c", 20, 30), cas(1, K, "a", "b", 40, 50)]);
    // ... or deleted.
    assert_not_linearizable(&[put(0, K, "a", 0, 10), delete(0, K, true, 20, 30), cas(1, K, "a", "b", 40, 50)]);
    // An overlapping overwrite may come after it, though.
    assert_linearizable(&[put(0, K, "a", 0, 10), put(0, K, "c", 20, 60), cas(1, K, "a", "b", 40, 50)]);
}

#[test]
fn failed_cas_observes_that_the_value_differs() {
    assert_linearizable(&[put(0, K, "a", 0, 10), cas_failed(1, K, "b", "c", 20, 30), get(2, K, Some("a"), 40, 50)]);
    assert_linearizable(&[cas_failed(1, K, "a", "c", 0, 10)]);
    assert_not_linearizable(&[put(0, K, "a", 0, 10), cas_failed(1, K, "a", "c", 20, 30)]);
    // It wrote nothing.
    assert_not_linearizable(&[put(0, K, "a", 0, 10), cas_failed(1, K, "b", "c", 20, 30), get(2, K, Some("c"), 40, 50)]);
    // Concurrent with the put of its expected value, it may have come first.
    assert_linearizable(&[put(0, K, "a", 0, 30), cas_failed(1, K, "a", "c", 10, 20), get(2, K, Some("a"), 40, 50)]);
}

#[test]
fn unknown_cas_is_accepted_exactly_where_its_expected_value_can_be_there() {
    let read_later = |history: &[Event]| {
        let mut history = history.to_vec();
        history.push(get(2, K, Some("b"), 100, 110));
        history
    };
    // "a" is in the register when the CAS is invoked.
    assert_linearizable(&read_later(&[put(0, K, "a", 0, 10), cas_unknown(1, K, "a", "b", 20)]));
    // It is not, nor can be again.
    assert_not_linearizable(&read_later(&[
        put(0, K, "a", 0, 10),
        put(0, K, "c", 20, 30),
        cas_unknown(1, K, "a", "b", 40),
    ]));
    assert_not_linearizable(&read_later(&[cas_unknown(1, K, "a", "b", 0)]));
    // It is not when the CAS is invoked, but is written later, before the read.
    assert_linearizable(&read_later(&[cas_unknown(1, K, "a", "b", 0), put(0, K, "a", 20, 30)]));
    // The overwrite overlaps the CAS, so it may have come after it, but it
    // completed before the read, which then cannot see "b".
    assert_not_linearizable(&read_later(&[
        put(0, K, "a", 0, 10),
        put(0, K, "c", 20, 60),
        cas_unknown(1, K, "a", "b", 40),
    ]));
    // If the overwrite overlaps the read too, it may come after both.
    assert_linearizable(&read_later(&[
        put(0, K, "a", 0, 10),
        put(0, K, "c", 20, 200),
        cas_unknown(1, K, "a", "b", 40),
    ]));
    // It cannot take effect before its invocation.
    assert_not_linearizable(&[put(0, K, "a", 0, 10), get(2, K, Some("b"), 20, 30), cas_unknown(1, K, "a", "b", 40)]);
}

#[test]
fn unknown_cas_takes_effect_at_most_once_or_not_at_all() {
    // "b" cannot come back once overwritten.
    assert_not_linearizable(&[
        put(0, K, "a", 0, 10),
        cas_unknown(1, K, "a", "b", 20),
        get(2, K, Some("b"), 30, 40),
        put(0, K, "c", 50, 60),
        get(2, K, Some("b"), 70, 80),
    ]);
    // One that found another value did nothing.
    assert_linearizable(&[
        put(0, K, "a", 0, 10),
        put(0, K, "c", 20, 30),
        cas_unknown(1, K, "a", "b", 40),
        get(2, K, Some("c"), 50, 60),
    ]);
}

#[test]
fn unknown_cas_may_enable_a_failed_cas_or_a_delete() {
    let start = [put(0, K, "a", 0, 10), cas_unknown(1, K, "a", "b", 20)];
    let then = |last: Event| {
        let mut history = start.to_vec();
        history.push(last);
        history
    };
    assert_linearizable(&then(cas_failed(2, K, "a", "c", 30, 40)));
    assert_linearizable(&then(cas(2, K, "b", "c", 30, 40)));
    assert_not_linearizable(&[
        put(0, K, "a", 0, 10),
        cas_unknown(1, K, "x", "b", 20),
        cas_failed(2, K, "a", "c", 30, 40),
    ]);
    // After a delete, there is nothing for it to find.
    assert_not_linearizable(&[
        put(0, K, "a", 0, 10),
        delete(0, K, true, 20, 30),
        cas_unknown(1, K, "a", "b", 40),
        delete(2, K, true, 50, 60),
    ]);
}

#[test]
fn unknown_writes_chain() {
    // Neither write alone explains the read: the CAS needs the put first.
    assert_linearizable(&[put_unknown(0, K, "a", 0), cas_unknown(1, K, "a", "b", 0), get(2, K, Some("b"), 10, 20)]);
    assert_linearizable(&[
        put(0, K, "a", 0, 10),
        cas_unknown(1, K, "a", "b", 20),
        cas_unknown(2, K, "b", "c", 20),
        cas_unknown(3, K, "c", "d", 20),
        get(4, K, Some("d"), 30, 40),
        get(4, K, Some("d"), 50, 60),
    ]);
    // A link invoked only after the read cannot help it.
    assert_not_linearizable(&[
        put(0, K, "a", 0, 10),
        cas_unknown(1, K, "a", "b", 20),
        get(4, K, Some("c"), 30, 40),
        cas_unknown(2, K, "b", "c", 50),
    ]);
    // A chain to enable an acknowledged CAS; a chain is used up once.
    assert_linearizable(&[put_unknown(0, K, "a", 0), cas_unknown(1, K, "a", "b", 0), cas(2, K, "b", "c", 10, 20)]);
    assert_not_linearizable(&[
        put_unknown(0, K, "a", 0),
        cas_unknown(1, K, "a", "b", 0),
        get(2, K, Some("b"), 10, 20),
        delete(2, K, true, 30, 40),
        get(2, K, Some("b"), 50, 60),
    ]);
}

#[test]
fn unknown_put_and_cas_of_one_value_are_not_interchangeable() {
    // The first read of "b" must use the CAS, keeping the put for after "c".
    assert_linearizable(&[
        put(0, K, "a", 0, 5),
        put_unknown(1, K, "b", 6),
        cas_unknown(2, K, "a", "b", 7),
        get(3, K, Some("b"), 10, 20),
        put(0, K, "c", 30, 40),
        get(3, K, Some("b"), 50, 60),
    ]);
}

#[test]
fn unread_unknown_put_is_not_always_the_one_to_use() {
    // Using "u" for the delete leaves only "b" for the failed CAS, which needs
    // something else; using "b" for the delete leaves "u" for it.
    assert_linearizable(&[
        put_unknown(0, K, "u", 0),
        put_unknown(1, K, "b", 0),
        delete(2, K, true, 10, 20),
        put(2, K, "b", 30, 40),
        cas_failed(2, K, "b", "c", 50, 60),
    ]);
}

#[test]
fn report_describes_cas() {
    let report = assert_not_linearizable(&[
        put(0, K, "a", 0, 10),
        cas_failed(1, K, "a", "b", 20, 30),
        cas(1, K, "a", "c", 40, 50),
        cas_unknown(1, K, "c", "d", 60),
    ]);
    assert!(report.contains("cas \"a\" -> \"b\""), "{report}");
    assert!(report.contains("failed (did not hold the expected value)"), "{report}");
    assert!(report.contains("ok (swapped)"), "{report}");
    assert!(report.contains("prefix found is [#0]"), "{report}");
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
fn long_enabler_chains_count_against_the_budget() {
    let history = [
        put(0, K, "a", 0, 10),
        cas_unknown(1, K, "a", "b", 20),
        cas_unknown(2, K, "b", "c", 20),
        cas_unknown(3, K, "c", "d", 20),
        get(4, K, Some("e"), 30, 40),
    ];
    // One state (after the put) uses the budget up before any chain of two.
    let report = check_with_budget(&history, 1).expect_err("one state is not enough");
    assert!(report.contains("inconclusive"), "{report}");
    let report = check_with_budget(&history, 100).expect_err("nothing writes \"e\"");
    assert!(report.contains("is not linearizable"), "{report}");
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
    let cas_as_put = event(0, K, cas_op("a", "b"), (0, Some(10)), Outcome::PutOk);
    assert!(check(&[cas_as_put]).expect_err("a CAS cannot return a put's answer").contains("malformed event #0"));
    let put_as_cas = event(0, K, Op::Put("a".into()), (0, Some(10)), Outcome::CasFailed);
    assert!(check(&[put_as_cas]).expect_err("a put cannot fail a comparison").contains("malformed event #0"));
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
/// Values are unique per write, as in the integration tests and the simulator;
/// a CAS expects the current value or, less often, an older one. Some puts,
/// deletes and CASes lose their answer (and then may or may not apply).
fn random_linearizable_history(seed: u64, count: u64) -> Vec<Event> {
    let mut rng = XorShift(seed);
    let mut register: Option<Vec<u8>> = None;
    let mut written: Vec<Vec<u8>> = vec![b"v-never".to_vec()];
    let mut history = Vec::new();
    for i in 0..count {
        let at = 1_000 + 100 * i;
        let span = (at - rng.below(1_000), Some(at + rng.below(1_000)));
        let unknown = rng.below(10) == 0;
        let value = format!("v{i}").into_bytes();
        let event = match rng.below(4) {
            0 => {
                written.push(value.clone());
                if !unknown || rng.below(2) == 0 {
                    register = Some(value.clone());
                }
                (Op::Put(value), if unknown { Outcome::Unknown } else { Outcome::PutOk })
            }
            1 => (Op::Get, Outcome::GetOk(register.clone())),
            2 => {
                let expected = match &register {
                    Some(current) if rng.below(3) > 0 => current.clone(),
                    _ => written[written.len() - 1 - rng.below(written.len().min(5) as u64) as usize].clone(),
                };
                let found = register.as_ref() == Some(&expected);
                written.push(value.clone());
                if found && (!unknown || rng.below(2) == 0) {
                    register = Some(value.clone());
                }
                let outcome = match (unknown, found) {
                    (true, _) => Outcome::Unknown,
                    (false, true) => Outcome::CasOk,
                    (false, false) => Outcome::CasFailed,
                };
                (Op::Cas { expected, new: value }, outcome)
            }
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
        // Placing an unknown CAS means it took effect; one that did not is left out.
        (Op::Cas { expected, new }, Outcome::CasOk | Outcome::Unknown) => {
            (register.as_ref() == Some(expected)).then(|| Some(new.clone()))
        }
        (Op::Cas { expected, .. }, Outcome::CasFailed) => {
            (register.as_ref() != Some(expected)).then(|| register.clone())
        }
        _ => panic!("the generator makes no other events"),
    }
}

/// Small random histories, linearizable or not, on one key. CASes are one
/// operation in four, or (`cas_heavy`) one in two, with half their outcomes
/// unknown and a third value to write, so that chains of unknown CASes matter.
fn random_small_history(rng: &mut XorShift, cas_heavy: bool) -> Vec<Event> {
    let value = |rng: &mut XorShift| ["a", "b"][rng.below(2) as usize].as_bytes().to_vec();
    let cas_value =
        |rng: &mut XorShift| ["a", "b", "c"][rng.below(2 + u64::from(cas_heavy)) as usize].as_bytes().to_vec();
    (0..1 + rng.below(7))
        .map(|client| {
            let kind = rng.below(4);
            let is_cas = kind == 3 || (cas_heavy && kind == 2);
            let from = rng.below(60);
            let unknown = rng.below(if is_cas && cas_heavy { 2 } else { 3 }) == 0;
            let to = (!unknown).then(|| from + rng.below(30));
            let (op, outcome) = match kind {
                _ if is_cas => {
                    let op = Op::Cas { expected: cas_value(rng), new: cas_value(rng) };
                    (op, if rng.below(2) == 0 { Outcome::CasOk } else { Outcome::CasFailed })
                }
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
    agrees_with_brute_force(0x9e37_79b9_7f4a_7c15, false);
}

#[test]
fn agrees_with_brute_force_on_small_cas_heavy_histories() {
    agrees_with_brute_force(0x2545_f491_4f6c_dd1d, true);
}

fn agrees_with_brute_force(seed: u64, cas_heavy: bool) {
    let mut rng = XorShift(seed);
    let (mut passed, mut failed) = (0, 0);
    for round in 0..20_000 {
        let history = random_small_history(&mut rng, cas_heavy);
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
