//! Single use of tickets: the issuing node remembers each ticket id it has seen redeemed until
//! the ticket expires. Bounded: past [`MAX_USED`] unexpired ids, redemption is refused (fail
//! closed) rather than forgetting an id that could then be used twice.

use std::collections::{BTreeSet, HashMap};

/// Unexpired redeemed tickets one node remembers at most.
pub const MAX_USED: usize = 100_000;

/// Why a ticket could not be consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConsumeError {
    /// It was redeemed before.
    #[error("the ticket has already been used")]
    Used,
    /// The set is full of unexpired tickets.
    #[error("too many tickets in use; retry later")]
    Full,
}

/// The redeemed ticket ids, each kept until its expiry (Unix seconds).
#[derive(Debug, Default)]
pub struct UsedTickets {
    by_id: HashMap<String, u64>,
    by_expiry: BTreeSet<(u64, String)>,
}

impl UsedTickets {
    /// Marks `jti` used, if it was not. `exp` is when it stops being redeemable anyway, `now`
    /// the Unix time: expired entries are forgotten first.
    pub fn consume(&mut self, jti: &str, exp: u64, now: u64) -> Result<(), ConsumeError> {
        self.prune(now);
        if self.by_id.contains_key(jti) {
            return Err(ConsumeError::Used);
        }
        if self.by_id.len() >= MAX_USED {
            return Err(ConsumeError::Full);
        }
        self.by_id.insert(jti.to_string(), exp);
        self.by_expiry.insert((exp, jti.to_string()));
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
        while let Some((exp, id)) = self.by_expiry.first().cloned() {
            if exp >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_consumed_once_and_forgotten_after_expiry() {
        let mut u = UsedTickets::default();
        assert_eq!(u.consume("t1", 100, 10), Ok(()));
        assert_eq!(u.consume("t1", 100, 50), Err(ConsumeError::Used));
        assert_eq!(u.consume("t2", 20, 50), Ok(()), "a late one is still noted");
        assert_eq!(u.len(), 2);
        assert_eq!(u.consume("t3", 200, 101), Ok(()));
        assert_eq!(u.len(), 1, "t1 and t2 expired");
    }
}
