//! Memcg ID → memcg address. IDs are 16 bit (`MEM_CGROUP_ID_MAX`) and the
//! kernel hands out the lowest free one, so a flat table indexed by ID, grown
//! to the highest ID seen, takes 8 bytes per ID where a hash map took 34 per
//! memcg at 65,535 memcgs (docs/PERFORMANCE.md). Larger values (damaged
//! records, pre-4.6 css IDs) go to a map.

use kmem_trace_common::MEMCG_ID_MAX;

use super::KeyMap;

/// Addresses by memcg ID; 0 is no address.
#[derive(Debug, Default)]
pub struct IdIndex {
    flat: Vec<u64>,
    other: KeyMap<u32, u64>,
}

impl IdIndex {
    /// Sets `id`'s address; returns the one it replaced.
    pub fn insert(&mut self, id: u32, addr: u64) -> Option<u64> {
        if id > MEMCG_ID_MAX || addr == 0 {
            return self.other.insert(id, addr);
        }
        let i = id as usize;
        if i >= self.flat.len() {
            let len = (i + 1)
                .next_power_of_two()
                .clamp(64, MEMCG_ID_MAX as usize + 1);
            self.flat.resize(len, 0);
        }
        let old = std::mem::replace(&mut self.flat[i], addr);
        (old != 0).then_some(old)
    }

    pub fn get(&self, id: u32) -> Option<u64> {
        match self.flat.get(id as usize) {
            Some(&a) if a != 0 => Some(a),
            _ if self.other.is_empty() => None,
            _ => self.other.get(&id).copied(),
        }
    }

    pub fn contains(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    pub fn remove(&mut self, id: u32) {
        if let Some(a) = self.flat.get_mut(id as usize) {
            *a = 0;
        }
        if !self.other.is_empty() {
            self.other.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_overflow_ids() {
        let mut ix = IdIndex::default();
        assert_eq!(ix.insert(5, 0x1000), None);
        assert_eq!(ix.insert(5, 0x2000), Some(0x1000));
        assert_eq!(ix.get(5), Some(0x2000));
        assert_eq!(ix.flat.len(), 64);
        assert_eq!(ix.insert(65535, 0x3000), None);
        assert_eq!(ix.flat.len(), 65536);
        assert_eq!(ix.insert(70000, 0x4000), None);
        assert_eq!(ix.get(70000), Some(0x4000));
        assert!(ix.contains(65535) && !ix.contains(6));
        ix.remove(5);
        ix.remove(70000);
        assert_eq!((ix.get(5), ix.get(70000)), (None, None));
        // A (damaged) zero address is kept apart, not taken for "none".
        ix.insert(7, 0);
        assert_eq!(ix.get(7), Some(0));
    }
}
