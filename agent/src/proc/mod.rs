//! Reading a live process from outside: `/proc` entries, its memory, the
//! Go runtime's goroutine table in that memory, and the heap walk that
//! proves parked goroutines unreachable.

mod blockmem;
mod bookkeeping;
mod globals;
mod gread;
pub mod heapwalk;
pub mod mem;
pub mod procfs;
pub mod scan;
mod specials;
mod stackscan;
mod waits;
