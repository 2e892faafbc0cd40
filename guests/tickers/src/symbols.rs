//! Symbol formats per asset class, as small matchers (no regex engine in the guest); the
//! stock format is [`weir_guest::parse::stock_symbol`], which the `options` guest checks too.

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
