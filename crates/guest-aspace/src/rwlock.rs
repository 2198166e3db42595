//! A writer-preferring reader-writer spin lock.
//!
//! `spin::RwLock` lets a reader in whenever no writer holds the lock, so a
//! writer needs an instant with no reader at all: vCPUs translating in a
//! loop can keep it out for seconds. Here a writer takes the writer bit at
//! once; new readers stay out while it is up, so the writer waits only for
//! the readers already inside (each holds the lock for one bounded
//! operation). A writer that finds another writer in raises a *writer
//! waiting* flag, which keeps new readers out too.
//!
//! Writers among themselves are not ordered (a writer can lose the race to
//! another writer more than once); what is bounded is how long readers can
//! keep writers out.
//!
//! Readers count themselves in one of eight slots, each on a cache line of
//! its own, picked by the reader's stack address: vCPUs on different CPUs
//! take the lock without writing a line they share (one shared count,
//! written twice by every fault and host write, was what most kept two
//! CPUs from running twice as fast as one). A writer scans the slots. The
//! reader's "count myself, then look for a writer" and the writer's "take
//! the bit, then look for readers" are ordered by SeqCst fences on both
//! sides, so at least one of them sees the other.
//!
//! # State word
//!
//! | bits | meaning |
//! |---|---|
//! | 0 | a writer holds the lock (or waits for the readers inside) |
//! | 1 | another writer is waiting: readers stay out |
//!
//! Under `--cfg loom` the atomics are loom's, for the models in this file's
//! tests (see `docs/RELIABILITY.md`).

use core::cell::UnsafeCell;
use core::fmt;
use core::ops::{Deref, DerefMut};

#[cfg(all(test, loom))]
use loom::sync::atomic::{AtomicUsize, Ordering, fence};

#[cfg(not(all(test, loom)))]
use core::sync::atomic::{AtomicUsize, Ordering, fence};

/// Bit 0: a writer holds the lock.
const WRITER: usize = 1;
/// Bit 1: a writer waits; readers do not enter.
const WAITING: usize = 2;
/// Reader slots: each reader counts itself in one, picked by the address of
/// its stack, so readers on different CPUs (different stacks) write
/// different cache lines.
const SLOTS: usize = 8;

/// One slot's reader count, on a line of its own (128 bytes: x86 CPUs fetch
/// lines in adjacent pairs).
#[repr(align(128))]
struct Slot(AtomicUsize);

