//! Shared pieces of the namespace scenario tests: hagw started in a namespace,
//! and a raw BGP speaker built on hagw-bgp's codec to poke it with exact bytes.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hagw_bgp::packet::{frame_len, Capability, CodecCtx, Message, Open, AFI_IPV4, SAFI_UNICAST};
use hagw_testkit::{Netns, Proc};

pub const HAGW: &str = env!("CARGO_BIN_EXE_hagw");

/// A hagw daemon running in a namespace.
pub struct Hagw {
    pub proc: Proc,
    pub socket: String,
    ns_name: String,
}

impl Hagw {
    /// Starts `hagw run` with `config` (its [control] socket is added here) and
    /// waits until the control socket answers.
    pub fn start(ns: &Netns, config: &str) -> Hagw {
        Hagw::start_env(ns, config, &[])
    }

    /// [`Hagw::start`] with extra environment variables (cloud credentials).
    pub fn start_env(ns: &Netns, config: &str, env: &[(&str, &str)]) -> Hagw {
        let socket = format!("{}/hagw.sock", ns.dir().display());
        let path = format!("{}/hagw.toml", ns.dir().display());
        let text = format!("{config}\n[control]\nsocket = \"{socket}\"\n");
        std::fs::write(&path, text).expect("write config");
        let proc = ns.spawn_env(HAGW, &["run", "--config", &path, "--log", "debug"], env);
        let h = Hagw {
            proc,
            socket,
            ns_name: ns.name().to_owned(),
        };
        hagw_testkit::wait_until("hagw control socket", Duration::from_secs(10), || {
            assert!(h.proc.is_running(), "hagw exited:\n{}", h.proc.log());
            h.try_status().is_some()
        });
        h
    }

    pub fn try_status(&self) -> Option<serde_json::Value> {
        let out = std::process::Command::new(HAGW)
            .args(["status", "--json", "--socket", &self.socket])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> serde_json::Value {
        self.try_status().unwrap_or_else(|| {
            panic!(
                "no status from hagw in {}:\n{}",
                self.ns_name,
                self.proc.log()
            )
        })
    }

    /// The state of the peer at `addr`, if hagw has one.
    pub fn peer_state(&self, addr: &str) -> Option<String> {
        self.status()["peers"]
            .as_array()?
            .iter()
            .find(|p| p["address"] == addr)
            .and_then(|p| p["state"].as_str().map(str::to_owned))
    }

    pub fn established(&self) -> usize {
        self.status()["peers"].as_array().map_or(0, |a| {
            a.iter().filter(|p| p["state"] == "Established").count()
        })
    }
}

/// A BGP speaker under the test's full control.
pub struct RawPeer {
    pub stream: TcpStream,
    pub ctx: CodecCtx,
    buf: Vec<u8>,
}

impl RawPeer {
    /// Connects from `src` (an address of the calling thread's namespace).
    pub fn connect(src: IpAddr, dst: SocketAddr) -> std::io::Result<RawPeer> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(dst),
            socket2::Type::STREAM,
            None,
        )?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        s.connect_timeout(&dst.into(), Duration::from_secs(3))?;
        let stream: TcpStream = s.into();
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(RawPeer {
            stream,
            ctx: CodecCtx {
                four_octet_as: true,
            },
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, m: &Message) {
        let mut b = BytesMut::new();
        m.encode(&self.ctx, &mut b).expect("encode");
        self.stream.write_all(&b).expect("write");
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.stream.write_all(b).expect("write");
    }

    /// The next message, or None on timeout or EOF.
    pub fn recv(&mut self, timeout: Duration) -> Option<Message> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(n)) = frame_len(&self.buf) {
                let m = Message::decode(&self.buf[..n], &self.ctx).expect("router sent garbage");
                self.buf.drain(..n);
                return Some(m);
            }
            if Instant::now() > end {
                return None;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// OPEN + KEEPALIVE out; the router's OPEN and KEEPALIVE in.
    pub fn establish(&mut self, asn: u32, id: Ipv4Addr) -> Open {
        self.send(&Message::Open(open(asn, id)));
        self.send(&Message::Keepalive);
        let their = match self.recv(Duration::from_secs(5)) {
            Some(Message::Open(o)) => o,
            other => panic!("expected OPEN, got {other:?}"),
        };
        match self.recv(Duration::from_secs(5)) {
            Some(Message::Keepalive) => {}
            other => panic!("expected KEEPALIVE, got {other:?}"),
        }
        their
    }

    /// Reads until an UPDATE carries 0.0.0.0/0; returns its IPv4 next hop.
    pub fn wait_default(&mut self, timeout: Duration) -> Option<Ipv4Addr> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(Message::Update(u)) = self.recv(Duration::from_millis(200)) {
                if u.nlri.iter().any(|p| p.prefix_len() == 0) {
                    return u.attrs.next_hop;
                }
            }
        }
        None
    }
}

pub fn open(asn: u32, id: Ipv4Addr) -> Open {
    Open {
        version: 4,
        asn,
        hold_time: 90,
        bgp_id: id,
        capabilities: vec![
            Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            },
            Capability::RouteRefresh,
            Capability::FourOctetAs(asn),
        ],
    }
}
