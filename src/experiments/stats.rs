//! The statistics `compare` reports: mean, sample standard deviation and a Student-t 95 %
//! confidence interval over seeds; paired differences with the paired t-test and the
//! Wilcoxon signed-rank test (exact for up to 30 non-zero pairs, normal approximation with
//! tie correction above). Written here (a few special functions) rather than pulled in from
//! a statistics crate: the project needs exactly these.

/// Mean, sample standard deviation (n − 1) and the half-width of the 95 % t interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Their mean (NaN for n = 0).
    pub mean: f64,
    /// NaN for n < 2
    pub std: f64,
    /// half-width of the 95 % confidence interval of the mean (NaN for n < 2)
    pub ci95: f64,
}

/// Mean, sample std and 95 % t interval of `xs`.
pub fn summarize(xs: &[f64]) -> Summary {
    let n = xs.len();
    if n == 0 {
        return Summary { n, mean: f64::NAN, std: f64::NAN, ci95: f64::NAN };
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return Summary { n, mean, std: f64::NAN, ci95: f64::NAN };
    }
    let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    Summary { n, mean, std, ci95: t_quantile_975(n - 1) * std / (n as f64).sqrt() }
}

/// A paired comparison of a against b over shared seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    /// Number of pairs.
    pub n: usize,
    /// mean of a − b
    pub mean: f64,
    /// standard error of that mean
    pub se: f64,
    /// t statistic, mean / se (NaN where the test is undefined: n < 2 or no spread).
    pub t: f64,
    /// two-sided p of the paired t-test (NaN for n < 2 or zero spread)
    pub p_t: f64,
    /// two-sided p of the Wilcoxon signed-rank test (NaN without a non-zero difference)
    pub p_wilcoxon: f64,
    /// Pairs with a > b.
    pub wins: usize,
    /// Pairs with a == b.
    pub ties: usize,
    /// Pairs with a < b.
    pub losses: usize,
}

/// Paired comparison of `a[i]` against `b[i]` (extra elements of the longer slice are ignored).
pub fn paired(a: &[f64], b: &[f64]) -> Paired {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let s = summarize(&d);
    // Differences equal up to rounding are equal (see [`rounding_tolerance`]), and so are
    // two runs' equal values computed apart (rounding of the values' size).
    let magnitude = a.iter().chain(b).filter(|x| x.is_finite()).fold(0.0f64, |m, x| m.max(x.abs()));
    let tol = rounding_tolerance(&d).max(1e-12 * magnitude);
    // A constant shift of accuracies, or no difference at all, has no spread: the t
    // statistic is undefined, not 10^13.
    let spread = if s.std <= tol { 0.0 } else { s.std };
    let se = spread / (s.n as f64).sqrt();
    let (t, p_t) = if s.n >= 2 && se > 0.0 {
        let t = s.mean / se;
        (t, t_two_sided_p(t, (s.n - 1) as f64))
    } else {
        (f64::NAN, f64::NAN)
    };
    Paired {
        n: s.n,
        mean: s.mean,
        se,
        t,
        p_t,
        p_wilcoxon: wilcoxon_p(&d, tol),
        wins: d.iter().filter(|&&x| x > tol).count(),
        ties: d.iter().filter(|&&x| x.abs() <= tol).count(),
        losses: d.iter().filter(|&&x| x < -tol).count(),
    }
}

/// Differences within this of each other (or of 0) are equal: accuracies are k/N computed in
/// floating point, so "one test sample" comes out as 0.0025000000000000577 in one pair and
/// 0.0024999999999999467 in another, and a mean of the same epochs summed in another order
/// differs from 0 by an ulp. Relative to the largest |difference|, far below any real gap
/// between two accuracies.
fn rounding_tolerance(d: &[f64]) -> f64 {
    1e-9 * d.iter().filter(|x| x.is_finite()).fold(0.0f64, |m, x| m.max(x.abs()))
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; ~1e-15 relative).
pub fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // reflection: Γ(x)Γ(1 − x) = π / sin(πx)
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta function I_x(a, b), by its continued fraction (modified
/// Lentz), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) where that converges faster.
pub fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - inc_beta(1.0 - x, b, a);
    }
    const TINY: f64 = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..400 {
        let m = m as f64;
        for num in [m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)), -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))] {
            d = 1.0 + num * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + num / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * h / a
}

