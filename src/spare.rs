//! Hands back a map's spare capacity once most of it is empty. A hash map
//! never shrinks on its own: the request ledger of a cold start of 10,000
//! objects keeps room for 10,000 (about 2 MB) long after the queue drained.

use std::{collections::HashMap, hash::Hash};

/// Below this many slots a map keeps what it has (not worth a reallocation).
const KEEP_SLOTS: usize = 64;

/// After a removal: shrinks `map` to twice its length once it is less than a
/// quarter full. Amortised O(1): the next shrink needs as many removals again.
pub fn release_spare<K: Eq + Hash, V, S: std::hash::BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > KEEP_SLOTS && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_map_gives_its_room_back_and_a_full_one_keeps_it() {
        let mut map: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let full = map.capacity();
        release_spare(&mut map);
        assert_eq!(map.capacity(), full, "full: nothing to give back");
        for i in 0..9_990 {
            map.remove(&i);
            release_spare(&mut map);
        }
        assert!(map.capacity() <= KEEP_SLOTS, "{} slots left for 10 entries", map.capacity());
        assert_eq!(map.len(), 10);
        assert!((9_990..10_000).all(|i| map.get(&i) == Some(&i)), "the entries stay");
    }
}
