//! The netlink layer every feature uses: one socket type, one set of message
//! builders and parsers per object (routes, rules, addresses, links and
//! bridges, neighbours), the event decoder and a dump of the whole system.
//!
//! * [`route`] — routes read and written ([`Nexthop`], [`KernelRoute`],
//!   [`DevRoute`]); [`rule`] — policy rules matching `from`, `fwmark` and
//!   `iif` ([`Rule`]); [`addr`] — interface addresses; [`link`] — links,
//!   bridges; [`neigh`] — neighbour entries; [`events`] — multicast events;
//!   [`view`] — links, addresses, routes and rules dumped at once.
//!
//! # One socket, many requests per `sendmsg`
//!
//! Messages are built with `rtnetlink`'s [`RouteMessageBuilder`] and
//! serialized with `netlink-packet-route`; they travel over a
//! `netlink-sys` socket that this module drives itself, because installing
//! 100k routes quickly needs something `rtnetlink::Handle` does not do:
//! **many requests per `sendmsg`**. [`NlSocket::batch`] packs up to
//! [`CHUNK_BYTES`] of requests into one datagram, asks for an ACK only on the
//! last one (the kernel always answers errors), and matches the answers to the
//! requests by sequence number. The kernel processes the whole datagram inside
//! one `sendmsg`, so this costs one syscall per few hundred routes instead of
//! two per route (`ip -batch`). A caller with many routes fills one [`Chunk`]
//! at a time ([`Chunk::push_route`] writes the bytes directly, no message
//! objects) and sends it with [`NlSocket::send_chunk`], so that what a burst
//! holds in memory is one datagram, not every request of the burst. Dumps are
//! read a datagram at a time ([`NlSocket::dump_start`], [`NlSocket::dump_next`])
//! for the same reason: 100k routes must not be decoded into one vector.
//!
//! # Our own echoes
//!
//! Every route the kernel adds or deletes is also announced to the event
//! sockets, ours included: a burst of 100k installs echoes back as 100k
//! notifications, which would overrun the event socket and cost a resync.
//! [`NlSocket::drop_echoes_of`] attaches a socket filter that drops, in the
//! kernel, the notifications a given request socket caused (their
//! `nlmsg_pid` is its port id).
//!
//! # Multipath: RTA_MULTIPATH routes, not nexthop objects
//!
//! `netlink-packet-route` 0.34 has no `RTM_NEWNEXTHOP` / nexthop-object
//! messages, so multipath routes are written as one route carrying an
//! `RTA_MULTIPATH` attribute. A change of next-hop set is one
//! `NLM_F_REPLACE` of that route: the kernel swaps the route atomically
//! (IPv4 swaps the `fib_info`; IPv6 replaces the sibling list), so there is
//! never a moment without the route. hagw therefore never creates nexthop
//! objects, and there are none of its own to clean up after a crash.

use std::{io, net::IpAddr, time::Duration};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    route::{RouteAddress, RouteMessage},
    rule::RuleMessage,
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};

use crate::KernelError;

pub mod addr;
pub mod events;
pub mod link;
pub mod neigh;
pub mod route;
pub mod rule;
pub mod view;

pub use route::{
    build_delete, build_delete_exact, build_route, parse_route, DevRoute, KernelRoute, Nexthop,
};
pub use rule::{build_rule, parse_rule, KernelRule, Rule};

/// Bytes of requests packed into one `sendmsg` (well under the default
/// netlink `sk_sndbuf`).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// How long to wait for the kernel's answers to one datagram of requests.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive buffer asked for (SO_RCVBUFFORCE as root, else SO_RCVBUF).
const RCVBUF: usize = 16 << 20;

