//! Listed equity options as `tickers.options` carries them: OCC contract symbols, expiry
//! dates (days since the epoch, as the schema's `date` field), expiry calendars, and the
//! Black-Scholes model the simulator prices its trades with.

/// The topic of option trades.
pub const TOPIC: &str = "tickers.options";

/// The risk-free rate (continuously compounded, annualised) the simulator prices with by
/// default; it is the default of the `rates` table the options pipeline reads, so a
/// consumer recovering implied volatility from simulated prices uses the same rate.
pub const DEFAULT_RISK_FREE_RATE: f64 = 0.045;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Milliseconds in a (365.25-day) year: time to expiry is measured in these.
pub const YEAR_MS: f64 = 365.25 * DAY_MS as f64;

/// When a contract expiring on `expiry` (days since the epoch) stops trading: 16:00 New
/// York time, taken as 20:00 UTC (daylight saving ignored, as the simulator's sessions do).
pub fn expiry_close_ms(expiry: i32) -> i64 {
    i64::from(expiry) * DAY_MS + 20 * 3_600_000
}

/// Years from `event_ms` to the close of `expiry` (negative once it has passed).
pub fn years_to_expiry(expiry: i32, event_ms: i64) -> f64 {
    (expiry_close_ms(expiry) - event_ms) as f64 / YEAR_MS
}

/// Call or put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// The right to buy.
    Call,
    /// The right to sell.
    Put,
}

impl Right {
    /// The schema's `option_type` symbol.
    pub fn name(self) -> &'static str {
        match self {
            Right::Call => "CALL",
            Right::Put => "PUT",
        }
    }

    fn letter(self) -> char {
        match self {
            Right::Call => 'C',
            Right::Put => 'P',
        }
    }
}

/// The fields of an OCC contract symbol (`AAPL240621C00190000`).
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    /// The option root (the underlying's symbol, letters and digits only).
    pub root: String,
    /// Expiry, days since the epoch.
    pub expiry: i32,
    /// Call or put.
    pub right: Right,
    /// Strike price.
    pub strike: f64,
}

impl Contract {
    /// The OCC symbol, without the padding of the root to six characters (as Yahoo and
    /// most feeds print it): root, expiry `YYMMDD`, `C` or `P`, strike × 1000 in 8 digits.
    pub fn symbol(&self) -> String {
        let (y, m, d) = civil_from_days(i64::from(self.expiry));
        format!(
            "{}{:02}{:02}{:02}{}{:08}",
            self.root,
            y.rem_euclid(100),
            m,
            d,
            self.right.letter(),
            (self.strike * 1000.0).round() as i64
        )
    }

    /// Reads an OCC symbol (the root padded with spaces or not); `None` if it is not one.
    pub fn parse(symbol: &str) -> Option<Self> {
        let symbol = symbol.trim();
        let n = symbol.len();
        if n < 16 || !symbol.is_ascii() {
            return None;
        }
        let (root, tail) = symbol.split_at(n - 15);
        let root = root.trim_end();
        if root.is_empty() || root.len() > 6 || !root.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        fn digits(s: &str) -> Option<&str> {
            s.bytes().all(|b| b.is_ascii_digit()).then_some(s)
        }
        let date = digits(&tail[..6])?;
        let (yy, mm, dd) = (
            date[..2].parse::<i64>().ok()?,
            date[2..4].parse::<u32>().ok()?,
            date[4..6].parse::<u32>().ok()?,
        );
        let right = match &tail[6..7] {
            "C" => Right::Call,
            "P" => Right::Put,
            _ => return None,
        };
        let strike = digits(&tail[7..])?.parse::<i64>().ok()? as f64 / 1000.0;
        if !(1..=12).contains(&mm) || dd == 0 || dd > days_in_month(2000 + yy, mm) {
            return None;
        }
        Some(Self {
            root: root.to_string(),
            expiry: i32::try_from(days_from_civil(2000 + yy, mm, dd)).ok()?,
            right,
            strike,
        })
    }
}

/// The option root of an underlying symbol: its letters and digits (`BRK-B` → `BRKB`),
/// at most six.
pub fn root(underlying: &str) -> String {
    underlying
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(6)
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of `days` since 1970-01-01: (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn days_in_month(y: i64, m: u32) -> u32 {
    let next = if m == 12 {
        days_from_civil(y + 1, 1, 1)
    } else {
        days_from_civil(y, m + 1, 1)
    };
    (next - days_from_civil(y, m, 1)) as u32
}

/// A `YYYY-MM-DD` date as days since the epoch.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    ((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m)).then(|| days_from_civil(y, m, d))
}

/// Weekday of `days` since the epoch: 0 is Sunday, 5 Friday.
pub fn weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7)
}

