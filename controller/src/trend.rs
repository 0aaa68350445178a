//! Leak trends: does a counter grow with every repetition of an operation (mount,
//! unmount, a file-operation cycle)? Pure functions over per-cycle samples.
//!
//! A fixed threshold ("SUnreclaim grew by 1 MB") either misses slow leaks or fires on
//! noise. Instead: the Theil-Sen slope (median of pairwise slopes: robust to outliers
//! such as a one-off cache refill) with its distribution-free confidence interval from
//! Kendall's S statistic. A counter leaks when the lower confidence bound of its growth
//! per cycle is above zero and the growth it implies over the run is above a floor that
//! says it matters.

use serde::{Deserialize, Serialize};

/// One counter's values, one per cycle, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Counter name (e.g. `SUnreclaim`, `slab:vexfs_inode`, `file_handles`).
    pub name: String,
    /// Its unit, for messages (kB, objects, handles).
    pub unit: String,
    /// Smallest total growth over the series that counts as a leak, in `unit`.
    pub min_growth: f64,
    /// Values per cycle.
    pub values: Vec<f64>,
}

/// The fitted trend of one counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    /// Counter name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// Theil-Sen slope: growth per cycle.
    pub slope: f64,
    /// Lower confidence bound of the slope.
    pub lower: f64,
    /// Upper confidence bound of the slope.
    pub upper: f64,
    /// Number of cycles.
    pub n: usize,
    /// Lower-bound growth over the whole series (lower * (n - 1)).
    pub growth_lower: f64,
    /// The verdict.
    pub leaking: bool,
}

/// Detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Two-sided normal quantile for the confidence interval (2.576: 99%).
    pub z: f64,
    /// Fewest cycles needed to say anything.
    pub min_points: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            z: 2.576,
            min_points: 8,
        }
    }
}

/// Fits one series; None when it is too short or holds non-finite values.
pub fn fit(series: &Series, cfg: &Config) -> Option<Trend> {
    let v = &series.values;
    let n = v.len();
    if n < cfg.min_points.max(3) || v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            slopes.push((v[j] - v[i]) / (j - i) as f64);
        }
    }
    slopes.sort_by(f64::total_cmp);
    let m = slopes.len();
    let slope = median_sorted(&slopes);
    // Var(S) of Kendall's statistic without ties; ties only make the interval wider
    // than this, so ignoring them errs towards reporting fewer leaks.
    let nf = n as f64;
    let var_s = nf * (nf - 1.0) * (2.0 * nf + 5.0) / 18.0;
    let c = cfg.z * var_s.sqrt();
    let lo_rank = ((m as f64 - c) / 2.0).floor().max(0.0) as usize;
    let hi_rank = (((m as f64 + c) / 2.0).ceil() as usize).min(m - 1);
    let lower = slopes[lo_rank.min(m - 1)];
    let upper = slopes[hi_rank];
    let growth_lower = lower * (nf - 1.0);
    let leaking = lower > 0.0 && growth_lower >= series.min_growth;
    Some(Trend {
        name: series.name.clone(),
        unit: series.unit.clone(),
        slope,
        lower,
        upper,
        n,
        growth_lower,
        leaking,
    })
}

fn median_sorted(x: &[f64]) -> f64 {
    let m = x.len();
    if m % 2 == 1 {
        x[m / 2]
    } else {
        (x[m / 2 - 1] + x[m / 2]) / 2.0
    }
}

/// Fits every series and returns the leaking ones, steepest (relative to its floor)
/// first.
pub fn leaks(series: &[Series], cfg: &Config) -> Vec<Trend> {
    let mut out: Vec<Trend> = series
        .iter()
        .filter_map(|s| fit(s, cfg))
        .filter(|t| t.leaking)
        .collect();
    out.sort_by(|a, b| b.growth_lower.total_cmp(&a.growth_lower));
    out
}

/// A one-line summary naming the counters that grew, e.g. for a crash title.
pub fn describe(leaks: &[Trend]) -> String {
    leaks
        .iter()
        .map(|t| format!("{} +{:.1} {}/cycle", t.name, t.slope, t.unit))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn series(values: Vec<f64>, min_growth: f64) -> Series {
        Series {
            name: "SUnreclaim".into(),
            unit: "kB".into(),
            min_growth,
            values,
        }
    }

    /// A small deterministic noise source (xorshift), so tests do not flake.
    fn noise(seed: u64, n: usize, amp: f64) -> Vec<f64> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x % 2001) as f64 / 1000.0 - 1.0) * amp
            })
            .collect()
    }

    #[test]
    fn steady_leak_found_through_noise_and_an_outlier() {
        let mut v: Vec<f64> = noise(7, 30, 40.0)
            .iter()
            .enumerate()
            .map(|(i, e)| 20_000.0 + 16.0 * i as f64 + e)
            .collect();
        v[3] += 5000.0; // a cache refill: one big jump, not a trend
        let t = fit(&series(v, 64.0), &Config::default()).unwrap();
        assert!(t.leaking, "{t:?}");
        assert!((t.slope - 16.0).abs() < 4.0, "{t:?}");
        assert!(t.lower > 0.0 && t.lower <= t.slope && t.slope <= t.upper);
    }

    #[test]
    fn flat_or_noisy_counters_do_not_leak() {
        let flat = fit(&series(vec![100.0; 20], 1.0), &Config::default()).unwrap();
        assert!(!flat.leaking);
        for seed in 1..50 {
            let v = noise(seed, 25, 300.0).iter().map(|e| 5000.0 + e).collect();
            let t = fit(&series(v, 64.0), &Config::default()).unwrap();
            assert!(!t.leaking, "seed {seed}: {t:?}");
        }
    }

    #[test]
    fn tiny_growth_below_the_floor_is_not_a_leak() {
        let v = (0..20).map(|i| 1000.0 + 0.1 * i as f64).collect();
        assert!(!fit(&series(v, 64.0), &Config::default()).unwrap().leaking);
    }

    #[test]
    fn too_short_or_bad_values_give_nothing() {
        assert!(fit(&series(vec![1.0, 2.0, 3.0], 0.0), &Config::default()).is_none());
        let mut v = vec![1.0; 10];
        v[4] = f64::NAN;
        assert!(fit(&series(v, 0.0), &Config::default()).is_none());
    }

    #[test]
    fn leaks_are_named_and_sorted() {
        let grow = |k: f64| (0..12).map(|i| k * i as f64).collect::<Vec<_>>();
        let mut a = series(grow(4.0), 8.0);
        a.name = "slab:vexfs_inode".into();
        let b = series(grow(64.0), 8.0);
        let flat = series(vec![3.0; 12], 8.0);
        let l = leaks(&[a, flat, b], &Config::default());
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].name, "SUnreclaim");
        assert_eq!(
            describe(&l),
            "SUnreclaim +64.0 kB/cycle, slab:vexfs_inode +4.0 kB/cycle"
        );
    }

    proptest! {
        #[test]
        fn interval_brackets_slope(values in proptest::collection::vec(-1e6f64..1e6, 8..60)) {
            let t = fit(&series(values, 0.0), &Config::default()).unwrap();
            prop_assert!(t.lower <= t.slope && t.slope <= t.upper);
        }

        #[test]
        fn decreasing_never_leaks(start in 0f64..1e6, step in 0.1f64..1e3, n in 8usize..40) {
            let v = (0..n).map(|i| start - step * i as f64).collect();
            prop_assert!(!fit(&series(v, 0.0), &Config::default()).unwrap().leaking);
        }
    }
}
