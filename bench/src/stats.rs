//! Latency summaries: percentiles by rank over every sample (no histogram buckets, so p99.9
//! of a few thousand samples is a real sample, not an interpolation).

use std::time::Duration;

use serde::Serialize;

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Latency {
    /// `None` without samples.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut s: Vec<Duration> = samples.to_vec();
        s.sort_unstable();
        let total: Duration = s.iter().sum();
        Some(Latency {
            count: s.len(),
            mean_ms: ms(total) / s.len() as f64,
            p50_ms: ms(rank(&s, 0.50)),
            p99_ms: ms(rank(&s, 0.99)),
            p999_ms: ms(rank(&s, 0.999)),
            min_ms: ms(s[0]),
            max_ms: ms(s[s.len() - 1]),
        })
    }
}

/// The sample at quantile `q` of sorted `s` (nearest rank).
fn rank(s: &[Duration], q: f64) -> Duration {
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

/// Median, min and max of a few repeated measurements (failover, catch-up).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub all_ms: Vec<f64>,
}

impl Spread {
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let all_ms: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
        let mut s = all_ms.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median_ms = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Spread {
            runs: n,
            median_ms,
            min_ms: s[0],
            max_ms: s[n - 1],
            all_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn percentiles_are_real_samples_by_rank() {
        let samples: Vec<Duration> = (1..=1000).rev().map(d).collect();
        let l = Latency::of(&samples).unwrap();
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50_ms, 500.0);
        assert_eq!(l.p99_ms, 990.0);
        assert_eq!(l.p999_ms, 999.0);
        assert_eq!(l.min_ms, 1.0);
        assert_eq!(l.max_ms, 1000.0);
        assert!((l.mean_ms - 500.5).abs() < 1e-9);
        let one = Latency::of(&[d(7)]).unwrap();
        assert_eq!((one.p50_ms, one.p999_ms), (7.0, 7.0));
        assert!(Latency::of(&[]).is_none());
    }

    #[test]
    fn spread_has_the_median_of_odd_and_even_counts() {
        let s = Spread::of(&[d(30), d(10), d(20)]).unwrap();
        assert_eq!((s.median_ms, s.min_ms, s.max_ms), (20.0, 10.0, 30.0));
        assert_eq!(s.all_ms, vec![30.0, 10.0, 20.0]);
        assert_eq!(Spread::of(&[d(10), d(40)]).unwrap().median_ms, 25.0);
    }
}