/// Two-sided p-value of Student's t with `df` degrees of freedom.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return if t.is_nan() { f64::NAN } else { 0.0 };
    }
    inc_beta(df / (df + t * t), df / 2.0, 0.5)
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (the 95 % interval's
/// multiplier), by bisection on [`t_two_sided_p`].
pub fn t_quantile_975(df: usize) -> f64 {
    if df == 0 {
        return f64::NAN;
    }
    let (mut lo, mut hi) = (0.0f64, 1e3f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_two_sided_p(mid, df as f64) > 0.05 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Standard normal upper tail P(Z > z) = erfc(z/√2)/2, with erfc from the classic
/// Chebyshev-fitted exponential form (fractional error below 1.2e-7 everywhere).
fn normal_upper(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = [-1.265_512_23, 1.000_023_68, 0.374_091_96, 0.096_784_18, -0.186_288_06, 0.278_868_07, -1.135_203_98, 1.488_515_87, -0.822_152_23, 0.170_872_77];
    let mut acc = 0.0;
    for c in poly.iter().skip(1).rev() {
        acc = t * (c + acc);
    }
    let erfc = t * (-x * x + poly[0] + acc).exp();
    0.5 * if x >= 0.0 { erfc } else { 2.0 - erfc }
}

/// Two-sided p of the Wilcoxon signed-rank test of the differences `d` against 0: zero
/// differences dropped (Wilcoxon's rule), tied magnitudes get their average rank (zero and
/// tied up to [`rounding_tolerance`]). Exact
/// (the null distribution of the positive rank sum, counted over all 2^n sign patterns by
/// dynamic programming on half-ranks) for n ≤ 30, else the normal approximation with the
/// tie-corrected variance and a continuity correction of 1/2.
pub fn wilcoxon_signed_rank_p(d: &[f64]) -> f64 {
    wilcoxon_p(d, rounding_tolerance(d))
}

/// [`wilcoxon_signed_rank_p`] with magnitudes within `tol` equal (and of 0, zero).
fn wilcoxon_p(d: &[f64], tol: f64) -> f64 {
    let mut nz: Vec<f64> = d.iter().copied().filter(|x| x.abs() > tol && x.is_finite()).collect();
    let n = nz.len();
    if n == 0 {
        return f64::NAN;
    }
    nz.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    // average ranks of tied magnitudes, doubled so they are integers
    let mut rank2 = vec![0usize; n];
    let mut i = 0;
    let mut tie_term = 0.0;
    while i < n {
        let mut j = i;
        while j + 1 < n && nz[j + 1].abs() - nz[i].abs() <= tol {
            j += 1;
        }
        // ranks i+1..=j+1 average to (i + j + 2) / 2; doubled: i + j + 2
        for r in rank2.iter_mut().take(j + 1).skip(i) {
            *r = i + j + 2;
        }
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let w_plus2: usize = (0..n).filter(|&k| nz[k] > 0.0).map(|k| rank2[k]).sum();
    let total2: usize = rank2.iter().sum();
    if n <= 30 {
        // counts[s] = number of sign patterns whose positive doubled-rank sum is s
        let mut counts = vec![0f64; total2 + 1];
        counts[0] = 1.0;
        for &r in &rank2 {
            for s in (r..=total2).rev() {
                counts[s] += counts[s - r];
            }
        }
        let all: f64 = counts.iter().sum();
        // two-sided: patterns at least as far from the centre as the observed sum
        let centre2 = total2 as f64 / 2.0;
        let dev = (w_plus2 as f64 - centre2).abs();
        let extreme: f64 = counts.iter().enumerate().filter(|(s, _)| (*s as f64 - centre2).abs() >= dev - 1e-9).map(|(_, c)| c).sum();
        return (extreme / all).min(1.0);
    }
    let nf = n as f64;
    let mean = nf * (nf + 1.0) / 4.0;
    let var = nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0 - tie_term / 48.0;
    let w = w_plus2 as f64 / 2.0;
    let z = ((w - mean).abs() - 0.5).max(0.0) / var.sqrt();
    (2.0 * normal_upper(z)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // reference values from standard tables (and scipy.stats)
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((t_quantile_975(4) - 2.776_445).abs() < 1e-5);
        assert!((t_quantile_975(1) - 12.706_205).abs() < 1e-4);
        assert!((t_quantile_975(30) - 2.042_272).abs() < 1e-5);
        assert!((t_two_sided_p(2.0, 10.0) - 0.073_388).abs() < 1e-5);
        assert!((normal_upper(1.959_964) - 0.025).abs() < 1e-6);
        // differences 1..5: t = 4.2426, df 4, p = 0.013236
        let p = paired(&[2.0, 4.0, 6.0, 8.0, 10.0], &[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!((p.t - 4.242_641).abs() < 1e-5 && (p.p_t - 0.013_236).abs() < 1e-5, "{p:?}");
        assert_eq!((p.wins, p.ties, p.losses), (5, 0, 0));
        // a constant shift that floating point does not represent exactly: no spread, so no
        // t-test (it once printed t = -6.8e13, p < 0.001); the Wilcoxon test still applies
        let c = paired(&[0.8575, 0.865, 0.8425], &[0.86, 0.8675, 0.845]);
        assert!(c.t.is_nan() && c.p_t.is_nan() && c.se == 0.0, "{c:?}");
        assert!((c.mean + 0.0025).abs() < 1e-12 && (c.p_wilcoxon - 0.25).abs() < 1e-12, "{c:?}");
        // Wilcoxon, n = 5 all positive: 2 of 32 sign patterns are as extreme
        assert!((p.p_wilcoxon - 0.0625).abs() < 1e-12);
        // [1, -2, 3, 4, 5, 6]: W- = 2; sign patterns with W- <= 2 are {}, {1}, {2}, so
        // p = 2 * 3/64 (scipy.stats.wilcoxon, exact: 0.09375)
        assert!((wilcoxon_signed_rank_p(&[1.0, -2.0, 3.0, 4.0, 5.0, 6.0]) - 0.093_75).abs() < 1e-12);
        // ties share their average rank: |1|, |-1| get 1.5 each; W+ = 1.5 + 3 + 4 = 8.5 of 10;
        // 6 of the 16 sign patterns lie as far from the centre 5 (exact enumeration in
        // fractions, an independent Python check)
        assert!((wilcoxon_signed_rank_p(&[1.0, -1.0, 3.0, 4.0]) - 0.375).abs() < 1e-12);
        // above 30 pairs the normal approximation: 40 positive differences, z = 409.5/√5535
        assert!((wilcoxon_signed_rank_p(&(1..=40).map(f64::from).collect::<Vec<_>>()) / 3.708_246_9e-8 - 1.0).abs() < 1e-6);
        // 30 non-zero pairs are still exact, 31 (with two zeros dropped and ties) the normal
        // approximation with the tie-corrected variance (references: the same Python check)
        let d30: Vec<f64> = (1..=30).map(|i| (((i * 7) % 5 + 1) * if i % 4 != 0 { 1 } else { -1 }) as f64).collect();
        assert!((wilcoxon_signed_rank_p(&d30) / 0.009_049_406_275_153_16 - 1.0).abs() < 1e-9);
        let mut d31: Vec<f64> = (1..=31).map(|i| (((i * 7) % 5 + 1) * if i % 3 != 0 { 1 } else { -1 }) as f64).collect();
        d31.extend([0.0, 0.0]);
        assert!((wilcoxon_signed_rank_p(&d31) / 0.084_920_806_641_508_64 - 1.0).abs() < 1e-6);
        // accuracies k/400: a win of one sample in five pairs, a loss of one in the sixth;
        // the six |differences| are one value up to rounding, so all tie (exact p 7/32), and
        // the same outcome from other accuracies gives the same p
        let acc = |k: &[u32]| k.iter().map(|&k| k as f64 / 400.0).collect::<Vec<_>>();
        let p1 = paired(&acc(&[302, 304, 306, 308, 310, 299]), &acc(&[301, 303, 305, 307, 309, 300]));
        let p2 = paired(&acc(&[301, 303, 305, 307, 309, 301]), &acc(&[300, 302, 304, 306, 308, 302]));
        for p in [&p1, &p2] {
            assert!((p.p_wilcoxon - 0.218_75).abs() < 1e-12 && (p.wins, p.ties, p.losses) == (5, 0, 1), "{p:?}");
        }
        // the same epochs' mean summed in another order: a tie, not a loss, and no
        // difference for the Wilcoxon test
        let (x, y) = ((280.0 / 400.0 + 281.0 / 400.0 + 283.0 / 400.0) / 3.0, (283.0 / 400.0 + 281.0 / 400.0 + 280.0 / 400.0) / 3.0);
        let t = paired(&[x, 0.8], &[y, 0.7]);
        assert_eq!((t.wins, t.ties, t.losses), (1, 1, 0), "{t:?}");
        assert!((t.p_wilcoxon - 1.0).abs() < 1e-12, "one non-zero pair: p = 1, {t:?}");
        // two runs with the same accuracies, averaged in other orders: all ties, no test
        let u = paired(&[x, y, 0.7], &[y, x, 0.7]);
        assert_eq!((u.wins, u.ties, u.losses), (0, 3, 0), "{u:?}");
        assert!(u.p_wilcoxon.is_nan(), "{u:?}");
        let s = summarize(&[1.0, 2.0, 3.0, 4.0]);
        assert!((s.std - 1.290_994).abs() < 1e-6 && (s.ci95 - 3.182_446 * 1.290_994 / 2.0).abs() < 1e-5);
    }
}
