//! GVA→GPA walks of the guest's own page tables (placeholder).
