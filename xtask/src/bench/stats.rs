//! Medians and spreads of repeated runs.

/// Repeated measurements of one figure.
#[derive(Debug, Default, Clone)]
pub struct Series(pub Vec<f64>);

impl Series {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    pub fn median(&self) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            f64::midpoint(v[m - 1], v[m])
        }
    }

    /// (max − min) / median, in percent: how noisy the runs were.
    pub fn spread_pct(&self) -> f64 {
        let lo = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (hi - lo) / self.median() * 100.0
    }

    /// Per-run ratios `self[i] / base[i]`: runs were made side by side, so
    /// pairing them cancels the noise that hits both.
    pub fn ratio_to(&self, base: &Series) -> Series {
        Series(self.0.iter().zip(&base.0).map(|(a, b)| a / b).collect())
    }

    /// `median ±spread%`, with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.0.is_empty() {
            return "–".into();
        }
        format!(
            "{:.digits$} ±{:.0}%",
            self.median(),
            self.spread_pct() / 2.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Series;

    #[test]
    fn median_spread_and_pairing() {
        let s = Series(vec![3.0, 1.0, 2.0]);
        assert!((s.median() - 2.0).abs() < 1e-9);
        assert!((s.spread_pct() - 100.0).abs() < 1e-9);
        let r = Series(vec![2.0, 4.0]).ratio_to(&Series(vec![1.0, 2.0]));
        assert_eq!(r.0, vec![2.0, 2.0]);
        assert!(Series::default().median().is_nan());
    }
}
