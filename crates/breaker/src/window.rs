//! Lock-free sliding windows of call outcomes.
//!
//! Counts are packed three to an `AtomicU64` (calls, failures, slow calls; 21 bits each), so one
//! atomic add records an outcome and one load reads a consistent triple.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// Calls, failures and slow calls in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) total: u32,
    pub(crate) failed: u32,
    pub(crate) slow: u32,
}

impl Counts {
    fn unpack(word: u64) -> Self {
        // Each field is masked to 21 bits, so the casts cannot truncate.
        Self {
            total: (word & FIELD_MASK) as u32,
            failed: ((word >> FIELD_BITS) & FIELD_MASK) as u32,
            slow: ((word >> (2 * FIELD_BITS)) & FIELD_MASK) as u32,
        }
    }

    fn add(&mut self, other: Counts) {
        self.total += other.total;
        self.failed += other.failed;
        self.slow += other.slow;
    }

    /// Failure and slow-call rates in percent.
    pub(crate) fn rates(self) -> (f64, f64) {
        let total = f64::from(self.total.max(1));
        (
            f64::from(self.failed) * 100.0 / total,
            f64::from(self.slow) * 100.0 / total,
        )
    }
}

/// One outcome as a slot byte: bit 0 recorded, bit 1 failed, bit 2 slow. 0 is an empty slot.
fn encode(failed: bool, slow: bool) -> u8 {
    1 | (u8::from(failed) << 1) | (u8::from(slow) << 2)
}

/// The packed-count delta of a slot byte.
fn delta(slot: u8) -> u64 {
    u64::from(slot & 1)
        | (u64::from((slot >> 1) & 1) << FIELD_BITS)
        | (u64::from((slot >> 2) & 1) << (2 * FIELD_BITS))
}

/// The last `size` outcomes.
///
/// Recording swaps the outcome into the next slot of a ring and adjusts the packed totals by the
/// new outcome minus the one it replaced: adds come before subtracts, so under any interleaving
/// no count goes negative, and once recorders are quiet the totals equal the ring's contents.
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: AtomicU32,
    counts: AtomicU64,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU32::new(0),
            counts: AtomicU64::new(0),
        }
    }

    pub(crate) fn size(&self) -> u32 {
        // The window was built from a u32.
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool) -> Counts {
        let index = self.head.fetch_add(1, Ordering::Relaxed) % self.size();
        let new = encode(failed, slow);
        let old = self.slots[index as usize].swap(new, Ordering::AcqRel);
        let d = delta(new);
        let mut now = self.counts.fetch_add(d, Ordering::AcqRel).wrapping_add(d);
        if old != 0 {
            let od = delta(old);
            now = self.counts.fetch_sub(od, Ordering::AcqRel).wrapping_sub(od);
        }
        Counts::unpack(now)
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts::unpack(self.counts.load(Ordering::Acquire))
    }

    /// Whether every slot holds a fast success. Then recording another fast success changes
    /// nothing (it would replace a fast success), so it can be skipped: a load instead of four
    /// contended read-modify-writes, which is what a healthy backend's traffic is.
    #[inline]
    pub(crate) fn all_fast_successes(&self) -> bool {
        self.counts.load(Ordering::Relaxed) == u64::from(self.size())
    }

    /// Empties the window. Called only while no recorder can write into it (the breaker is
    /// in another state), under the transition lock.
    pub(crate) fn reset(&self) {
        for slot in &*self.slots {
            slot.store(0, Ordering::Relaxed);
        }
        self.head.store(0, Ordering::Relaxed);
        self.counts.store(0, Ordering::Release);
    }
}

/// Number of buckets a time window is cut into: the window advances in tenths.
pub(crate) const TIME_BUCKETS: usize = 10;

struct Bucket {
    /// Which bucket period (plus one; 0 = never used) the counts belong to.
    period: AtomicU64,
    counts: AtomicU64,
}

/// The outcomes of the last `length`, in [`TIME_BUCKETS`] buckets.
///
/// A bucket is recycled by the first recorder of a new period (compare-and-swap on its period),
/// which clears its counts. An outcome recorded into the same bucket in the instant between that
/// swap and the clearing can be lost; none is ever counted twice or twice removed, so counts never
/// go negative. The window covers between 9/10 and all of `length`.
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
}

impl TimeWindow {
    pub(crate) fn new(length_nanos: u64) -> Self {
        Self {
            buckets: (0..TIME_BUCKETS)
                .map(|_| Bucket {
                    period: AtomicU64::new(0),
                    counts: AtomicU64::new(0),
                })
                .collect(),
            bucket_nanos: (length_nanos / TIME_BUCKETS as u64).max(1),
        }
    }

