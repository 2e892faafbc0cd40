//! Parsers and format checks for fields that many topics carry.

/// A UUID in its hyphenated (`8-4-4-4-12`) or simple (32 hex digits) form, any case, as a
/// number: both forms (and both cases) of one UUID give the same number, as Postgres's
/// `uuid` sees them. `None` for anything else (braces and URNs included).
pub fn uuid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    let hyphenated = b.len() == 36;
    if !hyphenated && b.len() != 32 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if hyphenated && matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(digit);
    }
    Some(v)
}

/// Whether `symbol` is a stock, ETF or index symbol: `^?[A-Z][A-Z0-9.-]{0,9}` (`AAPL`,
/// `BRK.B`, `^GSPC`), matched without a regex engine.
pub fn stock_symbol(symbol: &str) -> bool {
    let s = symbol.strip_prefix('^').unwrap_or(symbol).as_bytes();
    match s.split_first() {
        Some((first, rest)) => {
            first.is_ascii_uppercase()
                && rest.len() <= 9
                && rest.iter().all(|b| {
                    b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-')
                })
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let a = uuid("9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01").unwrap();
        assert_eq!(uuid("9F1C2A7E-0B1D-4A7E-8C55-0D3C1B6F2A01"), Some(a));
        assert_eq!(uuid("9f1c2a7e0b1d4a7e8c550d3c1b6f2a01"), Some(a));
        assert_eq!(a, 0x9f1c2a7e_0b1d_4a7e_8c55_0d3c1b6f2a01);
        for bad in [
            "",
            "9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a0",
            "9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a0g",
            "9f1c2a7e00b1d-4a7e-8c55-0d3c1b6f2a01",
            "{9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01}",
        ] {
            assert_eq!(uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn stock_symbols() {
        for ok in [
            "AAPL",
            "BRK.B",
            "^GSPC",
            "A",
            "BF-B",
            "ABCDEFGHIJ",
            "^VIX",
            "X1",
        ] {
            assert!(stock_symbol(ok), "{ok}");
        }
        for bad in [
            "",
            "^",
            "aapl",
            "1ABC",
            ".A",
            "ABCDEFGHIJK",
            "^^GSPC",
            "AA PL",
            "ÄAPL",
            "A$",
            "A^",
        ] {
            assert!(!stock_symbol(bad), "{bad}");
        }
    }
}
