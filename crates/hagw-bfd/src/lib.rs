//! Sans-IO BFD for hagw: RFC 5880 asynchronous mode over RFC 5881 single hop.
//!
//! * [`packet`]: the BFD Control packet codec, with every RFC 5880 §6.8.6
//!   reception check that needs no session state.
//! * [`session`]: one session's state machine (RFC 5880 §6.8): packets and
//!   `now` go in; packets to send, state changes and the next timer deadline
//!   come out.
//! * [`demux`]: every session of a speaker, by peer: the TTL check (RFC 5881
//!   §5), demultiplexing by Your Discriminator or source address (RFC 5881
//!   §3), drop counters, discriminator allocation, timers across sessions and
//!   the AdminDown repeats of removed sessions.
//!
//! Nothing here touches a socket, the clock or a random source: the driver
//! owns them (sockets and ports live there; discriminators and jitter come
//! from a seed the driver supplies).

pub mod demux;
pub mod packet;
pub mod session;

pub use demux::Demux;
pub use packet::{ControlPacket, DecodeError, Diag, State};
pub use session::{Output, Session, SessionConfig, SessionError};

/// UDP destination port of single-hop BFD Control packets (RFC 5881 §4).
pub const CONTROL_PORT: u16 = 3784;
/// RFC 5881 §4: the source port range of BFD Control packets.
pub const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// RFC 5881 §5: TTL / hop limit sent, and required on receipt.
pub const TTL: u8 = 255;
