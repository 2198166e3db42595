//! Fake guest memory for the unit tests of the walkers.

use core::cell::Cell;
use std::collections::HashMap;

use gpa_types::GuestPhysAddr;

use super::GuestPhysRead;

/// Guest RAM as a map from 8-byte aligned GPAs to entries. Reads of an
/// address never set return 0 when `ram_below` covers it (so an empty slot
/// reads as an invalid entry), `None` otherwise.
#[derive(Default)]
pub(crate) struct FakeMem {
    words: HashMap<u64, u64>,
    /// GPAs below this are RAM even when never written.
    pub(crate) ram_below: u64,
}

impl FakeMem {
    /// RAM up to `ram_below`, all zero.
    pub(crate) fn ram(ram_below: u64) -> Self {
        Self {
            words: HashMap::new(),
            ram_below,
        }
    }

    /// Writes one entry.
    pub(crate) fn set(&mut self, gpa: u64, entry: u64) {
        self.words.insert(gpa, entry);
    }
}

impl GuestPhysRead for FakeMem {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Option<u64> {
        let gpa = gpa.as_usize() as u64;
        match self.words.get(&gpa) {
            Some(&v) => Some(v),
            None if gpa < self.ram_below => Some(0),
            None => None,
        }
    }
}

/// A memory that counts the reads made through it.
pub(crate) struct CountingMem<M> {
    inner: M,
    reads: Cell<usize>,
}

impl<M> CountingMem<M> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: M) -> Self {
        Self {
            inner,
            reads: Cell::new(0),
        }
    }

    /// Reads so far.
    pub(crate) fn reads(&self) -> usize {
        self.reads.get()
    }
}

impl<M: GuestPhysRead> GuestPhysRead for CountingMem<M> {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Option<u64> {
        self.reads.set(self.reads.get() + 1);
        self.inner.read_u64(gpa)
    }
}
