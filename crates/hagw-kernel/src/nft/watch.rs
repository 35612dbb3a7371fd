//! nftables over nfnetlink, for what `nft` is too slow at: change events,
//! the ruleset generation, a table's presence, a table's rule handles.
//!
//! hagw's tables must come back when someone runs `nft flush ruleset`, a
//! firewall reload deletes every table, or a hand edit flushes a chain. The
//! kernel announces every committed change on the nfnetlink group
//! `NFNLGRP_NFTABLES`; [`Watch`] listens there.
//!
//! Every message of the nftables subsystem (table, chain, rule, set, set
//! element, object, flowtable; added or deleted) carries the table's name as
//! its attribute 1, and every transaction ends with a NEWGEN message giving
//! the ruleset's new generation. hagw's own transactions are reported too;
//! a reconciler tells them apart by generation: it reads the generation
//! right after its own transaction ([`generation`]), and only a later
//! transaction touching its table is someone else's. That costs one
//! netlink request per change, where listing a table of 2,000 rules with
//! `nft -j` takes 0.6 s. [`table_exists`] is the equally cheap periodic
//! check, and [`rules`] reads a table's rule handles and comments (for
//! incremental changes) without decoding a single expression.

use std::io;

use netlink_sys::{
    protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket,
};

use super::{Family, NftError};

/// NFNLGRP_NFTABLES.
const NFNLGRP_NFTABLES: u32 = 7;
/// NFNL_SUBSYS_NFTABLES.
const SUBSYS_NFTABLES: u16 = 10;
const MSG_GETTABLE: u16 = 1;
const MSG_NEWRULE: u16 = 6;
const MSG_GETRULE: u16 = 7;
/// NFT_MSG_NEWGEN: the end of one transaction's messages.
const MSG_NEWGEN: u16 = 15;
const MSG_GETGEN: u16 = 16;
const NLMSG_HDRLEN: usize = 16;
/// struct nfgenmsg: family, version, resource id.
const NFGENMSG_LEN: usize = 4;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a burst of events (one transaction spans several datagrams)
/// is let settle before the caller is told.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

/// One committed transaction, as the events told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The ruleset generation it made; `None` when events were lost (the
    /// socket overran): anything may have changed.
    pub gen: Option<u32>,
    /// The tables its messages named (deduplicated, in order).
    pub tables: Vec<(Family, String)>,
}

/// Groups event messages into transactions.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Tables named so far by the transaction in progress.
    pending: Vec<(Family, String)>,
}

impl Decoder {
    /// Decodes one datagram, ending a transaction at each NEWGEN.
    pub fn feed(&mut self, buf: &[u8]) -> Vec<Change> {
        let mut out = Vec::new();
        for m in messages(buf) {
            match m {
                Msg::Table(f, n) => {
                    if !self.pending.iter().any(|(pf, pn)| *pf == f && *pn == n) {
                        self.pending.push((f, n));
                    }
                }
                Msg::NewGen(gen) => {
                    if !self.pending.is_empty() {
                        out.push(Change {
                            gen: Some(gen),
                            tables: std::mem::take(&mut self.pending),
                        });
                    }
                }
            }
        }
        out
    }
}

/// A socket subscribed to nftables change events, in the network namespace
/// of the thread that opened it.
pub struct Watch {
    sock: TokioSocket,
    decoder: Decoder,
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
        let _ = sock.socket_mut().set_rx_buf_sz(4 << 20);
        Ok(Watch {
            sock,
            decoder: Decoder::default(),
        })
    }

    /// The transactions completed by the next datagram of events (often
    /// none: a transaction may span datagrams).
    pub async fn next(&mut self) -> io::Result<Vec<Change>> {
        match self.sock.recv_from_full().await {
            Ok((buf, _)) => Ok(self.decoder.feed(&buf)),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                self.decoder.pending.clear();
                Ok(vec![Change {
                    gen: None,
                    tables: Vec::new(),
                }])
            }
            Err(e) => Err(e),
        }
    }
}

