//! Reused allocations for the redis-rs path's request futures.
//!
//! redis-rs's `ConnectionLike` hands back a boxed future, and a request future of the whole
//! stack is a few KB. An allocation of that size is one the system allocator serves slowly (it
//! is too large for its per-thread caches, and glibc's tidies its small free lists on every
//! one), which cost the redis-rs path about a tenth of its throughput against a local Redis.
//! So the request future lives in a block that is kept, once the call is over, for the next
//! call made on the same thread; the box redis-rs gets holds only a pointer to it (a small
//! allocation, which the allocator's per-thread cache serves quickly).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use recycle_box::RecycleBox;

/// Blocks kept per thread, at most (each the size of one request future).
const SPARES: usize = 32;

thread_local! {
    static SPARE: RefCell<Vec<RecycleBox<()>>> = const { RefCell::new(Vec::new()) };
}

/// A future in a reused block; the block goes back to its thread's spares when it is dropped
/// (finished or abandoned).
struct Recycled<F>(Option<Pin<RecycleBox<F>>>);

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match &mut self.get_mut().0 {
            Some(f) => f.as_mut().poll(cx),
            None => unreachable!("only ever empty while being dropped"),
        }
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            // The future is dropped first (it may drop other recycled futures), then its block
            // is kept; past the cap, or while the thread is ending, it is freed.
            let block = RecycleBox::vacate_pinned(f);
            let _ = SPARE.try_with(|spare| {
                if let Ok(mut spare) = spare.try_borrow_mut()
                    && spare.len() < SPARES
                {
                    spare.push(block);
                }
            });
        }
    }
}

/// `f`, boxed as redis-rs's `RedisFuture` asks, in a block reused from an earlier call when
/// this thread has one.
pub(crate) fn boxed<'a, F>(f: F) -> Pin<Box<dyn Future<Output = F::Output> + Send + 'a>>
where
    F: Future + Send + 'a,
{
    let spare = SPARE
        .try_with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten();
    let block = match spare {
        Some(block) => RecycleBox::recycle(block, f),
        None => RecycleBox::new(f),
    };
    Box::pin(Recycled(Some(RecycleBox::into_pin(block))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its drops.
    struct Probe(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_block_is_reused_and_its_future_dropped_finished_or_not() {
        let drops = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let spares = || SPARE.with(|s| s.borrow().len());
        let before = spares();
        let probe = Probe(drops.clone());
        let answer = boxed(async move {
            let _probe = probe;
            tokio::task::yield_now().await;
            7
        })
        .await;
        assert_eq!(answer, 7);
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(spares(), before + 1, "the block was not kept");

        // Abandoned mid-way (a caller's timeout): its state is dropped, its block kept.
        let probe = Probe(drops.clone());
        let abandoned = boxed(async move {
            let _probe = probe;
            std::future::pending::<()>().await;
        });
        assert_eq!(spares(), before, "the kept block was not reused");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(1), abandoned)
                .await
                .is_err()
        );
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(spares(), before + 1);
    }

    #[test]
    fn no_more_than_the_cap_is_kept() {
        let held: Vec<_> = (0..SPARES + 5).map(|i| boxed(async move { i })).collect();
        drop(held);
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARES);
    }
}
