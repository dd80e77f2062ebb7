//! Memory: VMAs (mm-*.img) and their contents (pagemap-*.img + pages-*.img).

pub mod pages;
pub mod restore;
pub mod selfwrite;
pub mod track;
pub mod vma;

pub const PAGE_SIZE: u64 = 4096;

/// pagemap_entry.flags bits.
pub const PE_PARENT: u32 = 1;
pub const PE_LAZY: u32 = 2;
pub const PE_PRESENT: u32 = 4;