/// Legacy multicast group bits for `bind` (RTMGRP_*).
pub const RTMGRP_LINK: u32 = 0x1;
pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;
pub const RTMGRP_IPV4_ROUTE: u32 = 0x40;
pub const RTMGRP_IPV6_IFADDR: u32 = 0x100;
pub const RTMGRP_IPV6_ROUTE: u32 = 0x400;
/// RTNLGRP_NEIGH (3).
pub const RTMGRP_NEIGH: u32 = 0x4;
/// RTNLGRP_IPV4_RULE (8).
pub const RTMGRP_IPV4_RULE: u32 = 1 << 7;
/// RTNLGRP_IPV6_RULE (19).
pub const RTMGRP_IPV6_RULE: u32 = 1 << 18;

/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;

/// An error answered by the kernel to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlError {
    /// Positive errno.
    pub errno: i32,
    /// The extended ACK message, if the kernel gave one.
    pub msg: Option<String>,
}

impl NlError {
    pub fn new(errno: i32, msg: Option<String>) -> Self {
        NlError { errno, msg }
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = io::Error::from_raw_os_error(self.errno);
        match &self.msg {
            Some(m) => write!(f, "{m}: {e}"),
            None => write!(f, "{e}"),
        }
    }
}

/// One request of a batch.
#[derive(Debug)]
pub struct Request {
    pub msg: RouteNetlinkMessage,
    /// `NLM_F_*` flags besides `NLM_F_REQUEST` (added) and `NLM_F_ACK`
    /// (managed by [`NlSocket::batch`]).
    pub flags: u16,
}

/// One decoded netlink message of a datagram.
#[derive(Debug)]
pub enum Parsed {
    Msg {
        seq: u32,
        msg: RouteNetlinkMessage,
    },
    /// NLMSG_ERROR: `err` is `None` for an ACK.
    Ack {
        seq: u32,
        err: Option<NlError>,
    },
    Done {
        seq: u32,
    },
    /// Something else (noop, undecodable); ignored.
    Other,
}

/// A rtnetlink socket on the tokio reactor, bound in the network namespace
/// of the thread that opened it.
pub struct NlSocket {
    sock: TokioSocket,
    seq: u32,
    /// Our port id (`nl_pid`): the kernel stamps it on the notifications our
    /// requests cause.
    portid: u32,
    /// The sequence number of the dump in progress ([`NlSocket::dump_next`]).
    dump_seq: Option<u32>,
}

/// Requests serialized into one datagram, filled by the caller and sent by
/// [`NlSocket::send_chunk`] (which numbers them and asks for one ACK).
#[derive(Debug, Default)]
pub struct Chunk {
    buf: Vec<u8>,
    count: usize,
}

impl Chunk {
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds a datagram's worth: send it before pushing more.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= CHUNK_BYTES
    }

    /// Requests in the chunk.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a request (`flags` besides `NLM_F_REQUEST`, added).
    pub fn push(&mut self, msg: RouteNetlinkMessage, flags: u16) {
        serialize(msg, flags | NLM_F_REQUEST, 0, &mut self.buf);
        self.count += 1;
    }

    /// Appends an RTM_NEWROUTE (`nexthops` not empty) or RTM_DELROUTE
    /// (empty) for `prefix`, as [`build_route`] would build it, written
    /// directly.
    #[allow(clippy::too_many_arguments)]
    pub fn push_route(
        &mut self,
        prefix: ipnet::IpNet,
        table: u32,
        protocol: u8,
        metric: u32,
        nexthops: &[Nexthop],
        flags: u16,
    ) {
        route::write_route(
            &mut self.buf,
            prefix,
            table,
            protocol,
            metric,
            nexthops,
            flags | NLM_F_REQUEST,
        );
        self.count += 1;
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }
}

