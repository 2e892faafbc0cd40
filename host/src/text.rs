//! Text from outside the process (guests, registries, request bodies) made safe to log and
//! to send back: bounded in length and free of control characters.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` cut to at most `max` bytes (on a character boundary), saying how much was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

/// `text` with control characters (line breaks, terminal escapes, other C0 and C1 codes,
/// and the bidirectional overrides) written as escapes (`\n`, `\u{1b}`), so it cannot
/// start a line of its own in a log or rewrite a terminal.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_character_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdef", 3), "abc… (3 more bytes)");
        // "é" is two bytes: a cut inside it moves back before it.
        assert_eq!(truncate("aé", 2), "a… (2 more bytes)");
    }

    #[test]
    fn escapes_what_could_forge_a_line_or_drive_a_terminal() {
        assert!(matches!(escape_control("plain text"), Cow::Borrowed(_)));
        assert_eq!(
            escape_control("ok\nERROR weir: forged\x1b[2J\u{202e}"),
            "ok\\nERROR weir: forged\\u{1b}[2J\\u{202e}"
        );
        assert_eq!(escape_control("a\tb\r"), "a\\tb\\r");
    }
}
