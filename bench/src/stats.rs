//! Latency histograms (nanoseconds, 3 significant digits) per operation,
//! their merge, and the report formats: a summary table, JSON, and `.hgrm`
//! percentile distributions that HdrHistogram's plotter loads.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::workload::Op;

/// Longest latency recorded exactly; longer ones are clamped to it.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;

#[derive(Debug, Clone)]
pub struct OpStats {
    pub latency_ns: Histogram<u64>,
    pub errors: u64,
    pub misses: u64,
}

impl Default for OpStats {
    fn default() -> OpStats {
        OpStats {
            latency_ns: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid bounds"),
            errors: 0,
            misses: 0,
        }
    }
}

/// Measurements of one connection, thread or run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub get: OpStats,
    pub set: OpStats,
    /// One example error message, for the report.
    pub first_error: Option<String>,
    /// Open loop: requests whose intended send time fell in the measured
    /// window (each is answered, failed, or counted in `unanswered`).
    pub scheduled: u64,
    /// Open loop: scheduled requests still unanswered when the run ended.
    pub unanswered: u64,
}

impl Stats {
    pub fn op_mut(&mut self, op: Op) -> &mut OpStats {
        match op {
            Op::Get => &mut self.get,
            Op::Set => &mut self.set,
        }
    }

    pub fn record(&mut self, op: Op, latency_ns: u64) {
        self.op_mut(op).latency_ns.saturating_record(latency_ns.clamp(1, LATENCY_NS_MAX));
    }

    pub fn merge(&mut self, other: &Stats) {
        for (mine, theirs) in [(&mut self.get, &other.get), (&mut self.set, &other.set)] {
            mine.latency_ns.add(&theirs.latency_ns).expect("same bounds");
            mine.errors += theirs.errors;
            mine.misses += theirs.misses;
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.scheduled += other.scheduled;
        self.unanswered += other.unanswered;
    }

    pub fn ops(&self) -> u64 {
        self.get.latency_ns.len() + self.set.latency_ns.len()
    }

    pub fn errors(&self) -> u64 {
        self.get.errors + self.set.errors
    }

    pub fn named(&self) -> [(&'static str, &OpStats); 2] {
        [("GET", &self.get), ("SET", &self.set)]
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The terminal summary.
pub fn summary(stats: &Stats, seconds: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<4} {:>12} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "ops/s", "errors", "misses", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"
    );
    for (name, s) in stats.named() {
        let h = &s.latency_ns;
        if h.is_empty() && s.errors == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "{name:<4} {:>12.0} {:>10} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            h.len() as f64 / seconds,
            s.errors,
            s.misses,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
        );
    }
    let _ = writeln!(out, "all  {:>12.0} ops/s", stats.ops() as f64 / seconds);
    out
}

/// The machine-readable report.
pub fn to_json(stats: &Stats, seconds: f64, extra: serde_json::Value) -> serde_json::Value {
    let mut ops = serde_json::Map::new();
    for (name, s) in stats.named() {
        let h = &s.latency_ns;
        ops.insert(
            name.to_lowercase(),
            json!({
                "count": h.len(), "ops_per_sec": h.len() as f64 / seconds, "errors": s.errors, "misses": s.misses,
                "p50_ms": ms(h.value_at_quantile(0.5)), "p90_ms": ms(h.value_at_quantile(0.9)),
                "p99_ms": ms(h.value_at_quantile(0.99)), "p999_ms": ms(h.value_at_quantile(0.999)),
                "max_ms": ms(h.max()), "mean_ms": h.mean() / 1e6,
            }),
        );
    }
    json!({
        "seconds": seconds, "ops": stats.ops(), "ops_per_sec": stats.ops() as f64 / seconds,
        "errors": stats.errors(), "first_error": stats.first_error, "scheduled": stats.scheduled,
        "unanswered": stats.unanswered, "ops_by_type": ops, "run": extra,
    })
}

/// HdrHistogram's percentile-distribution text (values in milliseconds).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    if h.is_empty() {
        return out;
    }
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:14.2}", 1.0 / (1.0 - q)) } else { String::new() };
        let _ =
            writeln!(out, "{:12.3} {:14.12} {:10} {inv}", ms(v.value_iterated_to()), q, v.count_since_last_iteration());
    }
    let _ = writeln!(out, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", h.mean() / 1e6, h.stdev() / 1e6);
    let _ = writeln!(out, "#[Max     = {:12.3}, Total count    = {:12}]", ms(h.max()), h.len());
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), h.distinct_values());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for i in 1..=1000 {
            a.record(Op::Get, i * 1000);
            b.record(Op::Set, i * 2000);
        }
        b.record(Op::Get, 5_000_000);
        b.get.errors = 3;
        a.merge(&b);
        assert_eq!(a.get.latency_ns.len(), 1001);
        assert_eq!(a.set.latency_ns.len(), 1000);
        assert_eq!(a.errors(), 3);
        assert!(a.get.latency_ns.max() >= 4_990_000);
        let p50 = a.get.latency_ns.value_at_quantile(0.5);
        assert!((495_000..=505_000).contains(&p50), "{p50}");
    }

    #[test]
    fn reports_are_well_formed() {
        let mut s = Stats::default();
        for i in 1..=100 {
            s.record(Op::Set, i * 10_000);
        }
        let text = summary(&s, 2.0);
        assert!(text.contains("SET") && !text.contains("GET"), "{text}");
        let j = to_json(&s, 2.0, json!({"label": "x"}));
        assert_eq!(j["ops"], 100);
        assert_eq!(j["ops_by_type"]["set"]["count"], 100);
        let h = hgrm(&s.set.latency_ns);
        assert!(h.lines().count() > 10 && h.contains("#[Max"), "{h}");
        let last_data = h.lines().rfind(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap();
        assert!(last_data.contains("1.000000000000"), "{last_data}");
    }
}
