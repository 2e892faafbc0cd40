//! Exact decimals (the contract's `decimal`): to and from 128-bit integers and decimal
//! notation.

use super::Decimal;
use std::fmt;

impl Decimal {
    /// The unscaled integer, when it fits in 128 bits.
    pub fn unscaled_i128(&self) -> Option<i128> {
        if self.unscaled.len() > 16 {
            return None;
        }
        let negative = self.unscaled.first().is_some_and(|b| b & 0x80 != 0);
        Some(
            self.unscaled
                .iter()
                .fold(if negative { -1i128 } else { 0 }, |v, b| {
                    (v << 8) | i128::from(*b)
                }),
        )
    }

    /// The decimal `unscaled * 10^-scale`, minimally encoded.
    pub fn from_i128(unscaled: i128, scale: u32) -> Self {
        let bytes = unscaled.to_be_bytes();
        let sign_byte = if unscaled < 0 { 0xff } else { 0x00 };
        // Keep one sign byte only where the next byte's top bit disagrees with the sign.
        let start = (0..16)
            .find(|&i| {
                bytes[i] != sign_byte || (i < 15 && (bytes[i + 1] & 0x80 != 0) != (unscaled < 0))
            })
            .unwrap_or(16);
        let unscaled = if unscaled == 0 {
            Vec::new()
        } else {
            bytes[start..].to_vec()
        };
        Self { unscaled, scale }
    }

    /// Parses plain decimal notation: `-123.4500`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (negative, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(format!(
                "{text:?} is not a decimal number (digits, an optional sign and point)"
            ));
        }
        let all = format!("{int}{frac}");
        let magnitude: i128 = all
            .trim_start_matches('0')
            .parse::<i128>()
            .or_else(|e| {
                if all.trim_start_matches('0').is_empty() {
                    Ok(0)
                } else {
                    Err(e)
                }
            })
            .map_err(|_| format!("{text:?} has more digits than a 128-bit decimal holds"))?;
        Ok(Self::from_i128(
            if negative { -magnitude } else { magnitude },
            frac.len() as u32,
        ))
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(v) = self.unscaled_i128() else {
            return write!(f, "0x{} * 10^-{}", hex::encode(&self.unscaled), self.scale);
        };
        let digits = format!(
            "{:0>width$}",
            v.unsigned_abs(),
            width = self.scale as usize + 1
        );
        let (int, frac) = digits.split_at(digits.len() - self.scale as usize);
        let sign = if v < 0 { "-" } else { "" };
        if frac.is_empty() {
            write!(f, "{sign}{int}")
        } else {
            write!(f, "{sign}{int}.{frac}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Decimal;

    #[test]
    fn decimals_parse_print_and_encode_minimally() {
        for (text, unscaled, scale, printed) in [
            ("123.45", 12345i128, 2, "123.45"),
            ("-0.005", -5, 3, "-0.005"),
            ("0.00", 0, 2, "0.00"),
            ("+128", 128, 0, "128"),
            ("-12.9", -129, 1, "-12.9"),
            (".5", 5, 1, "0.5"),
        ] {
            let d = Decimal::parse(text).unwrap();
            assert_eq!(
                (d.unscaled_i128(), d.scale),
                (Some(unscaled), scale),
                "{text}"
            );
            assert_eq!(d.to_string(), printed);
        }
        assert_eq!(Decimal::from_i128(128, 0).unscaled, [0x00, 0x80]);
        assert_eq!(Decimal::from_i128(127, 0).unscaled, [0x7f]);
        assert_eq!(Decimal::from_i128(-128, 0).unscaled, [0x80]);
        assert_eq!(Decimal::from_i128(-129, 0).unscaled, [0xff, 0x7f]);
        assert!(Decimal::parse("1e5").unwrap_err().contains("not a decimal"));
        assert!(Decimal::parse("-").is_err());
    }
}
