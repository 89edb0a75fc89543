//! Medians and quartiles of repeated measurements.

/// Median and interquartile range of `n` repetitions.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub n: usize,
}

impl Summary {
    /// Summarises `samples` (quartiles by linear interpolation); `None` when empty.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            let pos = q * (sorted.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        };
        Some(Self {
            median: quantile(0.5),
            q1: quantile(0.25),
            q3: quantile(0.75),
            n: sorted.len(),
        })
    }

    /// `median (IQR q1–q3, n)` with `digits` decimals.
    pub fn cell(&self, digits: usize) -> String {
        format!("{:.digits$} ({:.digits$}–{:.digits$})", self.median, self.q1, self.q3)
    }
}

/// Percentile `p` (0–100) of `samples`, nearest-rank; `None` when empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0, 5.0]).expect("not empty");
        assert_eq!((s.q1, s.median, s.q3, s.n), (2.0, 3.0, 4.0, 5));
        let s = Summary::of(&[1.0, 2.0]).expect("not empty");
        assert_eq!((s.q1, s.median, s.q3), (1.25, 1.5, 1.75));
        assert!(Summary::of(&[]).is_none());
        assert_eq!(percentile(&[5.0, 1.0, 4.0, 2.0, 3.0], 99.0), Some(5.0));
        assert_eq!(percentile(&[5.0, 1.0, 4.0, 2.0, 3.0], 50.0), Some(3.0));
    }
}
