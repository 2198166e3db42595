//! A plain reference model of a second-stage table (feature `std`): a map
//! from 4 KiB guest page to host page and flags. Property tests and fuzz
//! targets run the real table and this model side by side.

use std::collections::BTreeMap;
use std::vec::Vec;

use gpa_types::MappingFlags;

/// What the model says one 4 KiB guest page maps to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPage {
    /// Host address of the page.
    pub hpa: usize,
    /// Its flags, as the format reports them.
    pub flags: MappingFlags,
}

/// The reference model: 4 KiB guest page number to [`ModelPage`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageModel {
    pages: BTreeMap<usize, ModelPage>,
}

const PAGE: usize = 4096;

impl PageModel {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether any page of `[gpa, gpa + len)` is mapped.
    pub fn any_mapped(&self, gpa: usize, len: usize) -> bool {
        self.pages
            .range(gpa / PAGE..(gpa + len).div_ceil(PAGE))
            .next()
            .is_some()
    }

    /// Maps `[gpa, gpa + len)` linearly to `hpa`.
    pub fn map(&mut self, gpa: usize, hpa: usize, len: usize, flags: MappingFlags) {
        for i in 0..len / PAGE {
            self.pages.insert(
                gpa / PAGE + i,
                ModelPage {
                    hpa: hpa + i * PAGE,
                    flags,
                },
            );
        }
    }

    /// Maps page `i` of the range at `gpa` to `frames[i]`.
    pub fn map_frames(&mut self, gpa: usize, frames: &[usize], flags: MappingFlags) {
        for (i, &hpa) in frames.iter().enumerate() {
            self.pages.insert(gpa / PAGE + i, ModelPage { hpa, flags });
        }
    }

    /// Unmaps `[gpa, gpa + len)`; returns how many pages were mapped.
    pub fn unmap(&mut self, gpa: usize, len: usize) -> usize {
        let keys: Vec<usize> = self
            .pages
            .range(gpa / PAGE..(gpa + len) / PAGE)
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            self.pages.remove(k);
        }
        keys.len()
    }

    /// Sets the flags of the mapped pages in `[gpa, gpa + len)`; returns how
    /// many there were.
    pub fn protect(&mut self, gpa: usize, len: usize, flags: MappingFlags) -> usize {
        let mut n = 0;
        for (_, page) in self.pages.range_mut(gpa / PAGE..(gpa + len) / PAGE) {
            page.flags = flags;
            n += 1;
        }
        n
    }

    /// What `gpa` translates to: host address (offset included) and flags.
    pub fn query(&self, gpa: usize) -> Option<(usize, MappingFlags)> {
        self.pages
            .get(&(gpa / PAGE))
            .map(|p| (p.hpa + gpa % PAGE, p.flags))
    }

    /// Mapped pages.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Every mapped page in GPA order: (guest address, page).
    pub fn iter(&self) -> impl Iterator<Item = (usize, ModelPage)> + '_ {
        self.pages.iter().map(|(k, p)| (k * PAGE, *p))
    }
}
