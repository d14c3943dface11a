//! kvd patch: the randomness behind randomized election timeouts.
//!
//! Upstream draws from `rand::thread_rng()`, which no caller can seed. Here
//! each thread has its own generator, seeded from the operating system's
//! entropy on first use like `thread_rng`, which a deterministic simulator
//! reseeds with [`seed`] before a run so that every election replays.

use std::cell::RefCell;
use std::ops::Range;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

thread_local! {
    static RNG: RefCell<StdRng> = RefCell::new(StdRng::from_entropy());
}

/// Reseeds this thread's election-timeout generator.
pub fn seed(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// A number drawn uniformly from `range` with this thread's generator.
pub(crate) fn gen_range(range: Range<usize>) -> usize {
    RNG.with(|r| r.borrow_mut().gen_range(range))
}
