//! A guest's keyed state: one [`StateStore`] per pipeline and partition holds what the
//! partition's committed batches wrote; a batch reads and writes it through a
//! [`StateTxn`], whose writes ([`StateWrites`]) commit in the batch's transaction and are
//! then applied to the store.
//!
//! A batch may take several guest calls (a failed call is split to find the message at
//! fault): each call's writes are kept apart until the call succeeds ([`StateTxn::keep_call`])
//! and dropped if it fails ([`StateTxn::drop_call`]), so a later call sees exactly the
//! writes of the calls that succeeded before it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use super::StateEntry;

/// Bounds on a pipeline's keyed state (`state:` in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Bytes of one key (default 1 KiB).
    pub max_key: usize,
    /// Bytes of one value (default 64 KiB).
    pub max_value: usize,
    /// Bytes of keys and values one batch may write, deletes counting their key (default
    /// 4 MiB).
    pub max_batch: usize,
    /// Bytes of keys and values one partition may hold (default 64 MiB). A partition's
    /// state is held in memory while its batches run.
    pub max_partition: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            max_key: 1 << 10,
            max_value: 64 << 10,
            max_batch: 4 << 20,
            max_partition: 64 << 20,
        }
    }
}

/// What the committed batches of one partition left in its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl StateStore {
    /// A store holding `entries`.
    pub fn from_entries(entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        let mut store = Self::default();
        for (k, v) in entries {
            store.bytes += k.len() + v.len();
            if let Some(old) = store.entries.insert(k.clone(), v) {
                store.bytes -= k.len() + old.len();
            }
        }
        store
    }

    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of keys and values stored.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Applies a committed batch's writes.
    pub fn apply(&mut self, writes: &StateWrites) {
        for key in &writes.deletes {
            if let Some(old) = self.entries.remove(key) {
                self.bytes -= key.len() + old.len();
            }
        }
        for (key, value) in &writes.puts {
            self.bytes += key.len() + value.len();
            if let Some(old) = self.entries.insert(key.clone(), value.clone()) {
                self.bytes -= key.len() + old.len();
            }
        }
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

/// What a batch changed: keys put (with their values) and keys deleted, disjoint, in key
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateWrites {
    /// Keys and their new values.
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys removed.
    pub deletes: Vec<Vec<u8>>,
}

impl StateWrites {
    /// Whether the batch changed nothing.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// Writes over a layer below: `Some` a put, `None` a delete.
type Layer = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Writes of one layer, and what they add up to.
#[derive(Debug, Default, Clone)]
struct Writes {
    entries: Layer,
    /// Bytes written (every put and delete counted, as the limit says).
    written: usize,
    /// Change of the partition's held bytes.
    growth: isize,
}

/// One batch's view of a partition's state: the store, and the writes of the batch's
/// calls so far.
#[derive(Debug)]
pub struct StateTxn {
    base: Arc<StateStore>,
    limits: StateLimits,
    /// Writes of the calls that succeeded.
    batch: Writes,
    /// Writes of the call under way.
    call: Writes,
}

impl StateTxn {
    /// A batch starting from `base`.
    pub fn new(base: Arc<StateStore>, limits: StateLimits) -> Self {
        Self {
            base,
            limits,
            batch: Writes::default(),
            call: Writes::default(),
        }
    }

    /// The limits writes are held to.
    pub fn limits(&self) -> StateLimits {
        self.limits
    }

    /// The value `key` has now.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        // The call's own writes, then the batch's, then what was committed.
        if let Some(v) = self.call.entries.get(key) {
            return v.as_deref();
        }
        if let Some(v) = self.batch.entries.get(key) {
            return v.as_deref();
        }
        self.base.get(key)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), String> {
        if key.len() > self.limits.max_key {
            return Err(format!(
                "state key of {} bytes is over the pipeline's state.max_key of {} bytes",
                key.len(),
                self.limits.max_key
            ));
        }
        Ok(())
    }

    /// Records a write of `key` (to `value`, or a delete), within the limits.
    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), String> {
        self.check_key(&key)?;
        let new_size = value.as_ref().map_or(0, |v| key.len() + v.len());
        if let Some(v) = &value
            && v.len() > self.limits.max_value
        {
            return Err(format!(
                "state value of {} bytes is over the pipeline's state.max_value of {} bytes",
                v.len(),
                self.limits.max_value
            ));
        }
        let cost = value.as_ref().map_or(key.len(), |v| key.len() + v.len());
        let written = self.batch.written + self.call.written + cost;
        if written > self.limits.max_batch {
            return Err(format!(
                "this batch's state writes would come to {written} bytes, over the pipeline's state.max_batch of {} bytes",
                self.limits.max_batch
            ));
        }
        let old_size = self.get(&key).map_or(0, |v| key.len() + v.len());
        let growth = new_size as isize - old_size as isize;
        let held = self.base.bytes() as isize + self.batch.growth + self.call.growth + growth;
        if growth > 0 && held > self.limits.max_partition as isize {
            return Err(format!(
                "the partition's state would hold {held} bytes, over the pipeline's state.max_partition of {} bytes",
                self.limits.max_partition
            ));
        }
        self.call.written += cost;
        self.call.growth += growth;
        self.call.entries.insert(key, value);
        Ok(())
    }

    /// Stores `value` under `key`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        self.write(key, Some(value))
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: Vec<u8>) -> Result<(), String> {
        self.write(key, None)
    }

    /// Up to `limit` entries whose keys start with `prefix`, in key order, after `after`.
    pub fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<StateEntry> {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        let range = || (start.clone(), Bound::Unbounded);
        // The three layers merged, the upper one winning on a key they share.
        let mut base = self
            .base
            .entries
            .range::<Vec<u8>, _>(range())
            .map(|(k, v)| (k, Some(v)))
            .peekable();
        let mut batch = self
            .batch
            .entries
            .range::<Vec<u8>, _>(range())
            .map(|(k, v)| (k, v.as_ref()))
            .peekable();
        let mut call = self
            .call
            .entries
            .range::<Vec<u8>, _>(range())
            .map(|(k, v)| (k, v.as_ref()))
            .peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let next = [base.peek(), batch.peek(), call.peek()]
                .into_iter()
                .flatten()
                .map(|(k, _)| *k)
                .min()
                .cloned();
            let Some(key) = next else { break };
            if !key.starts_with(prefix) {
                break;
            }
            // Each layer holding the key gives its value; the last (upper) one wins.
            let mut value = None;
            if base.peek().is_some_and(|(k, _)| **k == key) {
                value = base.next().map(|(_, v)| v);
            }
            if batch.peek().is_some_and(|(k, _)| **k == key) {
                value = batch.next().map(|(_, v)| v);
            }
            if call.peek().is_some_and(|(k, _)| **k == key) {
                value = call.next().map(|(_, v)| v);
            }
            if let Some(Some(v)) = value {
                out.push(StateEntry {
                    key,
                    value: v.clone(),
                });
            }
        }
        out
    }

    /// The call under way succeeded: its writes join the batch's.
    pub fn keep_call(&mut self) {
        let call = std::mem::take(&mut self.call);
        self.batch.written += call.written;
        self.batch.growth += call.growth;
        self.batch.entries.extend(call.entries);
    }

    /// The call under way failed: its writes are forgotten.
    pub fn drop_call(&mut self) {
        self.call = Writes::default();
    }

    /// What the batch's successful calls wrote.
    pub fn writes(&self) -> StateWrites {
        let mut out = StateWrites::default();
        for (k, v) in &self.batch.entries {
            match v {
                Some(v) => out.puts.push((k.clone(), v.clone())),
                None => out.deletes.push(k.clone()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn keys(entries: &[StateEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8(e.key.clone()).unwrap())
            .collect()
    }

    #[test]
    fn reads_see_kept_calls_and_not_dropped_ones() {
        let base = Arc::new(StateStore::from_entries([kv("a", "1"), kv("b", "2")]));
        let mut txn = StateTxn::new(base.clone(), StateLimits::default());
        txn.put(b"a".to_vec(), b"10".to_vec()).unwrap();
        txn.delete(b"b".to_vec()).unwrap();
        assert_eq!(txn.get(b"a"), Some(&b"10"[..]));
        assert_eq!(txn.get(b"b"), None);
        txn.drop_call();
        assert_eq!(txn.get(b"a"), Some(&b"1"[..]));
        assert_eq!(txn.get(b"b"), Some(&b"2"[..]));
        txn.put(b"c".to_vec(), b"3".to_vec()).unwrap();
        txn.delete(b"a".to_vec()).unwrap();
        txn.keep_call();
        txn.put(b"d".to_vec(), b"4".to_vec()).unwrap();
        txn.drop_call();
        let writes = txn.writes();
        assert_eq!(writes.puts, vec![kv("c", "3")]);
        assert_eq!(writes.deletes, vec![b"a".to_vec()]);
        let mut store = (*base).clone();
        store.apply(&writes);
        assert_eq!(
            store,
            StateStore::from_entries([kv("b", "2"), kv("c", "3")])
        );
        assert_eq!(store.bytes(), 4);
    }

    #[test]
    fn scans_merge_the_layers_in_key_order() {
        let base = Arc::new(StateStore::from_entries([
            kv("p/1", "a"),
            kv("p/3", "c"),
            kv("p/5", "e"),
            kv("q/1", "z"),
        ]));
        let mut txn = StateTxn::new(base, StateLimits::default());
        txn.put(b"p/2".to_vec(), b"b".to_vec()).unwrap();
        txn.delete(b"p/3".to_vec()).unwrap();
        txn.keep_call();
        txn.put(b"p/4".to_vec(), b"d".to_vec()).unwrap();
        txn.put(b"p/1".to_vec(), b"A".to_vec()).unwrap();
        assert_eq!(
            keys(&txn.scan(b"p/", None, 10)),
            ["p/1", "p/2", "p/4", "p/5"]
        );
        assert_eq!(txn.scan(b"p/", None, 1)[0].value, b"A");
        assert_eq!(keys(&txn.scan(b"p/", Some(b"p/2"), 2)), ["p/4", "p/5"]);
        assert_eq!(keys(&txn.scan(b"", None, 10)).len(), 5);
        assert!(txn.scan(b"r", None, 10).is_empty());
    }

    #[test]
    fn writes_over_a_limit_are_refused_and_change_nothing() {
        let limits = StateLimits {
            max_key: 4,
            max_value: 8,
            max_batch: 19,
            max_partition: 30,
        };
        let base = Arc::new(StateStore::from_entries([kv("old", "0123456789")]));
        let mut txn = StateTxn::new(base, limits);
        let e = txn.put(b"12345".to_vec(), b"v".to_vec()).unwrap_err();
        assert!(e.contains("state.max_key of 4 bytes"), "{e}");
        let e = txn.put(b"k".to_vec(), b"123456789".to_vec()).unwrap_err();
        assert!(e.contains("state.max_value of 8 bytes"), "{e}");
        txn.put(b"k1".to_vec(), b"12345678".to_vec()).unwrap();
        txn.keep_call();
        let e = txn.put(b"k2".to_vec(), b"12345678".to_vec()).unwrap_err();
        assert!(e.contains("state.max_batch of 19 bytes"), "{e}");
        assert_eq!(txn.get(b"k2"), None);
        // 13 held + 10 written; another 9 would pass the 30 held.
        let mut txn = StateTxn::new(
            Arc::new(StateStore::from_entries([kv("old", "0123456789")])),
            StateLimits {
                max_batch: 100,
                ..limits
            },
        );
        txn.put(b"k1".to_vec(), b"12345678".to_vec()).unwrap();
        let e = txn.put(b"k2".to_vec(), b"1234567".to_vec()).unwrap_err();
        assert!(e.contains("state.max_partition of 30 bytes"), "{e}");
        // Shrinking is always allowed.
        txn.delete(b"old".to_vec()).unwrap();
        txn.put(b"k2".to_vec(), b"1234567".to_vec()).unwrap();
    }
}
