//! Latency summaries from HDR histograms, and how figures are printed.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Histograms hold microseconds from 1 µs to 100 s at 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds that satisfy the constructor's rules
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid constant histogram bounds")
}

/// The percentiles a table shows, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// `812 µs`, `1.24 ms`, `2.10 s`; `-` when nothing was measured.
pub fn fmt_us(us: u64) -> String {
    if us == 0 {
        "-".to_owned()
    } else if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// A latency added over a baseline: `+130 µs`, `-20 µs` (noise shows as
/// negative rather than being hidden).
pub fn fmt_added_us(proxy: u64, direct: u64) -> String {
    let d = proxy as i64 - direct as i64;
    let sign = if d < 0 { "-" } else { "+" };
    let a = d.unsigned_abs();
    if a < 1_000 {
        format!("{sign}{a} µs")
    } else {
        format!("{sign}{:.2} ms", a as f64 / 1e3)
    }
}

/// Thousands separated by commas: `41,203`.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A share as a percentage with two decimals; `-` when there is no total.
pub fn fmt_share(part: u64, total: u64) -> String {
    if total == 0 {
        "-".to_owned()
    } else {
        format!("{:.2}%", part as f64 * 100.0 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.saturating_record(v * 10);
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        // 3 significant digits: values are exact to within 0.1%.
        assert!((4995..=5005).contains(&l.p50_us), "{l:?}");
        assert!((9895..=9905).contains(&l.p99_us), "{l:?}");
        assert!((9985..=9995).contains(&l.p999_us), "{l:?}");
        assert!((9995..=10_010).contains(&l.max_us), "{l:?}");
    }

    #[test]
    fn one_outlier_shows_in_max_and_p999_only() {
        let mut h = new_histogram();
        for _ in 0..999 {
            h.saturating_record(100);
        }
        h.saturating_record(2_000_000);
        let l = Latency::of(&h);
        assert_eq!((l.p50_us, l.p99_us), (100, 100));
        assert_eq!(l.p999_us, 100);
        assert!(l.max_us >= 1_999_000, "{l:?}");
        h.saturating_record(2_000_000);
        assert!(Latency::of(&h).p999_us >= 1_999_000);
    }

    #[test]
    fn empty_histogram_is_all_zero() {
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_us(0), "-");
        assert_eq!(fmt_us(812), "812 µs");
        assert_eq!(fmt_us(1_240), "1.24 ms");
        assert_eq!(fmt_us(2_100_000), "2.10 s");
        assert_eq!(fmt_added_us(1_130, 1_000), "+130 µs");
        assert_eq!(fmt_added_us(980, 1_000), "-20 µs");
        assert_eq!(fmt_added_us(4_500, 1_000), "+3.50 ms");
        assert_eq!(fmt_count(41_203), "41,203");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1_000_000), "1,000,000");
        assert_eq!(fmt_share(1, 8), "12.50%");
        assert_eq!(fmt_share(0, 0), "-");
    }
}
