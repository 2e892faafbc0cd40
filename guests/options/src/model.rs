//! Black-Scholes for a European option on a stock without dividends: prices, delta, and
//! the implied volatility that reproduces a price.
//!
//! Arguments: spot `s` and strike `k` (same currency), `t` years to expiry (> 0), `r` the
//! continuously compounded annual risk-free rate, `sigma` the annualised volatility.

use libm::{erfc, exp, log, sqrt};

/// Call or put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// The right to buy at the strike.
    Call,
    /// The right to sell at the strike.
    Put,
}

impl Right {
    /// The schema's `option_type` symbol, also the column's value.
    pub fn name(self) -> &'static str {
        match self {
            Right::Call => "CALL",
            Right::Put => "PUT",
        }
    }
}

/// The standard normal distribution function, from `erfc` (accurate in both tails).
pub fn norm_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / core::f64::consts::SQRT_2)
}

fn d1(s: f64, k: f64, t: f64, r: f64, sigma: f64) -> f64 {
    (log(s / k) + (r + 0.5 * sigma * sigma) * t) / (sigma * sqrt(t))
}

/// The option's value.
pub fn price(right: Right, s: f64, k: f64, t: f64, r: f64, sigma: f64) -> f64 {
    let discounted = k * exp(-r * t);
    let d1 = d1(s, k, t, r, sigma);
    let d2 = d1 - sigma * sqrt(t);
    match right {
        Right::Call => s * norm_cdf(d1) - discounted * norm_cdf(d2),
        Right::Put => discounted * norm_cdf(-d2) - s * norm_cdf(-d1),
    }
}

/// The option's delta, ∂price/∂s: in (0, 1) for a call, (-1, 0) for a put.
pub fn delta(right: Right, s: f64, k: f64, t: f64, r: f64, sigma: f64) -> f64 {
    let n = norm_cdf(d1(s, k, t, r, sigma));
    match right {
        Right::Call => n,
        Right::Put => n - 1.0,
    }
}

/// What the model can price: strictly between the no-arbitrage bounds of a European
/// option, max(s - k·e^(-rt), 0) and s for a call, max(k·e^(-rt) - s, 0) and k·e^(-rt)
/// for a put. A price outside them has no implied volatility.
pub fn bounds(right: Right, s: f64, k: f64, t: f64, r: f64) -> (f64, f64) {
    let discounted = k * exp(-r * t);
    match right {
        Right::Call => ((s - discounted).max(0.0), s),
        Right::Put => ((discounted - s).max(0.0), discounted),
    }
}

/// The smallest volatility searched for.
pub const MIN_VOLATILITY: f64 = 1e-6;

