//! Workload generation: which operation, which key, which value, and
//! which SETs carry an expiry.
//!
//! Invariant: everything is drawn from seeded generators, so a seed repeats
//! a run's requests. The TTL choice has a stream of its own, so a run with
//! `--ttl-share` sends the same operations, keys and values as the run
//! without it under the same seed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How keys are chosen from `0..keys`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDist {
    Uniform,
    /// Zipfian with exponent `s` (YCSB uses 0.99); key 0 is the hottest.
    Zipf(f64),
    /// 0, 1, 2, … wrapping around; each generator starts at its own offset.
    Sequential,
}

impl KeyDist {
    pub fn parse(s: &str) -> Result<KeyDist, String> {
        match s {
            "uniform" => Ok(KeyDist::Uniform),
            "seq" | "sequential" => Ok(KeyDist::Sequential),
            _ => {
                let theta: f64 = s
                    .strip_prefix("zipf:")
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| format!("key distribution {s:?} is not uniform, sequential or zipf:<s>"))?;
                if !(theta > 0.0 && theta < 1.0) {
                    return Err(format!("zipf exponent {theta} must be in (0, 1)"));
                }
                Ok(KeyDist::Zipf(theta))
            }
        }
    }
}

/// Operation mix: the share of reads, in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    pub read_share: f64,
}

impl Mix {
    /// `set`, `get`, or `mix:<read share>` such as `mix:0.9`.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let read_share = match s {
            "set" => 0.0,
            "get" => 1.0,
            _ => s
                .strip_prefix("mix:")
                .and_then(|r| r.parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("workload {s:?} is not set, get or mix:<read share 0..1>"))?,
        };
        Ok(Mix { read_share })
    }
}

/// Longest TTL: memcached reads an exptime over 30 days as an absolute
/// Unix time, so a longer relative TTL would mean something else there.
pub const TTL_SECONDS_MAX: u64 = 30 * 24 * 3600;

/// Which SETs carry an expiry: a share of them, each with the same TTL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ttl {
    /// In `[0, 1]`; 0 sends no TTL at all.
    pub share: f64,
    /// In `1..=TTL_SECONDS_MAX`.
    pub seconds: u64,
}

impl Ttl {
    /// No SET carries a TTL.
    pub const NONE: Ttl = Ttl { share: 0.0, seconds: 60 };

    /// Checks `--ttl-share` and `--ttl`.
    pub fn new(share: f64, seconds: u64) -> Result<Ttl, String> {
        if !(0.0..=1.0).contains(&share) {
            return Err(format!("--ttl-share {share} is not in 0..=1"));
        }
        if !(1..=TTL_SECONDS_MAX).contains(&seconds) {
            return Err(format!("--ttl {seconds} is not 1 to {TTL_SECONDS_MAX} seconds (30 days, memcached's limit)"));
        }
        Ok(Ttl { share, seconds })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub mix: Mix,
    pub keys: u64,
    pub dist: KeyDist,
    pub value_bytes_min: usize,
    pub value_bytes_max: usize,
    pub key_prefix: String,
    pub ttl: Ttl,
    /// Values of random bytes (incompressible) instead of repeated text.
    pub random_values: bool,
}

/// Zipfian sampler (Gray et al., "Quickly generating billion-record
/// synthetic databases", as in YCSB): O(n) set-up, O(1) per sample.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    pub fn new(n: u64, theta: f64) -> Zipf {
        assert!(n > 0);
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipf { n, theta, alpha, zetan, eta }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        let k = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        k.min(self.n - 1)
    }
}

/// One connection's stream of requests.
pub struct Generator {
    workload: Workload,
    rng: SmallRng,
    /// Draws which SETs carry a TTL (see the module doc for why apart).
    ttl_rng: SmallRng,
    zipf: Option<Zipf>,
    next_seq: u64,
    value: Vec<u8>,
}

impl Generator {
    /// `stream` distinguishes generators of one run (same seed, different
    /// streams give different sequences).
    pub fn new(workload: Workload, seed: u64, stream: u64) -> Generator {
        let zipf = match workload.dist {
            KeyDist::Zipf(theta) => Some(Zipf::new(workload.keys, theta)),
            _ => None,
        };
        let stream_seed = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = SmallRng::seed_from_u64(stream_seed);
        let ttl_rng = SmallRng::seed_from_u64(stream_seed ^ 0xD1B5_4A32_D192_ED03);
        let next_seq = rng.gen_range(0..workload.keys);
        let value = match workload.random_values {
            true => (0..workload.value_bytes_max).map(|_| rng.gen::<u8>()).collect(),
            false => (0..workload.value_bytes_max).map(|i| b'a' + (i % 26) as u8).collect(),
        };
        Generator { workload, rng, ttl_rng, zipf, next_seq, value }
    }

    pub fn op(&mut self) -> Op {
        if self.rng.gen::<f64>() < self.workload.mix.read_share {
            Op::Get
        } else {
            Op::Set
        }
    }

    /// The TTL of a request: `Some(seconds)` for the workload's share of
    /// SETs, `None` for the other SETs and for every GET.
    pub fn ttl_s(&mut self, op: Op) -> Option<u64> {
        let Ttl { share, seconds } = self.workload.ttl;
        // A draw in [0, 1): share 0 never passes, share 1 always does.
        (op == Op::Set && self.ttl_rng.gen::<f64>() < share).then_some(seconds)
    }