/// The slot of the calling thread: a hash of its stack address (4 KiB
/// granules), the same for every call at about the same depth. Any slot is
/// correct; different threads merely tend to use different ones.
#[cfg(not(all(test, loom)))]
#[inline]
fn my_slot() -> usize {
    let probe = 0u8;
    let sp = core::ptr::addr_of!(probe) as usize >> 12;
    let hash = (sp as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (hash >> 61) as usize % SLOTS
}

/// Under loom, the slot of the modelled thread, from its id: loom needs the
/// same choice in every execution, which stack addresses do not give.
#[cfg(all(test, loom))]
fn my_slot() -> usize {
    let id = std::format!("{:?}", loom::thread::current().id());
    id.bytes()
        .filter(u8::is_ascii_digit)
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'))
        % SLOTS
}

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
    readers: [Slot; SLOTS],
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
            readers: [const { Slot(AtomicUsize::new(0)) }; SLOTS],
            value: UnsafeCell::new(value),
        }
    }

    /// A new, unlocked lock (loom's atomics have no `const fn new`).
    #[cfg(all(test, loom))]
    pub fn new(value: T) -> Self {
        Self {
            state: AtomicUsize::new(0),
            readers: core::array::from_fn(|_| Slot(AtomicUsize::new(0))),
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
        // Relaxed: a guess that spares the slot's line while a writer is in.
        if self.state.load(Ordering::Relaxed) & (WRITER | WAITING) != 0 {
            return None;
        }
        let slot = my_slot();
        let count = &self.readers.get(slot)?.0;
        // Announce, then look for a writer. The SeqCst fences here and in
        // `write` order the two announcements: a reader that does not see
        // the writer's bit is seen by the writer's scan of the slots.
        count.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // Acquire: pairs with the Release of the last writer's unlock, so
        // everything that writer did to the value is visible to us.
        if self.state.load(Ordering::Acquire) & (WRITER | WAITING) != 0 {
            // A writer is in or waiting: step back. Release: nothing was
            // read, but a writer scanning the slots acquires this count.
            count.fetch_sub(1, Ordering::Release);
            return None;
        }
        Some(RwLockReadGuard { lock: self, slot })
    }

    /// Exclusive access. A writer takes the writer bit at once (new readers
    /// stay out from then on) and waits for the readers already in; while
    /// another writer holds the lock it raises the waiting flag, which also
    /// keeps new readers out.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        // Relaxed: a guess; the CAS decides.
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & WRITER == 0 {
                // Acquire on success pairs with the Release of the previous
                // writer's unlock. The new state is WRITER alone: the flag
                // comes down, and any other waiting writer raises it again
                // on its next turn. Relaxed on failure: retry with the value
                // the CAS saw.
                match self.state.compare_exchange_weak(
                    s,
                    WRITER,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // See `try_read`: after this fence every reader
                        // either sees our bit or is counted in a slot.
                        fence(Ordering::SeqCst);
                        self.wait_for_readers();
                        return RwLockWriteGuard { lock: self };
                    }
                    Err(now) => {
                        s = now;
                        continue;
                    }
                }
            }
            if s & WAITING == 0 {
                // Relaxed: the flag only keeps new readers out; it
                // publishes no data.
                self.state.fetch_or(WAITING, Ordering::Relaxed);
            }
            relax();
            // Relaxed: a guess, as above.
            s = self.state.load(Ordering::Relaxed);
        }
    }

    /// Spins until no reader is counted in any slot.
    fn wait_for_readers(&self) {
        for slot in &self.readers {
            // Acquire: pairs with the Release of each reader's unlock, so
            // their reads of the value happen before our writes.
            while slot.0.load(Ordering::Acquire) != 0 {
                relax();
            }
        }
    }

    /// Whether any reader is counted.
    fn any_reader(&self) -> bool {
        // Acquire: as in `wait_for_readers`.
        self.readers
            .iter()
            .any(|slot| slot.0.load(Ordering::Acquire) != 0)
    }

    /// Exclusive access if nobody holds the lock.
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        // Relaxed: a guess; the CAS decides.
        let s = self.state.load(Ordering::Relaxed);
        if s & WRITER != 0 {
            return None;
        }
        // Acquire on success: as in `write`. Relaxed on failure: nothing
        // acquired, nothing changed.
        self.state
            .compare_exchange(s, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // As in `write`; a reader in means busy: take the bit back.
        fence(Ordering::SeqCst);
        if self.any_reader() {
            // Release: we changed nothing, but the bit's removal ends what
            // our CAS acquired.
            self.state.fetch_and(!WRITER, Ordering::Release);
            return None;
        }
        Some(RwLockWriteGuard { lock: self })
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
    /// The slot this reader is counted in.
    slot: usize,
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard is counted in a reader slot, so no writer
        // holds the lock (a writer waits until every slot is empty) and no
        // `&mut T` exists while this `&T` lives.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        // Release: our reads of the value happen before a writer that sees
        // the lower count (its Acquire load), so it cannot overwrite what we
        // are still reading.
        if let Some(slot) = self.lock.readers.get(self.slot) {
            slot.0.fetch_sub(1, Ordering::Release);
        }
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
            // Wait until the writer has taken its bit.
            while lock.state.load(Ordering::Relaxed) == 0 {
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
            while lock.state.load(Ordering::Relaxed) == 0 {
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
