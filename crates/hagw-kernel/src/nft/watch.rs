//! nftables change events: which tables other programs touch.
//!
//! hagw's tables must come back when someone runs `nft flush ruleset`, a
//! firewall reload deletes every table, or a hand edit flushes a chain. The
//! kernel announces every committed change on the nfnetlink group
//! `NFNLGRP_NFTABLES`; [`Watch`] listens there and reports the tables each
//! message names, so a reconciler can check its own tables within
//! milliseconds instead of at its next periodic resync.
//!
//! Every message of the nftables subsystem (table, chain, rule, set, set
//! element, object, flowtable; added or deleted) carries the table's name as
//! its attribute 1, so the decoder needs nothing more. hagw's own replaces
//! are reported too: a reconciler compares what it finds with what it loaded
//! ([`super::TableShape`]), so its own changes cost one cheap check and
//! never a reload.

use std::io;

use netlink_sys::{
    protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket,
};

use super::{Family, NftError};

/// NFNLGRP_NFTABLES.
const NFNLGRP_NFTABLES: u32 = 7;
/// NFNL_SUBSYS_NFTABLES.
const SUBSYS_NFTABLES: u16 = 10;
/// NFT_MSG_NEWGEN: the end of one transaction's messages.
const MSG_NEWGEN: u16 = 15;
const NLMSG_HDRLEN: usize = 16;
/// struct nfgenmsg: family, version, resource id.
const NFGENMSG_LEN: usize = 4;

/// What one datagram of events said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// Tables named by the messages (deduplicated, in order).
    Tables(Vec<(Family, String)>),
    /// The socket overran: events were lost, check every table.
    Lost,
}

/// A socket subscribed to nftables change events, in the network namespace
/// of the thread that opened it.
pub struct Watch {
    sock: TokioSocket,
}

impl Watch {
    pub fn open() -> Result<Watch, NftError> {
        let err = |what: &str, e: io::Error| NftError::Spawn {
            program: "nfnetlink".into(),
            reason: format!("{what}: {e}"),
        };
        let mut sock = TokioSocket::new(NETLINK_NETFILTER).map_err(|e| err("socket", e))?;
        sock.socket_mut()
            .bind(&SocketAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)))
            .map_err(|e| err("bind to NFNLGRP_NFTABLES", e))?;
        Ok(Watch { sock })
    }

    /// The tables named by the next datagram of events.
    pub async fn next(&mut self) -> io::Result<Touched> {
        match self.sock.recv_from_full().await {
            Ok((buf, _)) => Ok(Touched::Tables(decode(&buf))),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => Ok(Touched::Lost),
            Err(e) => Err(e),
        }
    }
}

/// How long a burst of events (one transaction spans several datagrams)
/// is let settle before the tables are checked.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

/// Spawns a task that calls `notify` when a transaction touched a table
/// `ours` accepts (or events were lost), once per burst. `None` when the
/// events cannot be had (the caller's periodic check still catches changes).
pub fn spawn_checker(
    ours: impl Fn(Family, &str) -> bool + Send + 'static,
    notify: impl Fn() + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut w = match Watch::open() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "no nftables change events: tables are checked periodically only");
            return None;
        }
    };
    let hit = move |t: &Touched| match t {
        Touched::Lost => true,
        Touched::Tables(v) => v.iter().any(|(f, n)| ours(*f, n)),
    };
    Some(tokio::spawn(async move {
        loop {
            match w.next().await {
                Ok(t) if hit(&t) => {
                    while let Ok(Ok(_)) = tokio::time::timeout(SETTLE, w.next()).await {}
                    notify();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "nftables event socket failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }))
}

fn family_of(nfproto: u8) -> Option<Family> {
    Some(match nfproto {
        1 => Family::Inet,
        2 => Family::Ip,
        3 => Family::Arp,
        5 => Family::Netdev,
        7 => Family::Bridge,
        10 => Family::Ip6,
        _ => return None,
    })
}

/// The tables a datagram of nftables events names. Malformed messages end
/// the walk (they cannot come from the kernel; nothing panics on them).
pub fn decode(buf: &[u8]) -> Vec<(Family, String)> {
    let mut out: Vec<(Family, String)> = Vec::new();
    let mut off = 0;
    while let Some(hdr) = buf.get(off..off + NLMSG_HDRLEN) {
        let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let kind = u16::from_ne_bytes([hdr[4], hdr[5]]);
        let Some(msg) = buf.get(off..off + len).filter(|_| len >= NLMSG_HDRLEN) else {
            break;
        };
        off += len.next_multiple_of(4);
        if kind >> 8 != SUBSYS_NFTABLES || kind & 0xff == MSG_NEWGEN {
            continue;
        }
        let Some(family) = msg.get(NLMSG_HDRLEN).copied().and_then(family_of) else {
            continue;
        };
        if let Some(name) = table_attr(msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..).unwrap_or(&[])) {
            if !out.iter().any(|(f, n)| *f == family && *n == name) {
                out.push((family, name));
            }
        }
    }
    out
}

/// Attribute 1 (the table name in every nftables message) as a string.
fn table_attr(mut attrs: &[u8]) -> Option<String> {
    while attrs.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let atype = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        let data = attrs.get(4..alen)?;
        if atype == 1 {
            let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
            return std::str::from_utf8(&data[..end]).ok().map(String::from);
        }
        attrs = attrs.get(alen.next_multiple_of(4)..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One nfnetlink message: header, nfgenmsg, one string attribute of
    /// type `attr`.
    fn msg(kind: u16, family: u8, attr: u16, name: &str) -> Vec<u8> {
        let mut a = Vec::new();
        let alen = 4 + name.len() + 1;
        a.extend_from_slice(&(alen as u16).to_ne_bytes());
        a.extend_from_slice(&attr.to_ne_bytes());
        a.extend_from_slice(name.as_bytes());
        a.push(0);
        a.resize(alen.next_multiple_of(4), 0);
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + a.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend_from_slice(&a);
        m
    }

    #[test]
    fn tables_named_by_a_transaction_are_reported_once() {
        let deltable = (SUBSYS_NFTABLES << 8) | 2;
        let delrule = (SUBSYS_NFTABLES << 8) | 8;
        let newgen = (SUBSYS_NFTABLES << 8) | MSG_NEWGEN;
        let buf = [
            msg(delrule, 1, 1, "hagw"),
            msg(deltable, 1, 1, "hagw"),
            msg(deltable, 5, 1, "hagw_hide_eth1"),
            msg(deltable, 2, 1, "nat"),
            msg(newgen, 0, 1, "ignored"),
            msg(deltable, 1, 2, "not_a_name_attr"),
        ]
        .concat();
        assert_eq!(
            decode(&buf),
            vec![
                (Family::Inet, "hagw".to_string()),
                (Family::Netdev, "hagw_hide_eth1".to_string()),
                (Family::Ip, "nat".to_string()),
            ]
        );
    }

    #[test]
    fn garbage_is_not_panicked_on() {
        for buf in [
            &[0u8; 3][..],
            &[255; 40],
            &[16, 0, 0, 0, 2, 10],
            &[0; 16],
            &[20, 0, 0, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        ] {
            let _ = decode(buf);
        }
    }
}
