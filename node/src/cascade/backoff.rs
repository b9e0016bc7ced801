//! The delay before a cascade's next attempt: exponential from [`MIN`] to [`MAX`], back to the
//! start once a session was live, so a server that comes back is found within `MAX` and one
//! that stays away costs one attempt per `MAX`.

use std::time::Duration;

/// The first delay after a failure.
pub const MIN: Duration = Duration::from_secs(1);
/// The longest delay between two attempts.
pub const MAX: Duration = Duration::from_secs(30);

/// Doubling delays, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: MIN }
    }
}

impl Backoff {
    /// The delay to wait now; the one after it is twice as long, at most [`MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(MAX);
        d
    }

    /// A session was live: the next failure waits [`MIN`] again.
    pub fn reset(&mut self) {
        self.next = MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let secs: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(), MIN);
    }
}
