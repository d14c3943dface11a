//! The open-loop arrival schedule of one connection: the intended send
//! time of every request, fixed in advance by the rate and never moved by
//! how fast the server answers. Sans-IO: times are offsets in nanoseconds
//! from the connection's start; the caller reads the clock.
//!
//! Invariant: intended times only increase, and a request is issued at or
//! after its intended time. When the sender falls behind (a slow write, a
//! full outstanding window, a late timer), [`Schedule::due`] hands out every
//! overdue request at once with its original intended time, so the lag
//! counts in the measured latency instead of silently lowering the offered
//! load (no coordinated omission).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How gaps between arrivals are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Exponential gaps with the rate's mean: a Poisson process, like many
    /// independent clients.
    Poisson,
    /// Equal gaps: a metronome.
    Uniform,
}

impl Arrival {
    pub fn parse(s: &str) -> Result<Arrival, String> {
        match s {
            "poisson" => Ok(Arrival::Poisson),
            "uniform" => Ok(Arrival::Uniform),
            _ => Err(format!("arrival {s:?} is not poisson or uniform")),
        }
    }
}

/// Lowest rate per connection: below it a run of seconds would see no
/// request at all.
pub const OPS_PER_SEC_MIN: f64 = 0.001;

#[derive(Debug, Clone)]
pub struct Schedule {
    gap_ns_mean: f64,
    arrival: Arrival,
    rng: SmallRng,
    /// Intended offset of the next request (fractional: uniform gaps of a
    /// rate that does not divide a second do not drift).
    next_ns: f64,
    issued: u64,
}

impl Schedule {
    /// `phase` in `[0, 1)` shifts the first arrival by that share of a gap,
    /// so connections with uniform arrivals do not all send together.
    pub fn new(ops_per_sec: f64, arrival: Arrival, phase: f64, seed: u64) -> Schedule {
        assert!(ops_per_sec >= OPS_PER_SEC_MIN && ops_per_sec.is_finite(), "rate {ops_per_sec} out of range");
        assert!((0.0..1.0).contains(&phase), "phase {phase} not in [0, 1)");
        let gap_ns_mean = 1e9 / ops_per_sec;
        let mut s = Schedule { gap_ns_mean, arrival, rng: SmallRng::seed_from_u64(seed), next_ns: 0.0, issued: 0 };
        s.next_ns = match arrival {
            Arrival::Uniform => phase * gap_ns_mean,
            Arrival::Poisson => s.gap(),
        };
        s
    }

    fn gap(&mut self) -> f64 {
        match self.arrival {
            Arrival::Uniform => self.gap_ns_mean,
            Arrival::Poisson => {
                // Inverse transform of an exponential; 1 - u is in (0, 1].
                let u: f64 = self.rng.gen();
                -(1.0 - u).ln() * self.gap_ns_mean
            }
        }
    }

    /// Intended offset of the next request.
    pub fn next_ns(&self) -> u64 {
        self.next_ns as u64
    }

    /// Requests issued so far.
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// Issues every request whose intended time is at or before `now_ns`,
    /// at most `batch_max` of them, appending their intended offsets to
    /// `out`. Returns how many it issued.
    pub fn due(&mut self, now_ns: u64, batch_max: usize, out: &mut Vec<u64>) -> usize {
        assert!(batch_max > 0);
        let mut n = 0;
        while n < batch_max && self.next_ns() <= now_ns {
            let at = self.next_ns();
            assert!(out.last().copied() <= Some(at), "intended times only increase");
            out.push(at);
            self.next_ns += self.gap();
            self.issued += 1;
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_times_are_exact_and_phased() {
        let mut s = Schedule::new(1000.0, Arrival::Uniform, 0.5, 1);
        assert_eq!(s.next_ns(), 500_000);
        let mut out = Vec::new();
        assert_eq!(s.due(499_999, 10, &mut out), 0, "nothing is due early");
        for i in 0..5u64 {
            let now = 500_000 + i * 1_000_000;
            assert_eq!(s.due(now, 10, &mut out), 1);
        }
        assert_eq!(out, [500_000, 1_500_000, 2_500_000, 3_500_000, 4_500_000]);
        assert_eq!(s.issued(), 5);
    }

    #[test]
    fn catching_up_keeps_intended_times_and_respects_the_batch_bound() {
        let mut s = Schedule::new(1000.0, Arrival::Uniform, 0.0, 1);
        let mut out = Vec::new();
        // 10 ms late: 11 requests (t = 0, 1, ..., 10 ms) are due, handed out
        // 4 at a time, each with its own intended time.
        let now = 10_000_000;
        assert_eq!(s.due(now, 4, &mut out), 4);
        assert_eq!(s.due(now, 4, &mut out), 4);
        assert_eq!(s.due(now, 4, &mut out), 3);
        assert_eq!(s.due(now, 4, &mut out), 0);
        let want: Vec<u64> = (0..=10).map(|i| i * 1_000_000).collect();
        assert_eq!(out, want);
        assert_eq!(s.next_ns(), 11_000_000);
    }

    #[test]
    fn counts_over_a_window_match_the_rate() {
        // A rate that does not divide a second: no drift over 10 s.
        let mut s = Schedule::new(3.0, Arrival::Uniform, 0.0, 1);
        let mut out = Vec::new();
        s.due(10_000_000_000 - 1, usize::MAX, &mut out);
        assert_eq!(out.len(), 30);
        let seed = 20261123;
        println!("poisson schedule seed {seed}");
        let mut p = Schedule::new(10_000.0, Arrival::Poisson, 0.0, seed);
        out.clear();
        p.due(10_000_000_000, usize::MAX, &mut out);
        // 100 000 expected; a Poisson count's standard deviation is ~316.
        assert!((98_500..=101_500).contains(&out.len()), "{}", out.len());
        assert!(out.windows(2).all(|w| w[0] <= w[1]));
        let gaps: Vec<u64> = out.windows(2).map(|w| w[1] - w[0]).collect();
        let short = gaps.iter().filter(|g| **g < 100_000).count() as f64 / gaps.len() as f64;
        // P(gap < mean) = 1 - 1/e for exponential gaps: about 0.632.
        assert!((0.61..0.65).contains(&short), "{short}");
        let mut q = Schedule::new(10_000.0, Arrival::Poisson, 0.0, seed);
        let mut again = Vec::new();
        q.due(10_000_000_000, usize::MAX, &mut again);
        assert_eq!(out, again, "same seed, same schedule");
    }

    #[test]
    fn parses_arrivals() {
        assert_eq!(Arrival::parse("poisson"), Ok(Arrival::Poisson));
        assert_eq!(Arrival::parse("uniform"), Ok(Arrival::Uniform));
        assert!(Arrival::parse("bursty").is_err());
    }
}