/// The listed expiries open on day `today`, all after it: the next four Fridays (weeklies)
/// and the third Fridays of the next three months (monthlies), in order, without repeats.
pub fn expiries_after(today: i64) -> Vec<i32> {
    let first_friday = today + 1 + (5 - weekday(today + 1)).rem_euclid(7);
    let mut out: Vec<i64> = (0..4).map(|w| first_friday + 7 * w).collect();
    let (mut y, mut m, _) = civil_from_days(today);
    let mut monthlies = 0;
    while monthlies < 3 {
        let first = days_from_civil(y, m, 1);
        let third_friday = first + (5 - weekday(first)).rem_euclid(7) + 14;
        if third_friday > today {
            out.push(third_friday);
            monthlies += 1;
        }
        (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    }
    out.sort_unstable();
    out.dedup();
    out.into_iter().map(|d| d as i32).collect()
}

/// The standard normal cumulative distribution, to double precision (Hart's algorithm
/// 5666 as West, "Better approximations to cumulative normal functions", 2005, gives it).
pub fn norm_cdf(x: f64) -> f64 {
    let xa = x.abs();
    let tail = if xa > 37.0 {
        0.0
    } else {
        let e = (-xa * xa / 2.0).exp();
        if xa < 7.071_067_811_865_47 {
            let num = [
                3.526_249_659_989_11e-2,
                0.700_383_064_443_688,
                6.373_962_203_531_65,
                33.912_866_078_383,
                112.079_291_497_871,
                221.213_596_169_931,
                220.206_867_912_376,
            ]
            .iter()
            .fold(0.0, |b, c| b * xa + c);
            let den = [
                8.838_834_764_831_84e-2,
                1.755_667_163_182_64,
                16.064_177_579_207,
                86.780_732_202_946_1,
                296.564_248_779_674,
                637.333_633_378_831,
                793.826_512_519_948,
                440.413_735_824_752,
            ]
            .iter()
            .fold(0.0, |b, c| b * xa + c);
            e * num / den
        } else {
            let mut b = xa + 0.65;
            for k in [4.0, 3.0, 2.0, 1.0] {
                b = xa + k / b;
            }
            e / b / 2.506_628_274_631
        }
    };
    if x > 0.0 { 1.0 - tail } else { tail }
}

/// The Black-Scholes value of a European option without dividends: spot `s`, strike `k`,
/// `t` years to expiry, continuously compounded rate `r`, volatility `sigma`. At or past
/// expiry (or with no volatility) it is the discounted intrinsic value.
pub fn black_scholes(right: Right, s: f64, k: f64, t: f64, r: f64, sigma: f64) -> f64 {
    if t <= 0.0 || sigma <= 0.0 {
        let forward = s - k * (-r * t.max(0.0)).exp();
        return match right {
            Right::Call => forward.max(0.0),
            Right::Put => (-forward).max(0.0),
        };
    }
    let vol = sigma * t.sqrt();
    let d1 = ((s / k).ln() + (r + sigma * sigma / 2.0) * t) / vol;
    let d2 = d1 - vol;
    let discounted = k * (-r * t).exp();
    match right {
        Right::Call => s * norm_cdf(d1) - discounted * norm_cdf(d2),
        Right::Put => discounted * norm_cdf(-d2) - s * norm_cdf(-d1),
    }
}

/// What exercising the contract now pays per share: the floor of an American contract's
/// value (and the intrinsic value of any).
pub fn exercise_value(right: Right, s: f64, k: f64) -> f64 {
    match right {
        Right::Call => (s - k).max(0.0),
        Right::Put => (k - s).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_in_the_money_put_is_worth_less_european_than_exercised() {
        // 20 % in the money, three months, 4.5 %, 20 % volatility: the European value
        // (what Black-Scholes gives) is below the 20 an American holder gets now.
        let european = black_scholes(Right::Put, 100.0, 120.0, 0.25, 0.045, 0.2);
        assert!(
            european < exercise_value(Right::Put, 100.0, 120.0),
            "{european}"
        );
        assert_eq!(exercise_value(Right::Call, 100.0, 120.0), 0.0);
        assert_eq!(exercise_value(Right::Call, 130.0, 120.0), 10.0);
    }

    #[test]
    fn black_scholes_known_values() {
        // Hull, Options, Futures and Other Derivatives, example 15.6: 4.76 and 0.81.
        let c = black_scholes(Right::Call, 42.0, 40.0, 0.5, 0.1, 0.2);
        let p = black_scholes(Right::Put, 42.0, 40.0, 0.5, 0.1, 0.2);
        assert!((c - 4.759_422).abs() < 1e-5, "{c}");
        assert!((p - 0.808_600).abs() < 1e-5, "{p}");
        // The textbook at-the-money case: 10.4506 and 5.5735.
        let c = black_scholes(Right::Call, 100.0, 100.0, 1.0, 0.05, 0.2);
        let p = black_scholes(Right::Put, 100.0, 100.0, 1.0, 0.05, 0.2);
        assert!((c - 10.450_584).abs() < 1e-5, "{c}");
        assert!((p - 5.573_526).abs() < 1e-5, "{p}");
        assert!((norm_cdf(0.0) - 0.5).abs() < 1e-15);
        assert!((norm_cdf(1.959_963_984_540_054) - 0.975).abs() < 1e-14);
        assert!((norm_cdf(-8.0) / 6.220_960_574_271_82e-16 - 1.0).abs() < 1e-8);
        assert!((norm_cdf(-1.0) - 0.158_655_253_931_457_07).abs() < 1e-15);
        // Expired: intrinsic.
        assert_eq!(
            black_scholes(Right::Call, 110.0, 100.0, 0.0, 0.05, 0.3),
            10.0
        );
        assert_eq!(
            black_scholes(Right::Put, 110.0, 100.0, -1.0, 0.05, 0.3),
            0.0
        );
    }

    #[test]
    fn put_call_parity() {
        for (s, k, t, r, sigma) in [
            (187.25, 190.0, 0.05, 0.045, 0.24),
            (880.0, 700.0, 0.3, 0.045, 0.5),
            (20.0, 24.0, 2.0, 0.0, 0.8),
            (100.0, 80.0, 0.002, 0.1, 0.15),
        ] {
            let c = black_scholes(Right::Call, s, k, t, r, sigma);
            let p = black_scholes(Right::Put, s, k, t, r, sigma);
            let parity = s - k * (-r * t).exp();
            assert!((c - p - parity).abs() < 1e-9 * s, "{s} {k} {t}: {c} {p}");
            assert!(c >= parity.max(0.0) - 1e-9 && p >= 0.0);
        }
    }

    #[test]
    fn occ_symbols_round_trip() {
        let c = Contract {
            root: "AAPL".into(),
            expiry: days_from_civil(2024, 6, 21) as i32,
            right: Right::Call,
            strike: 190.0,
        };
        assert_eq!(c.symbol(), "AAPL240621C00190000");
        assert_eq!(Contract::parse("AAPL240621C00190000"), Some(c.clone()));
        assert_eq!(Contract::parse("AAPL  240621C00190000"), Some(c));
        let p = Contract::parse("SPXW241220P05432500").unwrap();
        assert_eq!(
            (p.root.as_str(), p.right, p.strike),
            ("SPXW", Right::Put, 5432.5)
        );
        assert_eq!(civil_from_days(i64::from(p.expiry)), (2024, 12, 20));
        for bad in [
            "AAPL",
            "AAPL240621X00190000",
            "AAPL241321C00190000",
            "AAPL240230C00190000",
            "TOOLONGX240621C00190000",
            "AAPL24062AC00190000",
        ] {
            assert_eq!(Contract::parse(bad), None, "{bad}");
        }
        assert_eq!(root("BRK-B"), "BRKB");
    }

    #[test]
    fn dates_and_expiries() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 5, 1), 19_844);
        assert_eq!(civil_from_days(19_844), (2024, 5, 1));
        assert_eq!(parse_date("2024-06-21"), Some(days_from_civil(2024, 6, 21)));
        assert_eq!(parse_date("2024-02-30"), None);
        assert_eq!(weekday(days_from_civil(2024, 5, 3)), 5, "a Friday");
        // From Wednesday 2024-05-01: Fridays 3, 10, 17 (the monthly), 24 May, then the
        // monthlies of June (21) and July (19).
        let want: Vec<i32> = [(5, 3), (5, 10), (5, 17), (5, 24), (6, 21), (7, 19)]
            .iter()
            .map(|&(m, d)| days_from_civil(2024, m, d) as i32)
            .collect();
        assert_eq!(expiries_after(19_844), want);
        // On a Friday, that day's contracts have expired by the next day: only later ones.
        let friday = days_from_civil(2024, 5, 17);
        assert!(
            expiries_after(friday)
                .iter()
                .all(|&e| i64::from(e) > friday)
        );
        assert_eq!(
            expiries_after(friday)[0],
            days_from_civil(2024, 5, 24) as i32
        );
    }
}
