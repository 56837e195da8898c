//! One fetch per key at a time (pingora-cache's cache lock): the first request for a key that
//! must go upstream leads the fetch, every other one joins it and waits for its outcome, so a
//! thousand devices asking for the same cold object send one request up the chain.

use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::{Condvar, Mutex};

use super::Object;
use crate::error::Error;

/// What a fetch (a cold miss or a revalidation) gives the requests that joined it.
#[derive(Clone, Debug)]
pub enum Collapsed {
    /// The object to serve: stored (or refreshed), its first blocks on their way.
    Object(Object),
    /// The answer may not be stored (the reason, RFC 9111 §3). The request that led the fetch
    /// gets the response itself, relayed; a joined one passes its own request through.
    Pass(&'static str),
    /// The upstream answered a status the cache relays rather than stores (a redirect, an
    /// error, RFC 9110 §15). As with `Pass`: relayed to the leader, asked again by the others.
    Status(u16),
}

/// A fetch under way, shared by every request that joined it.
pub struct Pending {
    result: Mutex<Option<Result<Collapsed, Error>>>,
    notify: tokio::sync::Notify,
    cond: Condvar,
}

impl Pending {
    fn new() -> Arc<Pending> {
        Arc::new(Pending {
            result: Mutex::new(None),
            notify: tokio::sync::Notify::new(),
            cond: Condvar::new(),
        })
    }

    /// A fetch that is already over (the object was cached by the time the lock was taken).
    pub fn done(r: Result<Collapsed, Error>) -> Arc<Pending> {
        let p = Pending::new();
        p.finish(r);
        p
    }

    /// Sets the outcome (the first one wins) and wakes every waiter, async or blocking.
    fn finish(&self, r: Result<Collapsed, Error>) {
        let mut g = self.result.lock();
        if g.is_none() {
            *g = Some(r);
        }
        self.cond.notify_all();
        drop(g);
        self.notify.notify_waiters();
    }

    /// Waits (async) for the outcome.
    pub async fn wait(&self) -> Result<Collapsed, Error> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.result.lock().clone() {
                return r;
            }
            notified.await;
        }
    }

    /// Waits from a plain thread.
    pub fn wait_blocking(&self) -> Result<Collapsed, Error> {
        let mut g = self.result.lock();
        loop {
            if let Some(r) = g.clone() {
                return r;
            }
            self.cond.wait(&mut g);
        }
    }
}

/// What taking the lock for a key gave.
pub enum LockStatus {
    /// No fetch was under way: the caller starts one and must [`FetchLock::release`] it.
    Leader(Arc<Pending>),
    /// A fetch is under way: wait on it.
    Joined(Arc<Pending>),
}

/// The fetches under way, by cache key.
#[derive(Default)]
pub struct FetchLock {
    map: Mutex<HashMap<String, Arc<Pending>>>,
}

impl FetchLock {
    /// Leads the fetch for `key`, or joins the one under way.
    pub fn acquire(&self, key: &str) -> LockStatus {
        let mut m = self.map.lock();
        if let Some(p) = m.get(key) {
            return LockStatus::Joined(p.clone());
        }
        let p = Pending::new();
        m.insert(key.to_string(), p.clone());
        LockStatus::Leader(p)
    }

    /// Ends the fetch `p` for `key` with its outcome. Out of the map first: a request arriving
    /// after the outcome is out starts its own fetch rather than join a finished one (and be
    /// handed a stale error).
    pub fn release(&self, key: &str, p: &Arc<Pending>, r: Result<Collapsed, Error>) {
        {
            let mut m = self.map.lock();
            if m.get(key).is_some_and(|x| Arc::ptr_eq(x, p)) {
                m.remove(key);
            }
        }
        p.finish(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    #[test]
    fn one_leader_then_joiners_then_a_new_leader() {
        let l = FetchLock::default();
        let LockStatus::Leader(p) = l.acquire("k") else {
            panic!("the first request leads")
        };
        let LockStatus::Joined(q) = l.acquire("k") else {
            panic!("the second joins")
        };
        assert!(Arc::ptr_eq(&p, &q));
        assert!(matches!(l.acquire("other"), LockStatus::Leader(_)));
        l.release("k", &p, Err(Error::new(Kind::Timeout)));
        assert_eq!(q.wait_blocking().unwrap_err().kind, Kind::Timeout);
        // Released: the next request leads a fetch of its own.
        assert!(matches!(l.acquire("k"), LockStatus::Leader(_)));
    }
}
