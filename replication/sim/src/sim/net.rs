//! A simulated network between nodes: every message is delayed, and while
//! faults run it may be dropped, duplicated or reordered (by jitter), and
//! directed links may be cut (partitions, asymmetric ones included). Every
//! effect is bounded: a delay never exceeds `delay_max_us`, a message is
//! delivered at most twice.

use std::collections::BTreeSet;

use super::rng::Rng;

/// How messages fare right now.
#[derive(Debug, Clone)]
pub struct NetConditions {
    pub delay_min_us: u64,
    pub delay_max_us: u64,
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message arrives twice.
    pub duplicate: f64,
}

impl NetConditions {
    /// A healthy local network: 50–150 µs, nothing lost.
    pub fn calm() -> NetConditions {
        NetConditions { delay_min_us: 50, delay_max_us: 150, drop: 0.0, duplicate: 0.0 }
    }
}

#[derive(Debug)]
pub struct Net {
    pub conditions: NetConditions,
    /// Directed links that deliver nothing: (from, to).
    cut: BTreeSet<(u64, u64)>,
}

impl Net {
    pub fn new() -> Net {
        Net { conditions: NetConditions::calm(), cut: BTreeSet::new() }
    }

    pub fn cut(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.contains(&(from, to))
    }

    /// The delays after which a message from `from` to `to` arrives: none
    /// (lost or cut), one, or two (duplicated).
    pub fn deliveries(&self, from: u64, to: u64, rng: &mut Rng) -> Vec<u64> {
        let c = &self.conditions;
        if from != to && (self.is_cut(from, to) || rng.chance(c.drop)) {
            return Vec::new();
        }
        let mut delays = vec![rng.between(c.delay_min_us, c.delay_max_us)];
        if from != to && rng.chance(c.duplicate) {
            delays.push(rng.between(c.delay_min_us, c.delay_max_us));
        }
        delays
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_links_deliver_nothing_and_delays_stay_bounded() {
        let mut net = Net::new();
        net.cut(1, 2);
        let mut rng = Rng::new(3);
        assert!(net.deliveries(1, 2, &mut rng).is_empty());
        assert_eq!(net.deliveries(2, 1, &mut rng).len(), 1, "a cut is one-way");
        net.conditions = NetConditions { delay_min_us: 10, delay_max_us: 20, drop: 0.0, duplicate: 1.0 };
        let d = net.deliveries(2, 3, &mut rng);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|x| (10..=20).contains(x)));
        net.heal();
        assert!(!net.is_cut(1, 2));
    }
}
