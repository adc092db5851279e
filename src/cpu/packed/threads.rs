//! How the threads of a time loop share it: work items handed out in order, and the buffers
//! they share.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Hands out the work items (step, chunk) of the time loop to the threads that ask, in order,
/// and lets a step's chunks start only once every chunk of the step before is done.
///
/// No thread ever waits for one that has not claimed work, so a helper that starts late (or
/// never) only means the others do more: the caller's thread alone finishes everything.
/// Waiting is a spin on one counter (a step of a small layer takes microseconds, far less
/// than a sleep and wake-up), yielding the core after a while.
pub(super) struct Tickets {
    next: AtomicUsize,
    done: AtomicUsize,
    chunks: usize,
    total: usize,
}

impl Tickets {
    pub(super) fn new(steps: usize, chunks: usize) -> Self {
        Tickets {
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            chunks,
            total: steps * chunks,
        }
    }

    /// Claims and runs items until none are left.
    pub(super) fn work(&self, run: &(impl Fn(usize, usize) + Sync)) {
        loop {
            let t = self.next.fetch_add(1, Ordering::Relaxed);
            if t >= self.total {
                return;
            }
            let (step, chunk) = (t / self.chunks, t % self.chunks);
            let needed = step * self.chunks;
            let mut spins = 0u32;
            while self.done.load(Ordering::Acquire) < needed {
                spins += 1;
                if spins < 1 << 12 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            run(step, chunk);
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// A buffer the step threads share: each chunk writes only its own part, and a step reads
/// the other buffer of `h` only after the step before it is done ([`Tickets`] orders them).
#[derive(Clone, Copy)]
pub(super) struct SharedPtr(pub(super) *mut f32);
// SAFETY: see the type's documentation; the accesses through it are disjoint or ordered.
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}