/// Spawns a task that calls `notify(gen)` when transactions touched a
/// table `ours` accepts, once per burst with the latest generation among
/// them (`None`: events were lost). `None` when the events cannot be had
/// (the caller's periodic check still catches deletions).
pub fn spawn_checker(
    ours: impl Fn(Family, &str) -> bool + Send + 'static,
    notify: impl Fn(Option<u32>) + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut w = match Watch::open() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "no nftables change events: tables are checked periodically only");
            return None;
        }
    };
    // The latest generation of the changes that touched ours (Some(None):
    // events were lost).
    let hit = move |changes: &[Change], acc: &mut Option<Option<u32>>| {
        for c in changes {
            if c.gen.is_some() && !c.tables.iter().any(|(f, n)| ours(*f, n)) {
                continue;
            }
            *acc = Some(match (*acc, c.gen) {
                (Some(None), _) | (_, None) => None,
                (Some(Some(a)), Some(b)) => Some(a.max(b)),
                (None, Some(b)) => Some(b),
            });
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let mut acc = None;
            match w.next().await {
                Ok(changes) => hit(&changes, &mut acc),
                Err(e) => {
                    tracing::warn!(error = %e, "nftables event socket failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            }
            if acc.is_none() {
                continue;
            }
            while let Ok(Ok(changes)) = tokio::time::timeout(SETTLE, w.next()).await {
                hit(&changes, &mut acc);
            }
            if let Some(gen) = acc {
                notify(gen);
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

/// The Linux NFPROTO_* number of `f`.
fn nfproto(f: Family) -> u8 {
    match f {
        Family::Inet => 1,
        Family::Ip => 2,
        Family::Arp => 3,
        Family::Netdev => 5,
        Family::Bridge => 7,
        Family::Ip6 => 10,
    }
}

/// One decoded event message of interest.
enum Msg {
    /// A message naming a table.
    Table(Family, String),
    /// NEWGEN: the end of a transaction, with its generation.
    NewGen(u32),
}

fn c_string(d: &[u8]) -> String {
    let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
    String::from_utf8_lossy(&d[..end]).into_owned()
}

/// Splits a datagram into (type, whole message); malformed ones end the
/// walk (they cannot come from the kernel; nothing panics on them).
fn split(buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(hdr) = buf.get(off..off + NLMSG_HDRLEN) {
        let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let kind = u16::from_ne_bytes([hdr[4], hdr[5]]);
        let seq = u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        let Some(msg) = buf.get(off..off + len).filter(|_| len >= NLMSG_HDRLEN) else {
            break;
        };
        out.push((kind, seq, msg));
        off += len.next_multiple_of(4);
    }
    out
}

/// The event messages of one datagram.
fn messages(buf: &[u8]) -> Vec<Msg> {
    let mut out = Vec::new();
    for (kind, _, msg) in split(buf) {
        if kind >> 8 != SUBSYS_NFTABLES {
            continue;
        }
        let attrs = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..).unwrap_or(&[]);
        if kind & 0xff == MSG_NEWGEN {
            if let Some(d) = attr(attrs, 1).and_then(|d| d.get(..4)) {
                out.push(Msg::NewGen(u32::from_be_bytes([d[0], d[1], d[2], d[3]])));
            }
            continue;
        }
        let Some(family) = msg.get(NLMSG_HDRLEN).copied().and_then(family_of) else {
            continue;
        };
        if let Some(name) = attr(attrs, 1).map(c_string) {
            out.push(Msg::Table(family, name));
        }
    }
    out
}

/// The payload of attribute `want`.
fn attr(mut attrs: &[u8], want: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let atype = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        let data = attrs.get(4..alen)?;
        if atype == want {
            return Some(data);
        }
        attrs = attrs.get(alen.next_multiple_of(4)..).unwrap_or(&[]);
    }
    None
}

/// The request message: nlmsghdr, nfgenmsg, attributes.
fn request(msg: u16, flags: u16, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&((SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, NFNETLINK_V0, resource id 0 (big endian).
    req.extend_from_slice(&[family, 0, 0, 0]);
    req.extend_from_slice(attrs);
    req
}

/// A string attribute.
fn str_attr(kind: u16, v: &str) -> Vec<u8> {
    let alen = 4 + v.len() + 1;
    let mut a = Vec::with_capacity(alen.next_multiple_of(4));
    a.extend_from_slice(&(alen as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(v.as_bytes());
    a.push(0);
    a.resize(alen.next_multiple_of(4), 0);
    a
}

/// Sends one nftables GET request and collects the answers of message
/// type `want`: the one object of a GET, every object of a dump. ENOENT is
/// no answer.
async fn get(req: Vec<u8>, dump: bool, want: u16) -> io::Result<Vec<Vec<u8>>> {
    let mut sock = TokioSocket::new(NETLINK_NETFILTER)?;
    sock.socket_mut().bind_auto()?;
    let _ = sock.socket_mut().set_rx_buf_sz(4 << 20);
    sock.send_to(&req, &SocketAddr::new(0, 0)).await?;
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut out = Vec::new();
    loop {
        let (buf, _) = tokio::time::timeout_at(deadline, sock.recv_from_full())
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        for (kind, seq, m) in split(&buf) {
            if seq != 1 {
                continue;
            }
            match kind {
                NLMSG_ERROR => {
                    let code = m
                        .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                        .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                    return match -code {
                        0 => Ok(out),
                        e if e == nix::libc::ENOENT => Ok(out),
                        e => Err(io::Error::from_raw_os_error(e)),
                    };
                }
                NLMSG_DONE => return Ok(out),
                k if k == (SUBSYS_NFTABLES << 8) | want => {
                    out.push(m.to_vec());
                    if !dump {
                        return Ok(out);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The ruleset's current generation (NFT_MSG_GETGEN): read right after a
/// transaction, it is that transaction's or a later one's.
pub async fn generation() -> io::Result<u32> {
    let m = get(request(MSG_GETGEN, 0, 0, &[]), false, MSG_NEWGEN)
        .await?
        .pop()
        .ok_or_else(|| io::Error::other("no generation in the answer"))?;
    attr(m.get(NLMSG_HDRLEN + NFGENMSG_LEN..).unwrap_or(&[]), 1)
        .and_then(|d| d.get(..4))
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
        .ok_or_else(|| io::Error::other("no generation in the answer"))
}

/// Whether table `name` of `family` exists (NFT_MSG_GETTABLE): a cheap
/// presence check, where `nft list tables` reads the whole ruleset.
pub async fn table_exists(family: Family, name: &str) -> io::Result<bool> {
    let req = request(MSG_GETTABLE, 0, nfproto(family), &str_attr(1, name));
    Ok(!get(req, false, 0).await?.is_empty())
}

/// One rule as [`rules`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHandle {
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
}

/// The rules of a table, in order, with their handles and comments
/// (NFT_MSG_GETRULE dump filtered by table; the expressions are not
/// decoded). Empty when the table does not exist.
pub async fn rules(family: Family, table: &str) -> io::Result<Vec<RuleHandle>> {
    let req = request(
        MSG_GETRULE,
        NLM_F_DUMP,
        nfproto(family),
        &str_attr(1, table),
    );
    let msgs = get(req, true, MSG_NEWRULE).await?;
    Ok(msgs.iter().filter_map(|m| parse_rule(m, table)).collect())
}

/// NFTA_RULE_TABLE 1, CHAIN 2, HANDLE 3, USERDATA 7; the comment is the
/// userdata's NFTNL_UDATA_RULE_COMMENT (type 0) TLV.
fn parse_rule(m: &[u8], table: &str) -> Option<RuleHandle> {
    let attrs = m.get(NLMSG_HDRLEN + NFGENMSG_LEN..)?;
    if attr(attrs, 1).map(c_string).as_deref() != Some(table) {
        return None;
    }
    let chain = attr(attrs, 2).map(c_string)?;
    let h = attr(attrs, 3)?.get(..8)?;
    let handle = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    let mut comment = None;
    let mut ud = attr(attrs, 7).unwrap_or(&[]);
    while let [kind, len, rest @ ..] = ud {
        let len = usize::from(*len);
        let v = rest.get(..len)?;
        if *kind == 0 {
            comment = Some(c_string(v));
        }
        ud = &rest[len..];
    }
    Some(RuleHandle {
        chain,
        handle,
        comment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One nfnetlink message: header, nfgenmsg, one string attribute of
    /// type `attr`.
    fn msg(kind: u16, family: u8, attr: u16, name: &str) -> Vec<u8> {
        let a = str_attr(attr, name);
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + a.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend_from_slice(&a);
        m
    }

    fn newgen(gen: u32) -> Vec<u8> {
        let mut m = Vec::new();
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + 8;
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&((SUBSYS_NFTABLES << 8) | MSG_NEWGEN).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&1u16.to_ne_bytes());
        m.extend_from_slice(&gen.to_be_bytes());
        m
    }

    #[test]
    fn a_transaction_is_its_tables_and_its_generation() {
        let deltable = (SUBSYS_NFTABLES << 8) | 2;
        let delrule = (SUBSYS_NFTABLES << 8) | 8;
        let first = [
            msg(delrule, 1, 1, "hagw"),
            msg(deltable, 1, 1, "hagw"),
            msg(deltable, 5, 1, "hagw_hide_eth1"),
        ]
        .concat();
        // The transaction spans two datagrams; NEWGEN ends it.
        let second = [
            msg(deltable, 2, 1, "nat"),
            newgen(42),
            msg(deltable, 1, 2, "attr2"),
        ]
        .concat();
        let mut d = Decoder::default();
        assert!(d.feed(&first).is_empty());
        assert_eq!(
            d.feed(&second),
            vec![Change {
                gen: Some(42),
                tables: vec![
                    (Family::Inet, "hagw".to_string()),
                    (Family::Netdev, "hagw_hide_eth1".to_string()),
                    (Family::Ip, "nat".to_string()),
                ]
            }]
        );
    }

    #[test]
    fn a_rule_dump_message_gives_chain_handle_and_comment() {
        let mut attrs = [str_attr(1, "hagw"), str_attr(2, "prerouting")].concat();
        attrs.extend_from_slice(&12u16.to_ne_bytes());
        attrs.extend_from_slice(&3u16.to_ne_bytes());
        attrs.extend_from_slice(&77u64.to_be_bytes());
        let ud = [&[0u8, 15][..], b"nat.forward[1]\0", &[1, 2, 9, 9]].concat();
        let alen = 4 + ud.len();
        attrs.extend_from_slice(&(alen as u16).to_ne_bytes());
        attrs.extend_from_slice(&7u16.to_ne_bytes());
        attrs.extend_from_slice(&ud);
        attrs.resize(attrs.len().next_multiple_of(4), 0);
        let m = [vec![0u8; NLMSG_HDRLEN], vec![1, 0, 0, 0], attrs].concat();
        assert_eq!(
            parse_rule(&m, "hagw"),
            Some(RuleHandle {
                chain: "prerouting".into(),
                handle: 77,
                comment: Some("nat.forward[1]".into())
            })
        );
        assert_eq!(parse_rule(&m, "other"), None);
    }

    #[test]
    fn garbage_is_not_panicked_on() {
        for buf in [
            &[0u8; 3][..],
            &[255; 40],
            &[16, 0, 0, 0, 2, 10],
            &[0; 16],
            &[20, 0, 0, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            &[
                24, 0, 0, 0, 15, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 1, 0,
            ],
        ] {
            let _ = messages(buf);
            let _ = parse_rule(buf, "hagw");
        }
    }
}
