//! Fallback mode by key slot, for a Redis Cluster: while one primary is unreachable, only the
//! keys of its slots are answered from memory.

use std::sync::atomic::{AtomicU64, Ordering};

use resilient_redis_pool::CLUSTER_SLOTS;

/// A set of cluster slots, changed and read without a lock.
pub(crate) struct SlotSet {
    bits: Box<[AtomicU64]>,
}

impl SlotSet {
    pub(crate) fn new() -> Self {
        Self {
            bits: (0..usize::from(CLUSTER_SLOTS) / 64)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub(crate) fn contains(&self, slot: u16) -> bool {
        let (word, bit) = Self::at(slot);
        self.bits[word].load(Ordering::Acquire) & bit != 0
    }

    pub(crate) fn insert(&self, slot: u16) {
        let (word, bit) = Self::at(slot);
        self.bits[word].fetch_or(bit, Ordering::AcqRel);
    }

    /// Inserts `from..=to`, a word at a time.
    pub(crate) fn insert_range(&self, from: u16, to: u16) {
        let to = to.min(CLUSTER_SLOTS - 1);
        let mut slot = from;
        while slot <= to {
            let (word, bit) = Self::at(slot);
            let in_word = 64 - (slot % 64);
            let take = in_word.min(to - slot + 1);
            let mask = if take == 64 {
                u64::MAX
            } else {
                ((1u64 << take) - 1) * bit
            };
            self.bits[word].fetch_or(mask, Ordering::AcqRel);
            slot += take;
            if take == 0 {
                break;
            }
        }
    }

    pub(crate) fn insert_all(&self) {
        for word in &*self.bits {
            word.store(u64::MAX, Ordering::Release);
        }
    }

    pub(crate) fn clear(&self) {
        for word in &*self.bits {
            word.store(0, Ordering::Release);
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.bits
            .iter()
            .map(|w| w.load(Ordering::Acquire).count_ones())
            .sum()
    }

    fn at(slot: u16) -> (usize, u64) {
        let slot = usize::from(slot % CLUSTER_SLOTS);
        (slot / 64, 1 << (slot % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_kept_apart() {
        let s = SlotSet::new();
        assert_eq!(s.len(), 0);
        s.insert(0);
        s.insert(63);
        s.insert(64);
        s.insert_range(16000, 16383);
        s.insert_range(100, 100);
        assert!(s.contains(100) && !s.contains(99) && !s.contains(101));
        s.insert_range(130, 260);
        assert!(s.contains(130) && s.contains(191) && s.contains(192) && s.contains(260));
        assert!(!s.contains(129) && !s.contains(261));
        assert_eq!(s.len(), 3 + 384 + 1 + 131);
        s.clear();
        s.insert(0);
        s.insert(63);
        s.insert(64);
        s.insert_range(16000, 16383);
        assert!(s.contains(0) && s.contains(63) && s.contains(64) && s.contains(16383));
        assert!(!s.contains(1) && !s.contains(65) && !s.contains(15999));
        assert_eq!(s.len(), 3 + 384);
        s.insert_all();
        assert_eq!(s.len(), 16384);
        s.clear();
        assert_eq!(s.len(), 0);
    }
}
