//! Eviction policy: SIEVE over data regions. Pure bookkeeping; it *returns* victims and the caller
//! removes them (and may refuse one, e.g. while it is pinned).
//!
//! SIEVE (Zhang et al., NSDI '24) keeps a FIFO queue and one "visited" bit per entry; a hit only
//! sets the bit (no list moves, so a hit costs a store, not a relink as in LRU). The hand walks
//! from the oldest entry towards the newest, clearing bits, and stops at the first unvisited one.
//! The Zipf comparison against LRU and CLOCK is in `benches/evict.rs` and docs/DESIGN.md.

const NIL: u32 = u32::MAX;

/// A SIEVE queue over ids `0..capacity` (region numbers of one drive). Every method panics on
/// an id outside that range.
pub struct Sieve {
    /// Towards the newer end.
    newer: Vec<u32>,
    /// Towards the older end.
    older: Vec<u32>,
    flags: Vec<u8>,
    newest: u32,
    oldest: u32,
    hand: u32,
    len: usize,
}

const QUEUED: u8 = 1;
const VISITED: u8 = 2;

impl Sieve {
    /// An empty queue: 9 bytes per id (two `u32` links and a flag byte), allocated up front.
    pub fn new(capacity: usize) -> Sieve {
        Sieve {
            newer: vec![NIL; capacity],
            older: vec![NIL; capacity],
            flags: vec![0; capacity],
            newest: NIL,
            oldest: NIL,
            hand: NIL,
            len: 0,
        }
    }

    /// Ids queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no id is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `id` is queued.
    pub fn contains(&self, id: u32) -> bool {
        self.flags[id as usize] & QUEUED != 0
    }

    /// Adds `id` as the newest entry, unvisited. No-op if already queued.
    pub fn insert(&mut self, id: u32) {
        if self.contains(id) {
            return;
        }
        let i = id as usize;
        self.flags[i] = QUEUED;
        self.older[i] = self.newest;
        self.newer[i] = NIL;
        if self.newest != NIL {
            self.newer[self.newest as usize] = id;
        }
        self.newest = id;
        if self.oldest == NIL {
            self.oldest = id;
        }
        self.len += 1;
    }

    /// Removes `id` (evicted, or freed for another reason). No-op if not queued.
    pub fn remove(&mut self, id: u32) {
        if !self.contains(id) {
            return;
        }
        let i = id as usize;
        let (older, newer) = (self.older[i], self.newer[i]);
        if self.hand == id {
            self.hand = newer;
        }
        if older != NIL {
            self.newer[older as usize] = newer;
        } else {
            self.oldest = newer;
        }
        if newer != NIL {
            self.older[newer as usize] = older;
        } else {
            self.newest = older;
        }
        self.flags[i] = 0;
        self.older[i] = NIL;
        self.newer[i] = NIL;
        self.len -= 1;
    }

    /// Records a hit: sets `id`'s visited bit (no-op if not queued).
    pub fn touch(&mut self, id: u32) {
        if self.contains(id) {
            self.flags[id as usize] |= VISITED;
        }
    }

    /// Picks the next victim the caller accepts. Entries refused by `evictable` (pinned, busy)
    /// are passed over and keep their place. Returns `None` when two full sweeps found none.
    /// The victim stays queued: the caller calls [`Sieve::remove`] once it is really freed.
    pub fn victim(&mut self, mut evictable: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let mut hand = if self.hand == NIL {
            self.oldest
        } else {
            self.hand
        };
        for _ in 0..2 * self.len + 1 {
            let i = hand as usize;
            let next = if self.newer[i] == NIL {
                self.oldest
            } else {
                self.newer[i]
            };
            if self.flags[i] & VISITED != 0 {
                self.flags[i] &= !VISITED;
            } else if evictable(hand) {
                self.hand = next;
                return Some(hand);
            }
            hand = next;
        }
        self.hand = hand;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_in_fifo_order_without_hits() {
        let mut s = Sieve::new(8);
        for i in 0..4 {
            s.insert(i);
        }
        let v = s.victim(|_| true).unwrap();
        assert_eq!(v, 0);
        s.remove(v);
        assert_eq!(s.victim(|_| true), Some(1));
    }

    #[test]
    fn visited_entries_get_a_second_chance() {
        let mut s = Sieve::new(8);
        for i in 0..4 {
            s.insert(i);
        }
        s.touch(0);
        s.touch(1);
        let v = s.victim(|_| true).unwrap();
        assert_eq!(v, 2);
        s.remove(v);
        // The hand continues from where it stopped; 0 and 1 lost their bits on the way.
        assert_eq!(s.victim(|_| true), Some(3));
        s.remove(3);
        assert_eq!(s.victim(|_| true), Some(0));
    }

    #[test]
    fn refused_entries_are_skipped_and_none_when_all_refused() {
        let mut s = Sieve::new(4);
        for i in 0..3 {
            s.insert(i);
        }
        assert_eq!(s.victim(|id| id == 2), Some(2));
        assert_eq!(s.victim(|_| false), None);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn remove_keeps_links_consistent() {
        let mut s = Sieve::new(8);
        for i in 0..5 {
            s.insert(i);
        }
        s.remove(2);
        s.remove(0);
        s.remove(4);
        s.insert(2);
        let mut order = vec![];
        while let Some(v) = s.victim(|_| true) {
            order.push(v);
            s.remove(v);
        }
        assert_eq!(order, vec![1, 3, 2]);
        assert!(s.is_empty());
    }
}
