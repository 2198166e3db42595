//! A guest's address space: regions, backends, translation, faults, guest
//! memory access, GVA→GPA walks and dirty logging over one nested table.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod gva;