/// The volatility at which the model gives `target`, searched for in
/// [`MIN_VOLATILITY`, `max_volatility`] by bisection (the price rises with volatility, so
/// the root is bracketed once the ends straddle the target, and bisection cannot diverge
/// where Newton's method would on a flat vega). None when the price is outside the model's
/// [`bounds`] or needs a volatility outside the range; otherwise to 1e-10 in volatility.
pub fn implied_volatility(
    right: Right,
    target: f64,
    s: f64,
    k: f64,
    t: f64,
    r: f64,
    max_volatility: f64,
) -> Option<f64> {
    let inputs_ok = [target, s, k, t, r, max_volatility]
        .iter()
        .all(|v| v.is_finite())
        && s > 0.0
        && k > 0.0
        && t > 0.0;
    if !inputs_ok {
        return None;
    }
    let (lower, upper) = bounds(right, s, k, t, r);
    if target <= lower || target >= upper {
        return None;
    }
    let (mut lo, mut hi) = (MIN_VOLATILITY, max_volatility);
    let f = |sigma: f64| price(right, s, k, t, r, sigma) - target;
    if f(lo) > 0.0 || f(hi) < 0.0 {
        return None;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-10 {
            break;
        }
    }
    Some(0.5 * (lo + hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_put_call_parity() {
        // Hull's example 15.6: S 42, K 40, r 10 %, sigma 20 %, T 0.5: c 4.76, p 0.81.
        let c = price(Right::Call, 42.0, 40.0, 0.5, 0.1, 0.2);
        let p = price(Right::Put, 42.0, 40.0, 0.5, 0.1, 0.2);
        assert!((c - 4.7594).abs() < 1e-3, "{c}");
        assert!((p - 0.8086).abs() < 1e-3, "{p}");
        assert!((c - p - (42.0 - 40.0 * exp(-0.05))).abs() < 1e-9);
        assert!((norm_cdf(0.0) - 0.5).abs() < 1e-15);
        assert!((norm_cdf(1.96) - 0.975).abs() < 1e-4);
    }

    #[test]
    fn implied_volatility_round_trips() {
        for right in [Right::Call, Right::Put] {
            for k in [60.0, 90.0, 100.0, 110.0, 150.0] {
                for t in [2.0 / 365.25, 0.1, 0.5, 2.0] {
                    for sigma in [0.05, 0.2, 0.45, 1.2, 3.0] {
                        let v = price(right, 100.0, k, t, 0.045, sigma);
                        let (lo, hi) = bounds(right, 100.0, k, t, 0.045);
                        // Prices the model cannot tell from its bounds in f64 carry no
                        // volatility to recover.
                        if v - lo < 1e-9 * hi || hi - v < 1e-9 * hi {
                            continue;
                        }
                        let iv = implied_volatility(right, v, 100.0, k, t, 0.045, 5.0)
                            .unwrap_or_else(|| panic!("{right:?} k {k} t {t} sigma {sigma}"));
                        let back = price(right, 100.0, k, t, 0.045, iv);
                        assert!(
                            (back - v).abs() <= 1e-7 * v.max(1.0),
                            "{right:?} {k} {t} {sigma}: {iv}"
                        );
                        if v - lo > 1e-4 {
                            assert!((iv - sigma).abs() < 1e-4, "{right:?} {k} {t} {sigma}: {iv}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn out_of_bounds_prices_have_no_volatility() {
        let (lo, hi) = bounds(Right::Call, 100.0, 90.0, 0.5, 0.045);
        assert!(implied_volatility(Right::Call, lo - 0.01, 100.0, 90.0, 0.5, 0.045, 5.0).is_none());
        assert!(implied_volatility(Right::Call, hi, 100.0, 90.0, 0.5, 0.045, 5.0).is_none());
        assert!(implied_volatility(Right::Put, 0.0, 100.0, 90.0, 0.5, 0.045, 5.0).is_none());
        assert!(implied_volatility(Right::Put, 1.0, 100.0, 90.0, 0.0, 0.045, 5.0).is_none());
        assert!(implied_volatility(Right::Put, f64::NAN, 100.0, 90.0, 0.5, 0.045, 5.0).is_none());
        // Needs more than the range: a price near the upper bound.
        let v = price(Right::Call, 100.0, 100.0, 0.5, 0.045, 4.0);
        assert!(implied_volatility(Right::Call, v, 100.0, 100.0, 0.5, 0.045, 2.0).is_none());
    }

    #[test]
    fn delta_is_sane() {
        let c = delta(Right::Call, 100.0, 100.0, 0.5, 0.045, 0.25);
        let p = delta(Right::Put, 100.0, 100.0, 0.5, 0.045, 0.25);
        assert!(c > 0.5 && c < 0.65, "{c}");
        assert!((c - p - 1.0).abs() < 1e-12);
        assert!(delta(Right::Call, 200.0, 100.0, 0.5, 0.045, 0.25) > 0.99);
        assert!(delta(Right::Call, 50.0, 100.0, 0.5, 0.045, 0.25) < 0.01);
        assert!(delta(Right::Put, 50.0, 100.0, 0.5, 0.045, 0.25) < -0.99);
        // Delta is the slope of the price.
        let h = 1e-4;
        let slope = (price(Right::Put, 100.0 + h, 95.0, 0.3, 0.045, 0.3)
            - price(Right::Put, 100.0 - h, 95.0, 0.3, 0.045, 0.3))
            / (2.0 * h);
        assert!((slope - delta(Right::Put, 100.0, 95.0, 0.3, 0.045, 0.3)).abs() < 1e-6);
    }
}
