//! Values shared by many routes, stored once.

use std::borrow::Borrow;
use std::hash::Hash;
use std::num::NonZeroU32;

use crate::FastMap;

/// Which interned value: 4 bytes, and `Option<Id>` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(NonZeroU32);

impl Id {
    fn index(self) -> usize {
        self.0.get() as usize - 1
    }
}

#[derive(Debug)]
struct Slot<T> {
    value: Option<T>,
    refs: u32,
}

/// Interned values with a reference count each: [`Interner::intern`] adds a
/// reference, [`Interner::release`] drops one, and the value goes with the
/// last. Ids of gone values are reused.
#[derive(Debug)]
pub struct Interner<T> {
    ids: FastMap<T, Id>,
    slots: Vec<Slot<T>>,
    free: Vec<Id>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            ids: FastMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Hash + Eq + Clone> Interner<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of `value`, with one more reference.
    pub fn intern(&mut self, value: T) -> Id {
        if let Some(&id) = self.ids.get(&value) {
            self.acquire(id);
            return id;
        }
        self.insert(value)
    }

    /// Like [`Interner::intern`], from a borrowed form (a slice for an
    /// `Arc<[T]>`): `make` builds the value only when it is new.
    pub fn intern_with<Q>(&mut self, q: &Q, make: impl FnOnce(&Q) -> T) -> Id
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(&id) = self.ids.get(q) {
            self.acquire(id);
            return id;
        }
        self.insert(make(q))
    }

    fn insert(&mut self, value: T) -> Id {
        let slot = Slot {
            value: Some(value.clone()),
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id.index()] = slot;
                id
            }
            None => {
                self.slots.push(slot);
                let n = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                // len >= 1 after the push.
                Id(NonZeroU32::new(n).unwrap_or(NonZeroU32::MAX))
            }
        };
        self.ids.insert(value, id);
        id
    }

    /// One more reference to `id`.
    pub fn acquire(&mut self, id: Id) {
        if let Some(s) = self.slots.get_mut(id.index()) {
            s.refs += 1;
        }
    }

    /// One reference fewer to `id`; the value goes with the last.
    pub fn release(&mut self, id: Id) {
        let Some(s) = self.slots.get_mut(id.index()) else {
            return;
        };
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 {
            if let Some(v) = s.value.take() {
                self.ids.remove(&v);
                self.free.push(id);
            }
        }
    }

    /// The value of a live id.
    pub fn get(&self, id: Id) -> Option<&T> {
        self.slots.get(id.index()).and_then(|s| s.value.as_ref())
    }

    /// How many distinct values are live.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn equal_values_share_an_id_until_the_last_release() {
        let mut i = Interner::new();
        let a = i.intern("a".to_string());
        assert_eq!(i.intern("a".to_string()), a);
        let b = i.intern("b".to_string());
        assert_ne!(a, b);
        i.release(a);
        assert_eq!(i.get(a).map(String::as_str), Some("a"));
        i.release(a);
        assert_eq!(i.get(a), None);
        assert_eq!(i.len(), 1);
        // The id is reused.
        assert_eq!(i.intern("c".to_string()), a);
    }

    #[test]
    fn slices_find_their_arc() {
        let mut i: Interner<Arc<[u32]>> = Interner::new();
        let a = i.intern_with(&[1, 2][..], |s| Arc::from(s));
        let b = i.intern_with(&[1, 2][..], |_| unreachable!("already interned"));
        assert_eq!(a, b);
        assert_eq!(i.get(a).map(|s| &s[..]), Some(&[1, 2][..]));
    }

    #[test]
    fn an_optional_id_takes_four_bytes() {
        assert_eq!(std::mem::size_of::<Option<Id>>(), 4);
    }
}
