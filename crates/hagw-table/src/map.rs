//! A map keyed by prefix, with IPv4 keys packed into a `u64`.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::FastMap;

/// An IPv4 prefix as a key: address << 8 | length. Lossless (host bits are
/// kept), so a key gives back the prefix it was made from.
fn key4(n: &Ipv4Net) -> u64 {
    u64::from(u32::from(n.addr())) << 8 | u64::from(n.prefix_len())
}

fn net4(k: u64) -> Ipv4Net {
    // Keys come from valid prefixes only: the length is <= 32.
    Ipv4Net::new(Ipv4Addr::from((k >> 8) as u32), (k & 0xff) as u8)
        .unwrap_or_else(|_| Ipv4Net::default())
}

/// A map from prefix to `V`. An IPv4 entry costs its 8-byte key and `V`
/// (plus the table's one control byte and spare room); IPv6 keys take 17.
#[derive(Debug)]
pub struct PrefixMap<V> {
    v4: FastMap<u64, V>,
    v6: FastMap<Ipv6Net, V>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap {
            v4: FastMap::default(),
            v6: FastMap::default(),
        }
    }
}

impl<V> PrefixMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn contains(&self, p: &IpNet) -> bool {
        self.get(p).is_some()
    }

    pub fn get(&self, p: &IpNet) -> Option<&V> {
        match p {
            IpNet::V4(n) => self.v4.get(&key4(n)),
            IpNet::V6(n) => self.v6.get(n),
        }
    }

    pub fn get_mut(&mut self, p: &IpNet) -> Option<&mut V> {
        match p {
            IpNet::V4(n) => self.v4.get_mut(&key4(n)),
            IpNet::V6(n) => self.v6.get_mut(n),
        }
    }

    /// The entry of `p`, made by `make` if there is none.
    pub fn get_or_insert_with(&mut self, p: IpNet, make: impl FnOnce() -> V) -> &mut V {
        match p {
            IpNet::V4(n) => self.v4.entry(key4(&n)).or_insert_with(make),
            IpNet::V6(n) => self.v6.entry(n).or_insert_with(make),
        }
    }

    pub fn insert(&mut self, p: IpNet, v: V) -> Option<V> {
        match p {
            IpNet::V4(n) => self.v4.insert(key4(&n), v),
            IpNet::V6(n) => self.v6.insert(n, v),
        }
    }

    pub fn remove(&mut self, p: &IpNet) -> Option<V> {
        match p {
            IpNet::V4(n) => self.v4.remove(&key4(n)),
            IpNet::V6(n) => self.v6.remove(n),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &V)> + '_ {
        let v4 = self.v4.iter().map(|(k, v)| (IpNet::V4(net4(*k)), v));
        let v6 = self.v6.iter().map(|(k, v)| (IpNet::V6(*k), v));
        v4.chain(v6)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (IpNet, &mut V)> + '_ {
        let v4 = self.v4.iter_mut().map(|(k, v)| (IpNet::V4(net4(*k)), v));
        let v6 = self.v6.iter_mut().map(|(k, v)| (IpNet::V6(*k), v));
        v4.chain(v6)
    }

    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Keeps the entries `keep` says to keep, of one family (`v6`: Some) or
    /// both (None).
    pub fn retain(&mut self, v6: Option<bool>, mut keep: impl FnMut(IpNet, &mut V) -> bool) {
        if v6 != Some(true) {
            self.v4.retain(|k, v| keep(IpNet::V4(net4(*k)), v));
        }
        if v6 != Some(false) {
            self.v6.retain(|k, v| keep(IpNet::V6(*k), v));
        }
        self.shrink();
    }

    /// Gives memory back after most entries went (a peer with 100k routes
    /// left): a table keeps its size otherwise.
    pub fn shrink(&mut self) {
        if self.v4.capacity() > 1024 && self.v4.len() < self.v4.capacity() / 4 {
            self.v4.shrink_to_fit();
        }
        if self.v6.capacity() > 1024 && self.v6.len() < self.v6.capacity() / 4 {
            self.v6.shrink_to_fit();
        }
    }

    pub fn clear(&mut self) {
        self.v4 = FastMap::default();
        self.v6 = FastMap::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    #[test]
    fn keys_give_back_their_prefix() {
        let mut m = PrefixMap::new();
        let all = [
            "0.0.0.0/0",
            "10.128.0.1/32",
            "10.0.0.1/24",
            "10.0.0.0/24",
            "255.255.255.255/32",
            "::/0",
            "2001:db8::1/128",
        ];
        for (i, p) in all.iter().enumerate() {
            assert_eq!(m.insert(net(p), i), None);
        }
        assert_eq!(m.len(), all.len());
        let mut back: Vec<(IpNet, usize)> = m.iter().map(|(k, v)| (k, *v)).collect();
        back.sort_by_key(|e| e.1);
        let want: Vec<(IpNet, usize)> = all.iter().enumerate().map(|(i, p)| (net(p), i)).collect();
        assert_eq!(back, want);
        assert_eq!(m.get(&net("10.0.0.1/24")), Some(&2));
        assert_eq!(m.remove(&net("10.0.0.0/24")), Some(3));
        assert!(!m.contains(&net("10.0.0.0/24")));
    }

    #[test]
    fn retain_by_family() {
        let mut m = PrefixMap::new();
        m.insert(net("10.0.0.0/8"), 1);
        m.insert(net("2001:db8::/32"), 2);
        m.retain(Some(true), |_, _| false);
        assert_eq!(m.keys().collect::<Vec<_>>(), vec![net("10.0.0.0/8")]);
        m.retain(None, |_, _| false);
        assert!(m.is_empty());
    }

    #[test]
    fn shrinks_after_most_entries_went() {
        let mut m = PrefixMap::new();
        for i in 0..100_000u32 {
            m.insert(
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i), 32).expect("len")),
                (),
            );
        }
        let full = m.v4.capacity();
        m.retain(None, |p, _| match p.addr() {
            std::net::IpAddr::V4(a) => u32::from(a) < 1000,
            std::net::IpAddr::V6(_) => true,
        });
        assert_eq!(m.len(), 1000);
        assert!(m.v4.capacity() < full / 4);
    }
}
