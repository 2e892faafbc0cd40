//! A pipeline's guest breaker: when the guest fails (traps, runs out of time or memory)
//! on too many of the messages it is given, the pipeline stops calling it instead of
//! isolating and dead-lettering message after message.
//!
//! The breaker counts, per guest version, the outcome of each message over the last
//! `window` messages the live version was given: a message fails when the guest failed on
//! it alone (after the batch was split to isolate it); the messages of a call that
//! succeeded are good, whatever the guest made of them (a dead letter the guest chose is
//! a good outcome). Once at least `min_failures` messages failed and they are at least
//! `failure_rate` of the window, the breaker trips: the batch in hand is not written (its
//! partition reads it again), and
//! - a version swapped in while running that has not yet shown a healthy window is rolled
//!   back to the one before it, for the whole group, and the batch goes on with that;
//! - otherwise the pipeline pauses: its partitions wait `pause` (doubling on each trip in a
//!   row, up to `max_pause`) and then try the batch again, the window starting afresh.
//!
//! The trips are logged with the counts, in `/readyz` (a paused partition) and in
//! `/metrics` (`weir_guest_breaker_open`, `weir_guest_breaker_trips_total`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;
use crate::pg::Backoff;

/// How often the pipeline's other partitions look whether a rollback is over.
const ROLLBACK_POLL: Duration = Duration::from_millis(100);

/// Why a breaker tripped: the counts over its window.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    /// sha256 of the guest version that tripped it.
    pub version: String,
    /// Messages in the window that the guest failed on.
    pub failures: usize,
    /// Messages in the window.
    pub messages: usize,
    /// Whether the version has ever run a whole window below the threshold.
    pub established: bool,
    /// The last failure's error.
    pub last_error: String,
}

impl std::fmt::Display for Trip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the guest failed on {} of its last {} messages (last: {})",
            self.failures, self.messages, self.last_error
        )
    }
}

/// One pipeline's breaker, shared by the workers running its partitions.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    window: Mutex<Window>,
    /// The version the last rollback went back to: it is never rolled back in turn (that
    /// would swap back to the version that failed).
    rolled_back_to: Mutex<Option<String>>,
}

#[derive(Debug)]
struct Window {
    /// The version counted; another one starts a new window.
    version: String,
    /// The last outcomes, true for a failure.
    outcomes: VecDeque<bool>,
    failures: usize,
    /// A whole window below the threshold was seen with this version.
    established: bool,
    /// Paused until then, with why.
    open: Option<(Instant, String)>,
    /// The pauses' lengths, growing with each trip in a row.
    backoff: Backoff,
    /// A worker is rolling this version back: the others wait for it.
    rolling_back: bool,
}