    pub fn key_index(&mut self) -> u64 {
        match self.workload.dist {
            KeyDist::Uniform => self.rng.gen_range(0..self.workload.keys),
            KeyDist::Zipf(_) => self.zipf.as_ref().expect("zipf set up").sample(&mut self.rng),
            KeyDist::Sequential => {
                let k = self.next_seq;
                self.next_seq = (self.next_seq + 1) % self.workload.keys;
                k
            }
        }
    }

    pub fn key(&mut self) -> Vec<u8> {
        let i = self.key_index();
        format!("{}{i:012}", self.workload.key_prefix).into_bytes()
    }

    pub fn value(&mut self) -> &[u8] {
        let len = self.rng.gen_range(self.workload.value_bytes_min..=self.workload.value_bytes_max);
        &self.value[..len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(mix: f64, dist: KeyDist) -> Workload {
        Workload {
            mix: Mix { read_share: mix },
            keys: 1000,
            dist,
            value_bytes_min: 10,
            value_bytes_max: 20,
            key_prefix: "k".into(),
            ttl: Ttl::NONE,
            random_values: false,
        }
    }

    #[test]
    fn parses() {
        assert_eq!(KeyDist::parse("zipf:0.99"), Ok(KeyDist::Zipf(0.99)));
        assert_eq!(KeyDist::parse("uniform"), Ok(KeyDist::Uniform));
        assert!(KeyDist::parse("zipf:x").is_err());
        assert_eq!(Mix::parse("mix:0.9"), Ok(Mix { read_share: 0.9 }));
        assert!(Mix::parse("mix:2").is_err());
    }

    #[test]
    fn mix_and_values_follow_the_workload() {
        let mut g = Generator::new(workload(0.9, KeyDist::Uniform), 7, 0);
        let reads = (0..100_000).filter(|_| g.op() == Op::Get).count();
        assert!((88_000..92_000).contains(&reads), "{reads}");
        for _ in 0..1000 {
            let len = g.value().len();
            assert!((10..=20).contains(&len));
        }
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let mut g = Generator::new(workload(1.0, KeyDist::Zipf(0.99)), 1, 0);
        let mut counts = vec![0u32; 1000];
        for _ in 0..200_000 {
            counts[g.key_index() as usize] += 1;
        }
        // The hottest key gets far more than its uniform share (200).
        assert!(counts[0] > 10 * 200, "{}", counts[0]);
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn sequential_wraps_and_same_seed_repeats() {
        let mut a = Generator::new(workload(0.0, KeyDist::Sequential), 3, 1);
        let first = a.key_index();
        for i in 1..2000 {
            assert_eq!(a.key_index(), (first + i) % 1000);
        }
        let mut b = Generator::new(workload(0.5, KeyDist::Uniform), 42, 5);
        let mut c = Generator::new(workload(0.5, KeyDist::Uniform), 42, 5);
        for _ in 0..100 {
            assert_eq!((b.op(), b.key()), (c.op(), c.key()));
        }
    }

    #[test]
    fn the_ttl_goes_on_a_seeded_share_of_sets() {
        let draws = 100_000;
        let with = |share: f64, seed: u64| {
            let ttl = Ttl::new(share, 600).unwrap();
            Generator::new(Workload { ttl, ..workload(0.0, KeyDist::Uniform) }, seed, 3)
        };
        let count =
            |g: &mut Generator| (0..draws).filter_map(|_| g.ttl_s(Op::Set)).inspect(|s| assert_eq!(*s, 600)).count();
        assert_eq!(count(&mut with(0.0, 9)), 0);
        assert_eq!(count(&mut with(1.0, 9)), draws);
        let seed = 20260301;
        println!("ttl share seed {seed}");
        let tagged = count(&mut with(0.3, seed));
        // 30 000 expected; a binomial count's standard deviation is ~145.
        assert!((29_000..31_000).contains(&tagged), "{tagged}");
        let (mut a, mut b) = (with(0.3, seed), with(0.3, seed));
        for _ in 0..1000 {
            assert_eq!(a.ttl_s(Op::Set), b.ttl_s(Op::Set), "same seed, same choice");
        }
        assert!((0..1000).all(|_| a.ttl_s(Op::Get).is_none()), "a GET never carries a TTL");
        // The TTL draw has its own stream: keys and values do not change.
        let (mut plain, mut tagged) = (with(0.0, seed), with(0.5, seed));
        for _ in 0..1000 {
            tagged.ttl_s(Op::Set);
            assert_eq!(
                (plain.op(), plain.key(), plain.value().len()),
                (tagged.op(), tagged.key(), tagged.value().len())
            );
        }
    }

    #[test]
    fn ttl_options_are_checked() {
        assert!(Ttl::new(0.5, 60).is_ok());
        for (share, seconds) in [(-0.1, 60), (1.5, 60), (f64::NAN, 60), (0.5, 0), (0.5, TTL_SECONDS_MAX + 1)] {
            assert!(Ttl::new(share, seconds).is_err(), "{share} {seconds}");
        }
    }
}