impl NlSocket {
    /// Opens a NETLINK_ROUTE socket subscribed to the `groups` (RTMGRP_* bits;
    /// 0 for a request socket).
    pub fn open(groups: u32) -> Result<Self, KernelError> {
        let err = |op| move |source| KernelError::Socket { op, source };
        let mut sock = TokioSocket::new(NETLINK_ROUTE).map_err(err("socket"))?;
        let s = sock.socket_mut();
        s.bind(&SocketAddr::new(0, groups)).map_err(err("bind"))?;
        // Best effort: extended ACK messages, capped ACKs, large buffer.
        let _ = s.set_ext_ack(true);
        let _ = s.set_cap_ack(true);
        if nix::sys::socket::setsockopt(&*s, nix::sys::socket::sockopt::RcvBufForce, &RCVBUF)
            .is_err()
        {
            let _ = s.set_rx_buf_sz(RCVBUF);
        }
        let mut addr = SocketAddr::new(0, 0);
        s.get_address(&mut addr).map_err(err("getsockname"))?;
        Ok(NlSocket {
            sock,
            seq: 0,
            portid: addr.port_number(),
            dump_seq: None,
        })
    }

    /// Our port id: the `nlmsg_pid` of the notifications our requests cause.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Drops, in the kernel, every message whose `nlmsg_pid` is `portid`: on
    /// an event socket, the notifications the requests of that socket cause
    /// (the kernel builds and queues one per route otherwise; 100k installs
    /// overrun the socket). Notifications carry one message each.
    pub fn drop_echoes_of(&self, portid: u32) -> io::Result<()> {
        use socket2::SockFilter;
        // Classic BPF: A = the u32 at offset 12 (nlmsg_pid; loads are big
        // endian, the field is native), drop (0 bytes) if ours, else keep all.
        const LD_W_ABS: u16 = 0x20;
        const JEQ_K: u16 = 0x15;
        const RET_K: u16 = 0x06;
        let ours = u32::from_be_bytes(portid.to_ne_bytes());
        let prog = [
            SockFilter::new(LD_W_ABS, 0, 0, 12),
            SockFilter::new(JEQ_K, 0, 1, ours),
            SockFilter::new(RET_K, 0, 0, 0),
            SockFilter::new(RET_K, 0, 0, u32::MAX),
        ];
        socket2::SockRef::from(self.sock.socket_ref()).attach_filter(&prog)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Receives one datagram.
    pub async fn recv_raw(&mut self) -> io::Result<Vec<u8>> {
        self.sock.recv_from_full().await.map(|(buf, _)| buf)
    }

    async fn send_raw(&mut self, buf: &[u8]) -> io::Result<()> {
        let n = self.sock.send_to(buf, &SocketAddr::new(0, 0)).await?;
        if n != buf.len() {
            return Err(io::Error::other(format!(
                "short netlink send {n}/{}",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Sends all requests, many per datagram, and returns one result per
    /// request, in order. A socket failure returns `Err`; results whose
    /// answer was lost (receive-buffer overrun, timeout) come back as
    /// `Err(NlError)` with errno ENOBUFS / ETIMEDOUT so the caller retries.
    pub async fn batch(&mut self, reqs: Vec<Request>) -> io::Result<Vec<Result<(), NlError>>> {
        let mut results = Vec::with_capacity(reqs.len());
        let mut chunk = Chunk::new();
        for req in reqs {
            chunk.push(req.msg, req.flags);
            if chunk.is_full() {
                results.extend(self.send_chunk(&mut chunk).await?);
            }
        }
        if !chunk.is_empty() {
            results.extend(self.send_chunk(&mut chunk).await?);
        }
        Ok(results)
    }

    /// Sends the chunk's requests in one datagram, numbered, with an ACK
    /// asked on the last only (errors are always answered, and answers come
    /// back in order), and returns one result per request, in order; the
    /// chunk is emptied for reuse. Errors as [`NlSocket::batch`].
    pub async fn send_chunk(&mut self, chunk: &mut Chunk) -> io::Result<Vec<Result<(), NlError>>> {
        let count = chunk.count;
        if count == 0 {
            return Ok(Vec::new());
        }
        let first_seq = self.seq.wrapping_add(1);
        let buf = &mut chunk.buf;
        let mut off = 0;
        let mut last_off = 0;
        while off + 16 <= buf.len() {
            let len = ne_u32(buf, off) as usize;
            let seq = self.next_seq();
            buf[off + 8..off + 12].copy_from_slice(&seq.to_ne_bytes());
            last_off = off;
            off += (len.max(16) + 3) & !3;
        }
        let f = ne_u16(buf, last_off + 6) | NLM_F_ACK;
        buf[last_off + 6..last_off + 8].copy_from_slice(&f.to_ne_bytes());
        let last_seq = self.seq;
        let sent = self.send_raw(&chunk.buf).await;
        chunk.clear();
        sent?;

        let mut results: Vec<Option<Result<(), NlError>>> = vec![None; count];
        let lost = loop {
            let dgram = match tokio::time::timeout(ACK_TIMEOUT, self.recv_raw()).await {
                Err(_) => break Some(nix::libc::ETIMEDOUT),
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    break Some(nix::libc::ENOBUFS)
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(d)) => d,
            };
            let mut done = false;
            for p in parse_datagram(&dgram) {
                if let Parsed::Ack { seq, err } = p {
                    let idx = seq.wrapping_sub(first_seq) as usize;
                    if let Some(r) = results.get_mut(idx) {
                        *r = Some(err.map_or(Ok(()), Err));
                    }
                    done |= seq == last_seq;
                }
            }
            if done {
                break None;
            }
        };
        Ok(results
            .into_iter()
            .map(|r| match (r, lost) {
                (Some(r), _) => r,
                // No error answered before the final ACK: success.
                (None, None) => Ok(()),
                (None, Some(errno)) => Err(NlError::new(
                    errno,
                    Some("answer lost, state unknown".into()),
                )),
            })
            .collect())
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&mut self, req: Request) -> io::Result<Result<(), NlError>> {
        Ok(self.batch(vec![req]).await?.pop().unwrap_or(Ok(())))
    }

    /// Dumps all routes of all tables (IPv4 and IPv6).
    pub async fn dump_routes(&mut self) -> io::Result<Vec<RouteMessage>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Unspec;
        self.dump_picked(RouteNetlinkMessage::GetRoute(req), |m| match m {
            RouteNetlinkMessage::NewRoute(m) => Some(m),
            _ => None,
        })
        .await
    }

    /// Dumps all policy routing rules (IPv4 and IPv6).
    pub async fn dump_rules(&mut self) -> io::Result<Vec<RuleMessage>> {
        let mut req = RuleMessage::default();
        req.header.family = AddressFamily::Unspec;
        self.dump_picked(RouteNetlinkMessage::GetRule(req), |m| match m {
            RouteNetlinkMessage::NewRule(m) => Some(m),
            _ => None,
        })
        .await
    }

    /// Sends a dump request and collects the answers `pick` keeps.
    async fn dump_picked<T>(
        &mut self,
        req: RouteNetlinkMessage,
        pick: impl Fn(RouteNetlinkMessage) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        self.dump_start(req).await?;
        let mut out = Vec::new();
        while let Some(msgs) = self.dump_next().await? {
            out.extend(msgs.into_iter().filter_map(&pick));
        }
        Ok(out)
    }

    /// Starts a dump whose answers [`NlSocket::dump_next`] reads, a datagram
    /// at a time. No other request may use the socket until it is over.
    pub async fn dump_start(&mut self, req: RouteNetlinkMessage) -> io::Result<()> {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        serialize(req, NLM_F_REQUEST | NLM_F_DUMP, seq, &mut buf);
        self.dump_seq = Some(seq);
        if let Err(e) = self.send_raw(&buf).await {
            self.dump_seq = None;
            return Err(e);
        }
        Ok(())
    }

    /// The messages of the dump's next datagram; None once it is over.
    pub async fn dump_next(&mut self) -> io::Result<Option<Vec<RouteNetlinkMessage>>> {
        let Some(seq) = self.dump_seq else {
            return Ok(None);
        };
        // Any error ends the dump: the caller starts again (a resync).
        self.dump_seq = None;
        let dgram = tokio::time::timeout(ACK_TIMEOUT, self.recv_raw())
            .await
            .map_err(|_| io::Error::from_raw_os_error(nix::libc::ETIMEDOUT))??;
        let mut out = Vec::new();
        for p in parse_datagram(&dgram) {
            match p {
                Parsed::Msg { seq: s, msg } if s == seq => out.push(msg),
                // Over: this datagram's messages are the last.
                Parsed::Done { seq: s } if s == seq => return Ok(Some(out)),
                Parsed::Ack {
                    seq: s,
                    err: Some(e),
                } if s == seq => return Err(io::Error::from_raw_os_error(e.errno)),
                _ => {}
            }
        }
        self.dump_seq = Some(seq);
        Ok(Some(out))
    }
}

impl NlSocket {
    /// Dumps with `req` (RTM_GETLINK, RTM_GETADDR, RTM_GETRULE...) and returns
    /// every message answered, undecoded by kind.
    pub async fn dump(&mut self, req: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.dump_picked(req, Some).await
    }
}

/// Appends one serialized netlink message to `out`.
pub fn serialize(msg: RouteNetlinkMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let start = out.len();
    out.resize(start + nl.buffer_len(), 0);
    nl.serialize(&mut out[start..]);
}

fn ne_u16(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn ne_u32(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Splits a datagram into netlink messages and decodes them. Errors are
/// decoded by hand to get the extended-ACK message.
pub fn parse_datagram(buf: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = ne_u32(buf, off) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let msg = &buf[off..off + len];
        let kind = ne_u16(msg, 4);
        let flags = ne_u16(msg, 6);
        let seq = ne_u32(msg, 8);
        out.push(match kind {
            NLMSG_ERROR if len >= 20 => {
                let code = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
                if code == 0 {
                    Parsed::Ack { seq, err: None }
                } else {
                    Parsed::Ack {
                        seq,
                        err: Some(NlError::new(-code, extack_msg(msg, flags))),
                    }
                }
            }
            NLMSG_DONE => Parsed::Done { seq },
            _ => match NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) {
                Ok(NetlinkMessage {
                    payload: NetlinkPayload::InnerMessage(m),
                    ..
                }) => Parsed::Msg { seq, msg: m },
                _ => Parsed::Other,
            },
        });
        off += (len + 3) & !3;
    }
    out
}

/// NLMSGERR_ATTR_MSG of an NLMSG_ERROR message, if any.
fn extack_msg(msg: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || msg.len() < 36 {
        return None;
    }
    // nlmsghdr(16) + error(4) + original request (header only when capped).
    let orig_len = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        ne_u32(msg, 20) as usize
    };
    let mut off = 20 + ((orig_len + 3) & !3);
    while off + 4 <= msg.len() {
        let alen = ne_u16(msg, off) as usize;
        let atype = ne_u16(msg, off + 2) & 0x3fff;
        if alen < 4 || off + alen > msg.len() {
            break;
        }
        if atype == 1 {
            let data = &msg[off + 4..off + alen];
            let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
            return Some(String::from_utf8_lossy(&data[..end]).into_owned());
        }
        off += (alen + 3) & !3;
    }
    None
}

/// Index of the interface `name` in the calling thread's network namespace;
/// `Ok(None)` when there is no such interface.
pub fn ifindex(name: &str) -> Result<Option<u32>, KernelError> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(i) => Ok(Some(i)),
        Err(nix::errno::Errno::ENODEV) => Ok(None),
        Err(e) => Err(KernelError::Interface {
            name: name.to_string(),
            source: io::Error::from_raw_os_error(e as i32),
        }),
    }
}

/// The netlink address family of `a`.
pub fn family_of(a: &IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `a` as a route attribute address.
pub fn route_addr(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

/// `table` for an 8-bit header field (RT_TABLE_UNSPEC when it needs the
/// 32-bit attribute).
pub fn table_u8(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(0)
}
