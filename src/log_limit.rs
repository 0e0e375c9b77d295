//! Warnings that an outage would repeat for every request (Redis unreachable, Supabase
//! failing, an upstream down) are let through once per interval per call site, and the next
//! one says how many were held back. The log stays readable and cheap to ship while the
//! metrics count every occurrence. Plain data: nothing here logs by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One warning per `EVERY` at most from one call site.
const EVERY: Duration = Duration::from_secs(10);

/// The gate of one call site, as a `static`.
pub struct Occasional {
    /// Milliseconds since [`epoch`] before which warnings are held back.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl Occasional {
    pub const fn new() -> Occasional {
        Occasional {
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(number held back since the last one)` when this warning may be logged.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(epoch().elapsed().as_millis() as u64)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        let due = now_ms >= next;
        // Of callers racing past the deadline, one wins the exchange and logs.
        if !due
            || self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

impl Default for Occasional {
    fn default() -> Self {
        Occasional::new()
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_then_the_count_held_back() {
        let gate = Occasional::new();
        assert_eq!(gate.admit_at(1_000), Some(0));
        assert_eq!(gate.admit_at(1_001), None);
        assert_eq!(gate.admit_at(10_999), None);
        assert_eq!(gate.admit_at(11_000), Some(2));
        assert_eq!(gate.admit_at(11_001), None);
        assert_eq!(gate.admit_at(60_000), Some(1));
    }
}