impl Window {
    fn new(version: &str, config: &BreakerConfig) -> Self {
        Self {
            version: version.to_string(),
            outcomes: VecDeque::new(),
            failures: 0,
            established: false,
            open: None,
            backoff: Backoff::between(config.pause, config.max_pause),
            rolling_back: false,
        }
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            window: Mutex::new(Window::new("", &config)),
            rolled_back_to: Mutex::new(None),
            config,
        }
    }

    fn window(&self, version: &str) -> std::sync::MutexGuard<'_, Window> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.version != version {
            *w = Window::new(version, &self.config);
        }
        w
    }

    /// `n` messages of one call of `version` succeeded.
    pub fn succeeded(&self, version: &str, n: usize) {
        if !self.config.enabled {
            return;
        }
        let mut w = self.window(version);
        for _ in 0..n {
            self.push(&mut w, false);
        }
        if w.outcomes.len() == self.config.window && !self.over(&w) {
            w.established = true;
            w.backoff = Backoff::between(self.config.pause, self.config.max_pause);
        }
    }

    /// `version` failed on one message alone, with `error`. `Some` when that trips the
    /// breaker (or it is open, or the version is being rolled back): the window is
    /// emptied, for the next try to be judged on its own.
    pub fn failed(&self, version: &str, error: &str) -> Option<Trip> {
        if !self.config.enabled {
            return None;
        }
        let mut w = self.window(version);
        self.push(&mut w, true);
        // While the breaker is open or the version is being rolled back, no more of its
        // failures are written.
        let open = w
            .open
            .as_ref()
            .is_some_and(|(until, _)| *until > Instant::now());
        if !w.rolling_back && !open && !self.over(&w) {
            return None;
        }
        let trip = Trip {
            version: version.to_string(),
            failures: w.failures,
            messages: w.outcomes.len(),
            established: w.established,
            last_error: error.to_string(),
        };
        w.outcomes.clear();
        w.failures = 0;
        Some(trip)
    }

    fn push(&self, w: &mut Window, failed: bool) {
        w.outcomes.push_back(failed);
        w.failures += usize::from(failed);
        if w.outcomes.len() > self.config.window && w.outcomes.pop_front() == Some(true) {
            w.failures -= 1;
        }
    }

    fn over(&self, w: &Window) -> bool {
        w.failures >= self.config.min_failures
            && w.failures as f64 >= self.config.failure_rate * w.outcomes.len() as f64
    }

    /// Opens the breaker after `trip`: the pipeline waits before calling the guest again.
    /// Returns how long.
    pub fn open(&self, trip: &Trip) -> Duration {
        let mut w = self.window(&trip.version);
        let pause = w.backoff.delay();
        w.open = Some((Instant::now() + pause, trip.to_string()));
        pause
    }

    /// Whether `trip`'s version may be rolled back, claiming the rollback: it was not
    /// rolled back to itself and is not being rolled back by another worker. The
    /// pipeline's other partitions wait until [`Breaker::rolled_back`].
    pub fn start_rollback(&self, trip: &Trip) -> bool {
        let to = self
            .rolled_back_to
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if to.as_deref() == Some(&trip.version) {
            return false;
        }
        let mut w = self.window(&trip.version);
        !std::mem::replace(&mut w.rolling_back, true)
    }

    /// Whether another worker is rolling `version` back.
    pub fn rolling_back(&self, version: &str) -> bool {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.version == version && w.rolling_back
    }

    /// A rollback claimed by [`Breaker::start_rollback`] ended, with the version now in
    /// use if it succeeded.
    pub fn rolled_back(&self, to: Option<&str>) {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rolling_back = false;
        if let Some(to) = to {
            *self
                .rolled_back_to
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(to.to_string());
        }
    }

    /// While open: how long until the guest may be called again, and why it is open.
    pub fn wait(&self) -> Option<(Duration, String)> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.rolling_back {
            return Some((ROLLBACK_POLL, "rolling the guest back".to_string()));
        }
        let (until, why) = w.open.as_ref()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            w.open = None;
            return None;
        }
        Some((left, why.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            failure_rate: 0.5,
            window: 10,
            min_failures: 3,
            pause: Duration::from_millis(100),
            max_pause: Duration::from_millis(400),
        }
    }

    #[test]
    fn trips_at_the_rate_with_enough_failures_and_starts_afresh() {
        let b = Breaker::new(config());
        b.succeeded("v1", 2);
        assert_eq!(b.failed("v1", "trap"), None);
        assert_eq!(
            b.failed("v1", "trap"),
            None,
            "2 failures: below min_failures"
        );
        let trip = b.failed("v1", "out of fuel").expect("3 of 5 failed");
        assert_eq!((trip.failures, trip.messages), (3, 5));
        assert!(!trip.established);
        assert!(
            trip.to_string()
                .contains("3 of its last 5 messages (last: out of fuel)")
        );
        // The window starts afresh after a trip.
        assert_eq!(b.failed("v1", "trap"), None);
    }

    #[test]
    fn a_low_rate_never_trips_and_a_healthy_window_establishes_the_version() {
        let b = Breaker::new(config());
        for _ in 0..20 {
            b.succeeded("v1", 4);
            assert_eq!(b.failed("v1", "poison"), None, "1 in 5 is below half");
        }
        b.succeeded("v1", 10);
        for _ in 0..4 {
            b.failed("v1", "trap");
        }
        let trip = b.failed("v1", "trap").expect("5 of 10");
        assert!(trip.established, "v1 ran a healthy window before");
    }

    #[test]
    fn each_version_is_counted_on_its_own() {
        let b = Breaker::new(config());
        b.failed("v1", "trap");
        b.failed("v1", "trap");
        assert_eq!(b.failed("v2", "trap"), None, "v2's first failure");
        b.succeeded("v2", 10);
        assert_eq!(b.failed("v2", "trap"), None);
    }

    #[test]
    fn an_open_breaker_waits_doubling_up_to_the_most() {
        let b = Breaker::new(config());
        let trip = Trip {
            version: "v1".into(),
            failures: 3,
            messages: 3,
            established: false,
            last_error: "trap".into(),
        };
        let first = b.open(&trip);
        assert!(first >= Duration::from_millis(100) && first < Duration::from_millis(200));
        let (left, why) = b.wait().expect("open");
        assert!(left <= first);
        assert!(why.contains("3 of its last 3"), "{why}");
        assert!(b.open(&trip) >= Duration::from_millis(200));
        assert!(b.open(&trip) >= Duration::from_millis(400));
        assert!(b.open(&trip) < Duration::from_millis(450), "capped");
        std::thread::sleep(Duration::from_millis(460));
        assert_eq!(b.wait(), None, "closed once the pause is over");
    }

    #[test]
    fn a_rollback_is_claimed_once_and_never_goes_back_to_the_failed_version() {
        let b = Breaker::new(config());
        let trip = |version: &str| Trip {
            version: version.into(),
            failures: 3,
            messages: 3,
            established: false,
            last_error: "trap".into(),
        };
        assert!(b.start_rollback(&trip("v2")));
        assert!(!b.start_rollback(&trip("v2")), "claimed by another worker");
        assert!(b.rolling_back("v2"));
        assert!(b.wait().is_some(), "the others wait for the rollback");
        b.rolled_back(Some("v1"));
        assert_eq!(b.wait(), None);
        assert!(!b.start_rollback(&trip("v1")), "v1 was rolled back to");
    }

    #[test]
    fn a_disabled_breaker_never_trips() {
        let b = Breaker::new(BreakerConfig {
            enabled: false,
            ..config()
        });
        for _ in 0..100 {
            assert_eq!(b.failed("v1", "trap"), None);
        }
    }
}
