//! Single use of tickets: the issuing node remembers each ticket id it has seen redeemed until
//! the ticket expires. Bounded: past [`MAX_USED`] unexpired ids in all, or an app's share of
//! them, redemption is refused (fail closed) rather than forgetting an id that could then be
//! used twice. Each app has its own share, so one app redeeming tickets as fast as it can does
//! not stop another's.

use std::collections::{BTreeSet, HashMap};

/// Unexpired redeemed tickets one node remembers at most, all apps together.
pub const MAX_USED: usize = 100_000;

/// Why a ticket could not be consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConsumeError {
    /// It was redeemed before.
    #[error("the ticket has already been used")]
    Used,
    /// The app's share of the set is full of unexpired tickets.
    #[error("too many of the app's tickets are in use; retry later")]
    Full,
}

/// An app and a ticket id.
type Key = (String, String);

/// The redeemed ticket ids, each kept until its expiry (Unix seconds).
#[derive(Debug)]
pub struct UsedTickets {
    by_id: HashMap<Key, u64>,
    by_expiry: BTreeSet<(u64, Key)>,
    per_app: HashMap<String, usize>,
    /// Ids one app may have remembered at once.
    app_share: usize,
}

impl UsedTickets {
    /// The set of a node serving `apps` apps: each may have [`MAX_USED`]` / apps` remembered.
    pub fn new(apps: usize) -> UsedTickets {
        UsedTickets::with_share(MAX_USED / apps.max(1))
    }

    fn with_share(app_share: usize) -> UsedTickets {
        UsedTickets {
            by_id: HashMap::new(),
            by_expiry: BTreeSet::new(),
            per_app: HashMap::new(),
            app_share: app_share.max(1),
        }
    }

    /// Marks `app`'s ticket `jti` used, if it was not. `exp` is when it stops being redeemable
    /// anyway, `now` the Unix time: expired entries are forgotten first.
    pub fn consume(
        &mut self,
        app: &str,
        jti: &str,
        exp: u64,
        now: u64,
    ) -> Result<(), ConsumeError> {
        self.prune(now);
        let key = (app.to_string(), jti.to_string());
        if self.by_id.contains_key(&key) {
            return Err(ConsumeError::Used);
        }
        let held = self.per_app.get(app).copied().unwrap_or(0);
        if held >= self.app_share || self.by_id.len() >= MAX_USED {
            return Err(ConsumeError::Full);
        }
        *self.per_app.entry(app.to_string()).or_default() += 1;
        self.by_id.insert(key.clone(), exp);
        self.by_expiry.insert((exp, key));
        Ok(())
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn prune(&mut self, now: u64) {
        while let Some((exp, key)) = self.by_expiry.first().cloned() {
            if exp >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.by_id.remove(&key);
            if let Some(n) = self.per_app.get_mut(&key.0) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_app.remove(&key.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_consumed_once_and_forgotten_after_expiry() {
        let mut u = UsedTickets::new(1);
        assert_eq!(u.consume("a", "t1", 100, 10), Ok(()));
        assert_eq!(u.consume("a", "t1", 100, 50), Err(ConsumeError::Used));
        assert_eq!(
            u.consume("b", "t1", 100, 50),
            Ok(()),
            "another app's id is its own"
        );
        assert_eq!(
            u.consume("a", "t2", 20, 50),
            Ok(()),
            "a late one is still noted"
        );
        assert_eq!(u.len(), 3);
        assert_eq!(u.consume("a", "t3", 200, 101), Ok(()));
        assert_eq!(u.len(), 1, "t1 and t2 expired");
    }

    #[test]
    fn an_app_that_fills_its_share_does_not_stop_another() {
        let mut u = UsedTickets::with_share(3);
        for i in 0..3 {
            assert_eq!(u.consume("greedy", &format!("t{i}"), 100, 10), Ok(()));
        }
        assert_eq!(u.consume("greedy", "t3", 100, 10), Err(ConsumeError::Full));
        assert_eq!(u.consume("other", "t0", 100, 10), Ok(()));
        // Its share comes back as its tickets expire.
        assert_eq!(u.consume("greedy", "t3", 200, 101), Ok(()));
        assert_eq!(UsedTickets::new(4).app_share, MAX_USED / 4);
    }
}
