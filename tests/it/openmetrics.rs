//! A strict reader of the OpenMetrics text format, enough to check what
//! `/metrics` serves: descriptors before samples, sample names that belong
//! to their family's type, well-formed labels and values, cumulative
//! histogram buckets ending in `+Inf` that match `_count`, and `# EOF`.
//! Every violation panics naming the line.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type.
    pub families: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Every sample name the families may produce (whether or not a sample
    /// is present yet): what a query may refer to.
    pub fn sample_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (family, kind) in &self.families {
            for suffix in suffixes(kind) {
                names.insert(format!("{family}{suffix}"));
            }
        }
        names
    }

    /// The value of the sample `name` whose labels include `labels`; 0 if
    /// there is none yet.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} names several samples: {matching:?}");
        matching.first().map_or(0.0, |s| s.value)
    }
}

impl Exposition {
    /// The sum of the samples `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matches = |s: &&Sample| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v));
        self.samples.iter().filter(|s| s.name == name).filter(matches).map(|s| s.value).sum()
    }
}

fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        "gauge" | "unknown" | "stateset" | "info" => &[""],
        other => panic!("unknown metric type {other}"),
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Parses `{k="v",...}` at the start of `text`; returns the labels and the rest.
fn labels(text: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = text.strip_prefix('{') else { return (labels, text.to_string()) };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after.to_string());
        }
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label without =\" in {line:?}"));
        assert!(is_name(name), "bad label name {name:?} in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(labels.insert(name.to_string(), value).is_none(), "label {name} twice in {line:?}");
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses and checks an exposition; panics on the first violation.
pub fn parse(text: &str) -> Exposition {
    let mut e = Exposition::default();
    let body = text.strip_suffix("# EOF\n").unwrap_or_else(|| panic!("no final # EOF line"));
    let mut current: Option<(String, String)> = None;
    for line in body.lines() {
        if let Some(desc) = line.strip_prefix("# ") {
            let mut parts = desc.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            let rest = parts.next().unwrap_or("");
            assert!(is_name(name), "bad metric name in {line:?}");
            match kind {
                "TYPE" => {
                    suffixes(rest);
                    assert!(e.families.insert(name.to_string(), rest.to_string()).is_none(), "{name} declared twice");
                    current = Some((name.to_string(), rest.to_string()));
                }
                "HELP" => assert!(!rest.is_empty(), "empty help in {line:?}"),
                "UNIT" => assert!(name.ends_with(&format!("_{rest}")), "{name} does not end with its unit {rest}"),
                _ => panic!("unknown descriptor {line:?}"),
            }
            continue;
        }
        let (family, kind) = current.clone().unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
        let split = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..split];
        let suffix = name.strip_prefix(family.as_str()).unwrap_or_else(|| panic!("{name} is not of family {family}"));
        assert!(suffixes(&kind).contains(&suffix), "{name}: suffix {suffix:?} does not fit a {kind}");
        let (labels, rest) = labels(&line[split..], line);
        let mut fields = rest.trim_start_matches(' ').split(' ');
        let v = fields.next().and_then(value).unwrap_or_else(|| panic!("bad value in {line:?}"));
        assert!(fields.all(|ts| ts.parse::<f64>().is_ok()), "bad timestamp in {line:?}");
        if kind == "counter" && suffix == "_total" {
            assert!(v >= 0.0, "negative counter in {line:?}");
        }
        e.samples.push(Sample { name: name.to_string(), labels, value: v });
    }
    check_histograms(&e);
    e
}

fn check_histograms(e: &Exposition) {
    for (family, _) in e.families.iter().filter(|(_, k)| *k == "histogram") {
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in e.samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let mut key = s.labels.clone();
            let le = key.remove("le").unwrap_or_else(|| panic!("{family} bucket without le"));
            series.entry(key).or_default().push((value(&le).expect("le is a number"), s.value));
        }
        for (labels, buckets) in series {
            assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{family}{labels:?}: {buckets:?}");
            let (last_le, last) = *buckets.last().unwrap();
            assert_eq!(last_le, f64::INFINITY, "{family}{labels:?} lacks a +Inf bucket");
            let count = e.samples.iter().find(|s| s.name == format!("{family}_count") && s.labels == labels);
            assert_eq!(count.map(|s| s.value), Some(last), "{family}{labels:?}: +Inf bucket and _count differ");
        }
    }
}

#[test]
fn the_reader_refuses_broken_expositions() {
    let good = "# TYPE a counter\na_total{x=\"1\"} 2\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 3\n# EOF\n";
    assert_eq!(parse(good).value("a_total", &[("x", "1")]), 2.0);
    for bad in [
        "# TYPE a counter\na_total 1\n",
        "# TYPE a counter\na 1\n# EOF\n",
        "a_total 1\n# EOF\n",
        "# TYPE a gauge\na{x=1} 1\n# EOF\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n# EOF\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n# EOF\n",
    ] {
        assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "accepted {bad:?}");
    }
}
