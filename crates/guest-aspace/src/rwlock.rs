//! A writer-preferring reader-writer spin lock.
//!
//! `spin::RwLock` lets a reader in whenever no writer holds the lock, so a
//! writer needs an instant with no reader at all: vCPUs translating in a
//! loop can keep it out for seconds. Here a writer that finds the lock busy
//! raises a *writer waiting* flag; new readers stay out while it is up, so
//! the writer waits only for the readers already inside (each holds the
//! lock for one bounded operation) and for writers ahead of it.
//!
//! Writers among themselves are not ordered (a writer can lose the race to
//! another writer more than once); what is bounded is how long readers can
//! keep writers out.
//!
//! # State word
//!
//! | bits | meaning |
//! |---|---|
//! | 0 | a writer holds the lock |
//! | 1 | a writer is waiting: readers stay out |
//! | 2.. | number of readers holding the lock |
//!
//! Under `--cfg loom` the atomics are loom's, for the models in this file's
//! tests (see `docs/RELIABILITY.md`).

use core::cell::UnsafeCell;
use core::fmt;
use core::ops::{Deref, DerefMut};

#[cfg(all(test, loom))]
use loom::sync::atomic::{AtomicUsize, Ordering};

#[cfg(not(all(test, loom)))]
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bit 0: a writer holds the lock.
const WRITER: usize = 1;
/// Bit 1: a writer waits; readers do not enter.
const WAITING: usize = 2;
/// One reader (the count starts at bit 2).
const READER: usize = 4;

/// Lets another CPU (or, under loom, another modelled thread) run.
#[inline]
fn relax() {
    #[cfg(all(test, loom))]
    loom::thread::yield_now();
    #[cfg(not(all(test, loom)))]
    core::hint::spin_loop();
}

/// A reader-writer spin lock that keeps new readers out while a writer
/// waits. `no_std`; built on one atomic word.
pub struct RwLock<T: ?Sized> {
    state: AtomicUsize,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time (so `T: Send`
// suffices to move access between threads) and `&T` to several at once
// (which needs `T: Sync`).
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}

impl<T> RwLock<T> {
    /// A new, unlocked lock.
    #[cfg(not(all(test, loom)))]
    pub const fn new(value: T) -> Self {
        Self {
            state: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// A new, unlocked lock (loom's atomics have no `const fn new`).
    #[cfg(all(test, loom))]
    pub fn new(value: T) -> Self {
        Self {
            state: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// The value back.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Shared access; spins while a writer holds the lock or waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        loop {
            if let Some(guard) = self.try_read() {
                return guard;
            }
            relax();
        }
    }

    /// Shared access if no writer holds the lock or waits for it.
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        // Relaxed: only a guess at the state; the CAS below decides.
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & (WRITER | WAITING) != 0 {
                return None;
            }
            // A saturated count (guards leaked by the billion) reads as busy.
            let next = s.checked_add(READER)?;
            // Acquire on success: pairs with the Release of the last
            // writer's unlock, so everything that writer did to the value is
            // visible to this reader. Another CPU may see the count go up at
            // any time; a writer seeing it only waits longer. Relaxed on
            // failure: we retry with the value seen, nothing was acquired.
            match self
                .state
                .compare_exchange_weak(s, next, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Some(RwLockReadGuard { lock: self }),
                Err(now) => s = now,
            }
        }
    }

