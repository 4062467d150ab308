//! A map with a hard bound on entries, evicting the oldest insert: memory
//! stays flat however many distinct executables a node runs over its life.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

#[derive(Debug)]
pub struct BoundedMap<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    /// Inserts, evicting the oldest entry when full.
    pub fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_some() {
            return;
        }
        self.order.push_back(k);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_exceeds_its_bound_and_evicts_the_oldest() {
        let mut m = BoundedMap::new(3);
        for i in 0..10 {
            m.insert(i, i * 10);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&9), Some(&90));
        assert_eq!(m.get(&6), None);
        m.insert(9, 1);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&7), Some(&70));
    }
}
