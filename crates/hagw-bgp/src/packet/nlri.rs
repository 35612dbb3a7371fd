//! Prefix encoding shared by the NLRI / Withdrawn Routes fields and MP_REACH /
//! MP_UNREACH (RFC 4271 §4.3, RFC 4760 §5).

use bytes::{BufMut, BytesMut};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a prefix list could not be parsed (RFC 7606 §5.3: never treat-as-withdraw).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PrefixError {
    TooLong(u8),
    Overrun,
}

impl PrefixError {
    pub(crate) fn reason(self) -> String {
        match self {
            PrefixError::TooLong(l) => format!("prefix length {l} exceeds the address size"),
            PrefixError::Overrun => "prefix overruns its field".to_string(),
        }
    }
}

/// A zero-padded address, its prefix length and the bytes after it.
type Split<'a, const N: usize> = ([u8; N], u8, &'a [u8]);

/// Splits one `<length, prefix>` tuple off `buf` into a zero-padded address.
fn next_prefix<const N: usize>(buf: &[u8]) -> Result<Option<Split<'_, N>>, PrefixError> {
    let Some((&plen, rest)) = buf.split_first() else {
        return Ok(None);
    };
    if usize::from(plen) > N * 8 {
        return Err(PrefixError::TooLong(plen));
    }
    let n = usize::from(plen).div_ceil(8);
    let (bytes, rest) = rest.split_at_checked(n).ok_or(PrefixError::Overrun)?;
    let mut addr = [0u8; N];
    if let Some(dst) = addr.get_mut(..n) {
        dst.copy_from_slice(bytes);
    }
    Ok(Some((addr, plen, rest)))
}

/// Decodes IPv4 prefixes, masking host bits (the RIB keys on the network).
pub(crate) fn decode_v4(mut buf: &[u8], out: &mut Vec<Ipv4Net>) -> Result<(), PrefixError> {
    out.reserve(buf.len() / 4);
    while let Some((addr, plen, rest)) = next_prefix::<4>(buf)? {
        let net =
            Ipv4Net::new(Ipv4Addr::from(addr), plen).map_err(|_| PrefixError::TooLong(plen))?;
        out.push(net.trunc());
        buf = rest;
    }
    Ok(())
}

pub(crate) fn decode_v6(mut buf: &[u8], out: &mut Vec<IpNet>) -> Result<(), PrefixError> {
    out.reserve(buf.len() / 8);
    while let Some((addr, plen, rest)) = next_prefix::<16>(buf)? {
        let net =
            Ipv6Net::new(Ipv6Addr::from(addr), plen).map_err(|_| PrefixError::TooLong(plen))?;
        out.push(IpNet::V6(net.trunc()));
        buf = rest;
    }
    Ok(())
}

pub(crate) fn decode_v4_ipnet(buf: &[u8], out: &mut Vec<IpNet>) -> Result<(), PrefixError> {
    let mut v4 = Vec::new();
    decode_v4(buf, &mut v4)?;
    out.extend(v4.into_iter().map(IpNet::V4));
    Ok(())
}

pub(crate) fn encoded_len(plen: u8) -> usize {
    1 + usize::from(plen).div_ceil(8)
}

pub(crate) fn encode_v4(net: &Ipv4Net, out: &mut BytesMut) {
    let plen = net.prefix_len();
    let octets = net.network().octets();
    out.put_u8(plen);
    out.put_slice(
        octets
            .get(..usize::from(plen).div_ceil(8))
            .unwrap_or(&octets),
    );
}

pub(crate) fn encode_v6(net: &Ipv6Net, out: &mut BytesMut) {
    let plen = net.prefix_len();
    let octets = net.network().octets();
    out.put_u8(plen);
    out.put_slice(
        octets
            .get(..usize::from(plen).div_ceil(8))
            .unwrap_or(&octets),
    );
}

pub(crate) fn encode_ip(net: &IpNet, out: &mut BytesMut) {
    match net {
        IpNet::V4(n) => encode_v4(n, out),
        IpNet::V6(n) => encode_v6(n, out),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_use_the_minimum_number_of_octets() {
        let mut out = BytesMut::new();
        for p in ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/15", "192.0.2.1/32"] {
            encode_v4(&v4(p), &mut out);
        }
        assert_eq!(
            &out[..],
            &[0, 8, 10, 15, 10, 0, 32, 192, 0, 2, 1][..],
            "default route is a single zero octet"
        );
        let mut back = Vec::new();
        decode_v4(&out, &mut back).unwrap();
        assert_eq!(
            back,
            vec![
                v4("0.0.0.0/0"),
                v4("10.0.0.0/8"),
                v4("10.0.0.0/15"),
                v4("192.0.2.1/32")
            ]
        );
    }

    #[test]
    fn host_bits_are_masked_on_decode_and_encode() {
        let mut back = Vec::new();
        decode_v4(&[12, 10, 0xff], &mut back).unwrap();
        assert_eq!(back, vec![v4("10.240.0.0/12")]);
        let mut out = BytesMut::new();
        encode_v4(&v4("10.255.255.255/12"), &mut out);
        assert_eq!(&out[..], &[12, 10, 0xf0]);
    }

    #[test]
    fn ipv4_prefix_longer_than_32_is_rejected() {
        assert_eq!(
            decode_v4(&[33, 1, 2, 3, 4, 5], &mut Vec::new()),
            Err(PrefixError::TooLong(33))
        );
    }

    #[test]
    fn ipv6_prefix_longer_than_128_is_rejected() {
        assert_eq!(
            decode_v6(&[129], &mut Vec::new()),
            Err(PrefixError::TooLong(129))
        );
    }

    #[test]
    fn overrunning_prefix_is_rejected() {
        assert_eq!(
            decode_v4(&[24, 10, 0], &mut Vec::new()),
            Err(PrefixError::Overrun)
        );
        assert_eq!(
            decode_v6(&[64, 0x20, 0x01], &mut Vec::new()),
            Err(PrefixError::Overrun)
        );
    }

    #[test]
    fn ipv6_prefixes_round_trip() {
        let nets: Vec<IpNet> = ["::/0", "2001:db8::/32", "2001:db8:1:2::1/128", "fe80::/10"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut out = BytesMut::new();
        nets.iter().for_each(|n| encode_ip(n, &mut out));
        let mut back = Vec::new();
        decode_v6(&out, &mut back).unwrap();
        assert_eq!(back, nets);
    }
}
