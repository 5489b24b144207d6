//! Per-thread pools of I/O buffers, so that a connection holds a buffer only
//! while bytes are in flight and the next one reuses it without a new
//! allocation. Used by [`crate::splice`] and [`crate::tls_stream`].

use std::cell::RefCell;
use std::thread::LocalKey;

/// A per-thread list of spare buffers (a `thread_local!` static).
pub(crate) type Pool<T> = LocalKey<RefCell<Vec<T>>>;

/// Buffers kept per thread and pool; more are freed.
const POOL_MAX: usize = 64;

/// A spare buffer from `pool`, or a new one from `new`.
pub(crate) fn take<T>(pool: &'static Pool<T>, new: impl FnOnce() -> T) -> T {
    pool.with(|p| p.borrow_mut().pop()).unwrap_or_else(new)
}

/// Keep `b` in `pool` for reuse, or free it when the pool is full.
pub(crate) fn give<T>(pool: &'static Pool<T>, b: T) {
    pool.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(b);
        }
    });
}
