//! Lines of keys in the rendered YAML, for messages about checks made after parsing.
//!
//! serde_yaml reports a position only for errors it finds itself (unknown keys, wrong
//! types) and keeps no spans in what it returns, so a check such as "batch size 0" finds
//! its line by reading the file's block layout. A best effort: a file written in flow
//! style (`{…}` and `[…]` across lines) may get no line, never a wrong message.

use std::ops::Range;

/// Finds keys in the rendered text.
pub(super) struct Locator<'a> {
    lines: Vec<&'a str>,
    /// Line indices where each `pipelines` item starts, and where the block ends.
    items: Vec<usize>,
    items_end: usize,
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let lines: Vec<&str> = text.lines().collect();
        let mut items = Vec::new();
        let mut items_end = lines.len();
        if let Some(start) = lines.iter().position(|l| l.starts_with("pipelines:")) {
            let mut item_indent = None;
            for (i, line) in lines.iter().enumerate().skip(start + 1) {
                let trimmed = line.trim_start();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                let indent = line.len() - trimmed.len();
                if indent == 0 && !trimmed.starts_with('-') {
                    items_end = i;
                    break;
                }
                if trimmed.starts_with('-') && *item_indent.get_or_insert(indent) == indent {
                    items.push(i);
                }
            }
        }
        Self {
            lines,
            items,
            items_end,
        }
    }

    /// The 1-based line of a top-level key path such as `["runtime", "max_memory"]`.
    pub(super) fn top(&self, keys: &[&str]) -> Option<usize> {
        let (first, rest) = keys.split_first()?;
        let start = self
            .lines
            .iter()
            .position(|l| l.starts_with(&format!("{first}:")))?;
        self.path(start..self.lines.len(), rest, start)
    }

    /// The 1-based line of a key path inside pipeline `index` (`["batch", "size"]`), else
    /// the line where that pipeline starts.
    pub(super) fn pipeline(&self, index: usize, keys: &[&str]) -> Option<usize> {
        let range = self.item(index)?;
        let found = keys.split_first().and_then(|(first, rest)| {
            let at = self.find_key(range.clone(), first)?;
            self.path(range.clone(), rest, at)
        });
        found.or(Some(range.start + 1))
    }

    /// The 1-based line inside pipeline `index` that holds `value`, at or after `key`.
    pub(super) fn pipeline_value(&self, index: usize, key: &str, value: &str) -> Option<usize> {
        let range = self.item(index)?;
        let from = self.find_key(range.clone(), key).unwrap_or(range.start);
        (from..range.end)
            .find(|&i| {
                let l = self.lines[i];
                !l.trim_start().starts_with('#') && contains_name(l, value)
            })
            .map(|i| i + 1)
            .or_else(|| self.pipeline(index, &[key]))
    }

    fn item(&self, index: usize) -> Option<Range<usize>> {
        let start = *self.items.get(index)?;
        let end = self.items.get(index + 1).copied().unwrap_or(self.items_end);
        Some(start..end)
    }

    /// Follows `keys` from line `at` within `range`; the 1-based line of the last one.
    fn path(&self, range: Range<usize>, keys: &[&str], mut at: usize) -> Option<usize> {
        for key in keys {
            at = self.find_key(at..range.end, key)?;
        }
        Some(at + 1)
    }

    /// The first line index in `range` where `key` is a mapping key, in block style
    /// (`key:`, `- key:`) or in a flow map on one line (`{key: …`, `, key: …`).
    fn find_key(&self, range: Range<usize>, key: &str) -> Option<usize> {
        let block = format!("{key}:");
        let flow = [
            format!("{{{key}:"),
            format!(", {key}:"),
            format!("{{ {key}:"),
        ];
        range.into_iter().find(|&i| {
            let t = self.lines[i].trim_start();
            if t.starts_with('#') {
                return false;
            }
            let t = t.trim_start_matches(['-', ' ']);
            t.starts_with(&block) || flow.iter().any(|f| t.contains(f.as_str()))
        })
    }
}

/// Whether `line` holds `name` as a whole name (`t1` is not in `t10`).
fn contains_name(line: &str, name: &str) -> bool {
    let part = |c: char| c.is_alphanumeric() || matches!(c, '.' | '_' | '-');
    line.match_indices(name).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + name.len()..].chars().next();
        !before.is_some_and(part) && !after.is_some_and(part)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
kafka:
  brokers: x
runtime:
  instances: 4
  max_memory: 1GiB
pipelines:
  # first
  - name: a
    topic: t1
    batch:
      linger: 5ms
      size: 0
  - name: b
    topics:
      - t2
      - t1
    limits: {deadline: 0s, max_memory: 2GiB}
guests:
  dir: g
";

    #[test]
    fn finds_keys_in_block_and_flow_style() {
        let l = Locator::new(TEXT);
        assert_eq!(l.top(&["runtime", "max_memory"]), Some(5));
        assert_eq!(l.top(&["guests", "dir"]), Some(19));
        assert_eq!(l.pipeline(0, &[]), Some(8));
        assert_eq!(l.pipeline(0, &["batch", "size"]), Some(12));
        assert_eq!(l.pipeline(1, &["limits", "max_memory"]), Some(17));
        assert_eq!(l.pipeline(1, &["nothing"]), Some(13));
        assert_eq!(l.pipeline_value(1, "topics", "t1"), Some(16));
        assert_eq!(
            l.pipeline_value(1, "topics", "t"),
            Some(14),
            "whole names only"
        );
        assert_eq!(l.pipeline_value(0, "topic", "t1"), Some(9));
        assert_eq!(l.pipeline(2, &[]), None);
    }
}
