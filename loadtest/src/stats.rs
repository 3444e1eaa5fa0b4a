//! Percentiles of samples, and Prometheus text parsing with histogram quantiles (for the operator's
//! queue wait and the API servers' mutating-call latency). Pure.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentiles; `None` without samples (the caller decides whether that is fatal).
pub fn summary(samples: &[f64]) -> Option<Summary> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1];
    Some(Summary {
        count: s.len(),
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: s[s.len() - 1],
    })
}

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text format (comments skipped; lines that do not parse are skipped too: exporters
/// add types this harness does not read).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], Some((&line[open + 1..close], &line[close + 1..])))
        }
        None => (line.split_whitespace().next()?, None),
    };
    let (labels, value_part) = match rest {
        Some((inner, after)) => (parse_labels(inner)?, after),
        None => (BTreeMap::new(), &line[head.len()..]),
    };
    let value = value_part.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name: head.trim().to_string(),
        labels,
        value,
    })
}

fn parse_labels(inner: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key, value);
        rest = after[end? + 1..].trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// Cumulative bucket counts of histogram `name` (its `_bucket` samples) summed over every sample
/// whose labels pass `keep`, by upper bound.
pub fn buckets(
    samples: &[Sample],
    name: &str,
    keep: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<Bound, f64> {
    let bucket = format!("{name}_bucket");
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == bucket && keep(&s.labels)) {
        let Some(le) = s.labels.get("le").and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        *out.entry(Bound(le)).or_insert(0.0) += s.value;
    }
    out
}

/// Adds `b` into `a` (histograms of several processes).
pub fn add(a: &mut BTreeMap<Bound, f64>, b: &BTreeMap<Bound, f64>) {
    for (k, v) in b {
        *a.entry(*k).or_insert(0.0) += v;
    }
}

/// `after − before`, per bucket (the requests of one time window).
pub fn delta(after: &BTreeMap<Bound, f64>, before: &BTreeMap<Bound, f64>) -> BTreeMap<Bound, f64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// A bucket's upper bound, ordered (+Inf last).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound(pub f64);
impl Eq for Bound {}
impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Quantile `q` of cumulative buckets, linearly interpolated inside the bucket as Prometheus'
/// histogram_quantile does; a quantile in the +Inf bucket is reported as the last finite bound.
/// `None` when the histogram is empty.
pub fn quantile(q: f64, cumulative: &BTreeMap<Bound, f64>) -> Option<f64> {
    let total = cumulative.values().copied().fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut prev_bound, mut prev_count) = (0.0, 0.0);
    for (Bound(le), count) in cumulative {
        if *count >= rank {
            if le.is_infinite() {
                return Some(prev_bound);
            }
            let width = count - prev_count;
            let frac = if width > 0.0 { (rank - prev_count) / width } else { 1.0 };
            return Some(prev_bound + (le - prev_bound) * frac);
        }
        (prev_bound, prev_count) = (*le, *count);
    }
    Some(prev_bound)
}

/// Sum of every sample of `name` whose labels pass `keep`.
pub fn sum(samples: &[Sample], name: &str, keep: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && keep(&s.labels))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summary(&v).expect("samples");
        assert_eq!((s.count, s.p50, s.p90, s.p99, s.max), (100, 50.0, 90.0, 99.0, 100.0));
        assert_eq!(summary(&[3.0]).map(|s| s.p99), Some(3.0));
        assert_eq!(summary(&[]), None);
        assert_eq!(summary(&[f64::NAN]), None);
    }

    const TEXT: &str = r#"# HELP x
# TYPE q histogram
q_bucket{verb="POST",le="0.1"} 90
q_bucket{verb="POST",le="1"} 99
q_bucket{verb="POST",le="+Inf"} 100
q_bucket{verb="GET",le="0.1"} 0
q_bucket{verb="GET",le="1"} 0
q_bucket{verb="GET",le="+Inf"} 1000
w_total{context="a,b",msg="say \"hi\""} 7
plain 3.5
"#;

    #[test]
    fn parses_labels_with_commas_and_escapes() {
        let s = parse(TEXT);
        assert_eq!(
            sum(&s, "w_total", |l| l.get("context").map(String::as_str) == Some("a,b")),
            7.0
        );
        assert_eq!(
            sum(&s, "w_total", |l| l.get("msg").map(String::as_str)
                == Some("say \"hi\"")),
            7.0
        );
        assert_eq!(sum(&s, "plain", |_| true), 3.5);
    }

    #[test]
    fn histogram_quantile_interpolates_within_the_bucket() {
        let s = parse(TEXT);
        let post = buckets(&s, "q", |l| l.get("verb").map(String::as_str) == Some("POST"));
        let p50 = quantile(0.5, &post).expect("p50");
        assert!((p50 - 0.1 * 50.0 / 90.0).abs() < 1e-9, "{p50}");
        let p99 = quantile(0.99, &post).expect("p99");
        assert!((p99 - 1.0).abs() < 1e-9, "{p99}");
        // above the last finite bound: reported as that bound
        assert_eq!(quantile(1.0, &post), Some(1.0));
        let get = buckets(&s, "q", |l| l.get("verb").map(String::as_str) == Some("GET"));
        assert_eq!(quantile(0.5, &get), Some(1.0));
        assert_eq!(quantile(0.5, &BTreeMap::new()), None);
    }

    #[test]
    fn deltas_and_sums_of_histograms() {
        let s = parse(TEXT);
        let post = buckets(&s, "q", |l| l.get("verb").map(String::as_str) == Some("POST"));
        let mut twice = post.clone();
        add(&mut twice, &post);
        assert_eq!(twice.get(&Bound(f64::INFINITY)), Some(&200.0));
        let d = delta(&twice, &post);
        assert_eq!(d, post);
    }
}
