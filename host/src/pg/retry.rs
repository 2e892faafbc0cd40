//! The one retry policy: exponential backoff between a first and a longest wait.

use std::time::Duration;

/// Waits that double from `first` up to `max`, each with up to a tenth added at random
/// so that members retrying the same outage do not all come back at the same instant.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    attempts: u32,
}

impl Backoff {
    /// The policy weir's Postgres work uses: 200 ms doubling to 10 s.
    pub fn new() -> Self {
        Self::between(Duration::from_millis(200), Duration::from_secs(10))
    }

    /// Waits from `first` doubling to `max`.
    pub fn between(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
            attempts: 0,
        }
    }

    /// How long to wait before the next try, and counts the try that failed.
    pub fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        self.attempts += 1;
        let jitter = base.mul_f64(rand::random::<f64>() * 0.1);
        base + jitter
    }

    /// Failed tries so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
        self.attempts = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_a_little_jitter_and_resets() {
        let mut b = Backoff::between(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<Duration> = (0..4).map(|_| b.delay()).collect();
        for (wait, base) in waits.iter().zip([100, 200, 350, 350]) {
            let base = Duration::from_millis(base);
            assert!(
                *wait >= base && *wait <= base.mul_f64(1.1),
                "{wait:?} vs {base:?}"
            );
        }
        assert_eq!(b.attempts(), 4);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.delay() < Duration::from_millis(111));
    }
}
