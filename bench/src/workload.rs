//! Workload generation: which operation, which key, which value.

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
        let mut rng = SmallRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let next_seq = rng.gen_range(0..workload.keys);
        let value = (0..workload.value_bytes_max).map(|i| b'a' + (i % 26) as u8).collect();
        Generator { workload, rng, zipf, next_seq, value }
    }

    pub fn op(&mut self) -> Op {
        if self.rng.gen::<f64>() < self.workload.mix.read_share {
            Op::Get
        } else {
            Op::Set
        }
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
}
