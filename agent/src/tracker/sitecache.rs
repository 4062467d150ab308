//! A per-evaluation memo of PC → source site. An evaluation names the same
//! few PCs (creation sites, start functions, blocking frames) once per
//! goroutine: with 100k goroutines that was most of a scan's time.

use std::cell::RefCell;

use super::{
    goroutine::GoidMap,
    site::{Site, Symbols},
};

/// Distinct PCs remembered; the memo starts over past this.
const MAX_ENTRIES: usize = 65_536;

pub struct SiteCache<'a> {
    inner: &'a dyn Symbols,
    sites: RefCell<GoidMap<Option<Site>>>,
    frames: RefCell<GoidMap<Vec<Site>>>,
}

impl<'a> SiteCache<'a> {
    pub fn new(inner: &'a dyn Symbols) -> Self {
        Self {
            inner,
            sites: RefCell::default(),
            frames: RefCell::default(),
        }
    }
}

/// The memoised `lookup(pc)`: computed once, then cloned from `memo`.
fn memoised<T: Clone>(memo: &RefCell<GoidMap<T>>, pc: u64, lookup: impl FnOnce() -> T) -> T {
    if let Some(hit) = memo.borrow().get(&pc) {
        return hit.clone();
    }
    let value = lookup();
    let mut memo = memo.borrow_mut();
    if memo.len() >= MAX_ENTRIES {
        memo.clear();
    }
    memo.insert(pc, value.clone());
    value
}

impl Symbols for SiteCache<'_> {
    fn site(&self, pc: u64) -> Option<Site> {
        memoised(&self.sites, pc, || self.inner.site(pc))
    }

    fn frames(&self, pc: u64) -> Vec<Site> {
        memoised(&self.frames, pc, || self.inner.frames(pc))
    }

    fn is_wrapper(&self, pc: u64) -> Option<bool> {
        self.inner.is_wrapper(pc)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    struct Counting(Cell<u32>);

    impl Symbols for Counting {
        fn site(&self, pc: u64) -> Option<Site> {
            self.0.set(self.0.get() + 1);
            (pc != 0).then(|| Site {
                function: format!("f{pc}"),
                file: String::new(),
                line: 1,
            })
        }
    }

    #[test]
    fn names_each_pc_once() {
        let inner = Counting(Cell::new(0));
        let cache = SiteCache::new(&inner);
        for _ in 0..3 {
            assert_eq!(cache.site(7).unwrap().function, "f7");
            assert!(cache.site(0).is_none());
            assert_eq!(cache.frames(9).len(), 1);
        }
        assert_eq!(inner.0.get(), 3);
    }
}