    fn period(&self, now_nanos: u64) -> u64 {
        now_nanos / self.bucket_nanos + 1
    }

    #[inline]
    pub(crate) fn record(&self, now_nanos: u64, failed: bool, slow: bool) -> Counts {
        let period = self.period(now_nanos);
        let bucket = &self.buckets[(period % TIME_BUCKETS as u64) as usize];
        let seen = bucket.period.load(Ordering::Acquire);
        if seen < period
            && bucket
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.counts.store(0, Ordering::Release);
        }
        bucket
            .counts
            .fetch_add(delta(encode(failed, slow)), Ordering::AcqRel);
        self.counts_at(now_nanos)
    }

    pub(crate) fn counts_at(&self, now_nanos: u64) -> Counts {
        let period = self.period(now_nanos);
        let oldest = period.saturating_sub(TIME_BUCKETS as u64 - 1);
        let mut sum = Counts::default();
        for bucket in &*self.buckets {
            let p = bucket.period.load(Ordering::Acquire);
            if p >= oldest && p <= period {
                sum.add(Counts::unpack(bucket.counts.load(Ordering::Acquire)));
            }
        }
        sum
    }

    pub(crate) fn reset(&self) {
        for bucket in &*self.buckets {
            bucket.period.store(0, Ordering::Relaxed);
            bucket.counts.store(0, Ordering::Release);
        }
    }
}

/// The trial calls of one HALF_OPEN period, packed with the period's tag so that a trial
/// outcome is only ever counted in the period that issued its permit:
/// bits 0-15 calls, 16-31 failures, 32-47 slow calls, 48-63 the tag.
pub(crate) struct TrialWindow {
    word: AtomicU64,
}

impl TrialWindow {
    pub(crate) fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
        }
    }

    fn tag_of(epoch: u64) -> u64 {
        epoch & 0xFFFF
    }

    pub(crate) fn reset(&self, epoch: u64) {
        self.word
            .store(Self::tag_of(epoch) << 48, Ordering::Release);
    }

    /// Records a trial outcome of `epoch`; returns the period's counts after it, or `None` when
    /// the window belongs to another period.
    pub(crate) fn record(&self, epoch: u64, failed: bool, slow: bool) -> Option<Counts> {
        let tag = Self::tag_of(epoch);
        let add = 1 | (u64::from(failed) << 16) | (u64::from(slow) << 32);
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            if current >> 48 != tag {
                return None;
            }
            let next = current + add;
            match self.word.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Self::unpack(next)),
                Err(seen) => current = seen,
            }
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        Self::unpack(self.word.load(Ordering::Acquire))
    }

    fn unpack(word: u64) -> Counts {
        Counts {
            total: (word & 0xFFFF) as u32,
            failed: ((word >> 16) & 0xFFFF) as u32,
            slow: ((word >> 32) & 0xFFFF) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_keeps_the_last_n_outcomes() {
        let w = CountWindow::new(3);
        w.record(true, false);
        w.record(true, true);
        let c = w.record(false, false);
        assert_eq!(
            c,
            Counts {
                total: 3,
                failed: 2,
                slow: 1
            }
        );
        // The fourth outcome replaces the first (a failure).
        let c = w.record(false, false);
        assert_eq!(
            c,
            Counts {
                total: 3,
                failed: 1,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.counts(), Counts::default());
    }

    #[test]
    fn time_window_forgets_outcomes_older_than_its_length() {
        let w = TimeWindow::new(1_000); // 10 buckets of 100 ns
        w.record(0, true, false);
        w.record(450, true, true);
        assert_eq!(
            w.counts_at(450),
            Counts {
                total: 2,
                failed: 2,
                slow: 1
            }
        );
        // At 999 the bucket of time 0 is still in the window; from 1000 on it is not.
        assert_eq!(w.counts_at(999).total, 2);
        assert_eq!(
            w.counts_at(1_000),
            Counts {
                total: 1,
                failed: 1,
                slow: 1
            }
        );
        // Recording at 1000 recycles the bucket of time 0 (same slot, new period).
        let c = w.record(1_000, false, false);
        assert_eq!(
            c,
            Counts {
                total: 2,
                failed: 1,
                slow: 1
            }
        );
        assert_eq!(w.counts_at(5_000), Counts::default());
    }

    #[test]
    fn trial_window_ignores_outcomes_of_another_period() {
        let w = TrialWindow::new();
        w.reset(7);
        assert_eq!(
            w.record(7, true, false),
            Some(Counts {
                total: 1,
                failed: 1,
                slow: 0
            })
        );
        assert_eq!(w.record(6, true, false), None);
        assert_eq!(w.counts().total, 1);
    }
}