    /// Exclusive access; raises the writer-waiting flag while readers or
    /// another writer hold the lock, so no new reader gets in meanwhile.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        // Relaxed: a guess; the CAS decides.
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & !WAITING == 0 {
                // Free (perhaps with our own or another writer's flag up).
                // Acquire on success pairs with the Release of the previous
                // holder's unlock (a reader's or a writer's), so their
                // accesses happen before ours. The new state is WRITER alone:
                // the flag comes down, and any other waiting writer raises it
                // again on its next turn (below). Relaxed on failure: retry
                // with the value the CAS saw, which is current.
                match self.state.compare_exchange_weak(
                    s,
                    WRITER,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return RwLockWriteGuard { lock: self },
                    Err(now) => {
                        s = now;
                        continue;
                    }
                }
            }
            if s & WAITING == 0 {
                // Relaxed: the flag only keeps new readers out (they test it
                // before their CAS, which would fail anyway once it is up);
                // it publishes no data. A reader whose CAS raced ahead of it
                // is inside and counted, and we wait for it to leave.
                self.state.fetch_or(WAITING, Ordering::Relaxed);
            }
            relax();
            // Relaxed: a guess, as above.
            s = self.state.load(Ordering::Relaxed);
        }
    }

    /// Exclusive access if nobody holds the lock.
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        // Relaxed: a guess; the CAS decides.
        let s = self.state.load(Ordering::Relaxed);
        if s & !WAITING != 0 {
            return None;
        }
        // Acquire on success: as in `write`. Relaxed on failure: nothing
        // acquired, nothing changed.
        self.state
            .compare_exchange(s, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| RwLockWriteGuard { lock: self })
    }

    /// The value through exclusive borrow of the lock: no locking needed.
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_read() {
            Some(guard) => f.debug_struct("RwLock").field("value", &&*guard).finish(),
            None => f.write_str("RwLock { <locked> }"),
        }
    }
}

/// Shared access to the value of an [`RwLock`]; released on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwLockReadGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard counts as a reader in the state word, so no
        // writer holds the lock (none can enter until the count drops) and
        // no `&mut T` exists while this `&T` lives.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        // Release: our reads of the value happen before a writer that sees
        // the lower count (its Acquire CAS), so it cannot overwrite what we
        // are still reading. Other readers and the waiting flag are kept.
        self.lock.state.fetch_sub(READER, Ordering::Release);
    }
}

/// Exclusive access to the value of an [`RwLock`]; released on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwLockWriteGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds the WRITER bit: no reader or other
        // writer is inside until it is dropped.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes this the only borrow
        // through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T: ?Sized> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        // Release: everything written through this guard happens before the
        // next holder's Acquire CAS. Only our bit is cleared: a waiting
        // writer's flag stays up, so it (not a stream of new readers) goes
        // next.
        self.lock.state.fetch_and(!WRITER, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn readers_share_writers_exclude() {
        let lock = RwLock::new(5);
        {
            let a = lock.read();
            let b = lock.read();
            assert_eq!(*a + *b, 10);
            assert!(lock.try_write().is_none());
        }
        {
            let mut w = lock.write();
            *w += 1;
            assert!(lock.try_read().is_none());
            assert!(lock.try_write().is_none());
        }
        assert_eq!(*lock.read(), 6);
        assert_eq!(lock.into_inner(), 6);
    }

    #[test]
    fn a_waiting_writer_keeps_new_readers_out() {
        let lock = RwLock::new(0u32);
        let first = lock.read();
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                *lock.write() += 1;
            });
            // Wait until the writer has raised its flag.
            while lock.state.load(Ordering::Relaxed) & WAITING == 0 {
                std::thread::yield_now();
            }
            assert!(
                lock.try_read().is_none(),
                "a new reader got in ahead of the writer"
            );
            drop(first);
            writer.join().unwrap();
        });
        assert_eq!(*lock.read(), 1);
        assert_eq!(lock.state.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn many_writers_and_readers() {
        let lock = RwLock::new([0u64; 4]);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let mut w = lock.write();
                        for x in w.iter_mut() {
                            *x += 1;
                        }
                    }
                });
            }
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let r = lock.read();
                        assert!(r.iter().all(|x| *x == r[0]), "torn read {:?}", *r);
                    }
                });
            }
        });
        assert_eq!(*lock.read(), [6000; 4]);
    }

    #[test]
    fn debug_shows_the_value_or_locked() {
        let lock = RwLock::new(3);
        assert_eq!(std::format!("{lock:?}"), "RwLock { value: 3 }");
        let _w = lock.write();
        assert_eq!(std::format!("{lock:?}"), "RwLock { <locked> }");
    }
}

