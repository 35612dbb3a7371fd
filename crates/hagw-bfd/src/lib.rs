//! Sans-IO BFD for hagw: RFC 5880 asynchronous mode over RFC 5881 single hop.
//!
//! * [`packet`]: the BFD Control packet codec, with every RFC 5880 §6.8.6
//!   reception check that needs no session state.
//! * [`session`]: one session's state machine (RFC 5880 §6.8): packets and
//!   `now` go in; packets to send, state changes and the next timer deadline
//!   come out.
//!
//! Nothing here touches a socket, the clock or a random source: the driver
//! owns them (RFC 5881 TTL checks, ports and demultiplexing live there, and
//! jitter comes from a seed the driver supplies).

pub mod packet;
pub mod session;

pub use packet::{ControlPacket, DecodeError, Diag, State};
pub use session::{Output, Session, SessionConfig, SessionError};

/// UDP destination port of single-hop BFD Control packets (RFC 5881 §4).
pub const CONTROL_PORT: u16 = 3784;
/// RFC 5881 §4: the source port range of BFD Control packets.
pub const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// RFC 5881 §5: TTL / hop limit sent, and required on receipt.
pub const TTL: u8 = 255;
