//! Reading a live process from outside: `/proc` entries, its memory, and
//! the Go runtime's goroutine table in that memory.

pub mod heapwalk;
pub mod mem;
pub mod procfs;
pub mod scan;
mod stackscan;
