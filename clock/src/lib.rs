//! Time as an injected dependency, in two readings that must not be confused:
//!
//! - **Monotonic** ([`Clock::monotonic_ms`]): milliseconds since an arbitrary origin, never going
//!   back and unmoved by NTP steps or an operator setting the date. Everything that measures an
//!   interval uses it: heartbeat TTLs and grace, in-flight deadlines, rate windows.
//! - **Wall** ([`Clock::now_ms`]): milliseconds since the Unix epoch. Only what is stored or shown
//!   uses it: token and challenge expiry, row times, `last_heartbeat`.
//!
//! [`SystemClock`] reads the system's clocks; [`ManualClock`] moves only when a test says so, and
//! can step its wall reading alone (as an NTP correction does) to show that liveness ignores it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// A source of both readings of time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall time: milliseconds since the Unix epoch. May jump either way.
    fn now_ms(&self) -> i64;

    /// Monotonic time: milliseconds since this clock's origin. Never decreases.
    fn monotonic_ms(&self) -> u64;
}

/// The system's clocks: `SystemTime` for the wall reading, `Instant` (from the first reading in
/// this process) for the monotonic one.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
    }

    fn monotonic_ms(&self) -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = ORIGIN.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to. [`ManualClock::advance_ms`] moves both readings, as real
/// time passing does; [`ManualClock::step_wall_ms`] and [`ManualClock::set_ms`] move only the wall
/// reading, as an NTP step or a changed date does.
#[derive(Debug, Default)]
pub struct ManualClock {
    wall_ms: AtomicI64,
    monotonic_ms: AtomicU64,
}

impl ManualClock {
    /// A clock whose wall reading shows `start_ms` and whose monotonic reading is 0.
    pub fn new(start_ms: i64) -> Self {
        Self {
            wall_ms: AtomicI64::new(start_ms),
            monotonic_ms: AtomicU64::new(0),
        }
    }

    /// Lets `ms` milliseconds pass: both readings move forward by `ms` (a negative `ms` moves
    /// neither).
    pub fn advance_ms(&self, ms: i64) {
        let Ok(forward) = u64::try_from(ms) else {
            return;
        };
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
        self.monotonic_ms.fetch_add(forward, Ordering::SeqCst);
    }

    /// Steps the wall reading by `ms` (either way) without time passing.
    pub fn step_wall_ms(&self, ms: i64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the wall reading without time passing.
    pub fn set_ms(&self, ms: i64) {
        self.wall_ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.wall_ms.load(Ordering::SeqCst)
    }

    fn monotonic_ms(&self) -> u64 {
        self.monotonic_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_both_readings_and_a_wall_step_only_the_wall() {
        let clock = ManualClock::new(1_000);
        clock.advance_ms(250);
        assert_eq!((clock.now_ms(), clock.monotonic_ms()), (1_250, 250));
        clock.step_wall_ms(-3_600_000);
        assert_eq!(
            (clock.now_ms(), clock.monotonic_ms()),
            (1_250 - 3_600_000, 250)
        );
        clock.set_ms(42);
        clock.advance_ms(-5);
        assert_eq!((clock.now_ms(), clock.monotonic_ms()), (42, 250));
    }

    #[test]
    fn the_system_monotonic_reading_never_goes_back() {
        let clock = SystemClock;
        let first = clock.monotonic_ms();
        let second = clock.monotonic_ms();
        assert!(second >= first);
        assert!(
            clock.now_ms() > 1_600_000_000_000,
            "wall reading is Unix milliseconds"
        );
    }
}
