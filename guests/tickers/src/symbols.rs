//! Symbol formats per asset class, as small matchers (no regex engine in the guest).

/// Stocks, ETFs and indices: `^?[A-Z][A-Z0-9.-]{0,9}` (`AAPL`, `BRK.B`, `^GSPC`).
pub fn stock(symbol: &str) -> bool {
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

/// Crypto pairs: `BASE-QUOTE`, each part 1 to 10 of `[A-Z0-9]` (`BTC-USD`, `1INCH-USDT`).
pub fn crypto(symbol: &str) -> bool {
    let part = |p: &str| {
        (1..=10).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    match symbol.split_once('-') {
        Some((base, quote)) => part(base) && part(quote),
        None => false,
    }
}

/// Currency pairs, Yahoo style: six letters `A-Z`, then `=X` (`EURUSD=X`).
pub fn currency(symbol: &str) -> bool {
    let s = symbol.as_bytes();
    s.len() == 8 && s[..6].iter().all(u8::is_ascii_uppercase) && &s[6..] == b"=X"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stocks() {
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
            assert!(stock(ok), "{ok}");
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
            assert!(!stock(bad), "{bad}");
        }
    }

    #[test]
    fn cryptos() {
        for ok in ["BTC-USD", "ETH-USD", "1INCH-USDT", "X-Y"] {
            assert!(crypto(ok), "{ok}");
        }
        for bad in [
            "BTCUSD",
            "btc-usd",
            "BTC-",
            "-USD",
            "BTC-USD-X",
            "BTC_USD",
            "ABCDEFGHIJK-USD",
            "",
        ] {
            assert!(!crypto(bad), "{bad}");
        }
    }

    #[test]
    fn currencies() {
        for ok in ["EURUSD=X", "USDJPY=X"] {
            assert!(currency(ok), "{ok}");
        }
        for bad in [
            "EURUSD",
            "JPY=X",
            "eurusd=X",
            "EURUSD=x",
            "EURUS1=X",
            "EURUSDX=X",
            "",
        ] {
            assert!(!currency(bad), "{bad}");
        }
    }
}