/// loom models: `RUSTFLAGS="--cfg loom" cargo test -p guest-aspace --release
/// --lib rwlock`.
///
/// Readers here take the lock with `try_read` or hold it, and test threads
/// wait for each other on channels: loom explores every schedule, including
/// ones that never run a runnable thread while two others spin, so a model
/// with two threads spinning on a third never ends whatever the lock does.
#[cfg(all(test, loom))]
mod loom_tests {
    #[allow(clippy::unsafe_removed_from_name)]
    use loom::cell::UnsafeCell as Cell;
    use loom::sync::Arc;
    use loom::sync::mpsc::channel;
    use loom::thread;

    use super::*;

    /// A writer and two readers: loom's cell reports any access to the
    /// value the lock does not order (a write concurrent with a read), and
    /// readers see the value before or after the write, whole.
    #[test]
    fn writer_excludes_readers() {
        loom::model(|| {
            let lock = Arc::new(RwLock::new(Cell::new([0u32; 2])));
            let readers: std::vec::Vec<_> = (0..2)
                .map(|_| {
                    let lock = lock.clone();
                    thread::spawn(move || {
                        if let Some(g) = lock.try_read() {
                            // SAFETY: loom checks this read against the write.
                            let v = g.with(|p| unsafe { *p });
                            assert!(v == [0, 0] || v == [1, 1], "torn read {v:?}");
                        }
                    })
                })
                .collect();
            {
                let g = lock.write();
                // SAFETY: loom checks this write against the reads.
                g.with_mut(|p| unsafe { *p = [1, 1] });
            }
            for r in readers {
                r.join().unwrap();
            }
            assert_eq!(lock.state.load(Ordering::Relaxed), 0);
        });
    }

    /// Two writers: both increments land (writers exclude each other,
    /// including through the waiting flag's clear-and-raise).
    #[test]
    fn writers_exclude_each_other() {
        loom::model(|| {
            let lock = Arc::new(RwLock::new(Cell::new(0u32)));
            let other = {
                let lock = lock.clone();
                thread::spawn(move || {
                    let g = lock.write();
                    // SAFETY: loom checks the two writers' accesses.
                    g.with_mut(|p| unsafe { *p += 1 });
                })
            };
            {
                let g = lock.write();
                // SAFETY: as above.
                g.with_mut(|p| unsafe { *p += 1 });
            }
            other.join().unwrap();
            let g = lock.read();
            // SAFETY: both writers are joined.
            assert_eq!(g.with(|p| unsafe { *p }), 2);
        });
    }

    /// Two readers hold the lock and a writer comes: from the moment the
    /// writer waits, neither reader can take the lock again, so the two
    /// cannot relay it between them and keep the writer out (with
    /// `spin::RwLock` they can, and both `try_read`s below succeed). The
    /// writer gets in once the two holds end.
    #[test]
    fn writer_not_starved_by_two_readers() {
        loom::model(|| {
            let lock = Arc::new(RwLock::new(Cell::new(0u32)));
            let (in_tx, in_rx) = channel();
            let (go_tx, go_rx) = channel();
            let (checked_tx, checked_rx) = channel();
            let first = lock.read();
            let second = {
                let lock = lock.clone();
                thread::spawn(move || {
                    let held = lock.read();
                    in_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    assert!(
                        lock.try_read().is_none(),
                        "reader 2 got in ahead of the writer"
                    );
                    checked_tx.send(()).unwrap();
                    drop(held);
                })
            };
            in_rx.recv().unwrap();
            let writer = {
                let lock = lock.clone();
                thread::spawn(move || {
                    let g = lock.write();
                    // SAFETY: loom checks this write against the readers.
                    g.with_mut(|p| unsafe { *p = 1 });
                })
            };
            // Until the writer waits (only it runs meanwhile: reader 2 is
            // blocked on its channel).
            while lock.state.load(Ordering::Relaxed) & WAITING == 0 {
                thread::yield_now();
            }
            assert!(
                lock.try_read().is_none(),
                "reader 1 got in ahead of the writer"
            );
            go_tx.send(()).unwrap();
            checked_rx.recv().unwrap();
            drop(first);
            writer.join().unwrap();
            second.join().unwrap();
            let g = lock.read();
            // SAFETY: every thread is joined.
            assert_eq!(g.with(|p| unsafe { *p }), 1);
        });
    }
}
