//! The BFD Control packet (RFC 5880 §4.1).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |
//! |                   Required Min RX Interval                    |
//! |                 Required Min Echo RX Interval                 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Auth Type   |   Auth Len    |    Authentication Data...     |
//! ```
//!
//! [`ControlPacket::decode`] applies every reception check of RFC 5880 §6.8.6
//! that needs no session state. Authentication is not supported: a packet
//! with the A bit is checked for a sane authentication section and then
//! rejected with [`DecodeError::AuthUnsupported`] (hagw never configures
//! authentication, so §6.8.6 says such packets are discarded).

use thiserror::Error;

/// The only version defined (RFC 5880 §4.1).
pub const VERSION: u8 = 1;
/// Length of a Control packet without authentication; what we send.
pub const LEN: usize = 24;
/// Minimum Length with the A bit set (header plus Auth Type and Auth Len).
pub const MIN_LEN_AUTH: usize = 26;

const BIT_P: u8 = 0x20;
const BIT_F: u8 = 0x10;
const BIT_C: u8 = 0x08;
const BIT_A: u8 = 0x04;
const BIT_D: u8 = 0x02;
const BIT_M: u8 = 0x01;

/// Session state (RFC 5880 §4.1 "Sta", §6.2), also the watched state the
/// daemon hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    pub fn from_bits(v: u8) -> State {
        match v & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Diagnostic code (RFC 5880 §4.1), 5 bits; unassigned values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Diag(u8);

impl Diag {
    pub const NONE: Diag = Diag(0);
    pub const CONTROL_DETECTION_TIME_EXPIRED: Diag = Diag(1);
    pub const ECHO_FAILED: Diag = Diag(2);
    pub const NEIGHBOR_SIGNALED_DOWN: Diag = Diag(3);
    pub const FORWARDING_PLANE_RESET: Diag = Diag(4);
    pub const PATH_DOWN: Diag = Diag(5);
    pub const CONCATENATED_PATH_DOWN: Diag = Diag(6);
    pub const ADMINISTRATIVELY_DOWN: Diag = Diag(7);
    pub const REVERSE_CONCATENATED_PATH_DOWN: Diag = Diag(8);

    /// The low 5 bits of `v`.
    pub fn new(v: u8) -> Diag {
        Diag(v & 0x1f)
    }

    pub fn code(self) -> u8 {
        self.0
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "No Diagnostic",
            1 => "Control Detection Time Expired",
            2 => "Echo Function Failed",
            3 => "Neighbor Signaled Session Down",
            4 => "Forwarding Plane Reset",
            5 => "Path Down",
            6 => "Concatenated Path Down",
            7 => "Administratively Down",
            8 => "Reverse Concatenated Path Down",
            _ => "Reserved",
        }
    }
}

impl std::fmt::Display for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// A decoded (or to-be-encoded) Control packet without authentication.
/// Intervals are in microseconds, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ControlPacket {
    pub diag: Diag,
    pub state: State,
    /// P: Poll.
    pub poll: bool,
    /// F: Final.
    pub final_: bool,
    /// C: Control Plane Independent.
    pub cpi: bool,
    /// D: Demand (never set by us; accepted and ignored).
    pub demand: bool,
    pub detect_mult: u8,
    pub my_disc: u32,
    pub your_disc: u32,
    pub desired_min_tx_us: u32,
    pub required_min_rx_us: u32,
    pub required_min_echo_rx_us: u32,
}

/// Why a received packet was discarded by the codec (RFC 5880 §6.8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("packet of {0} bytes is shorter than the 24-byte header")]
    Truncated(usize),
    #[error("version {0} is not 1")]
    BadVersion(u8),
    #[error("Length field {length} is below the minimum {min}")]
    LengthTooSmall { length: u8, min: usize },
    #[error("Length field {length} exceeds the {payload}-byte UDP payload")]
    LengthExceedsPayload { length: u8, payload: usize },
    #[error("Detect Mult is zero")]
    ZeroDetectMult,
    #[error("Multipoint (M) bit is set")]
    Multipoint,
    #[error("My Discriminator is zero")]
    ZeroMyDiscriminator,
    #[error("Your Discriminator is zero in state {0}")]
    ZeroYourDiscriminator(State),
    #[error("authentication section malformed (Auth Len {auth_len}, Length {length})")]
    AuthMalformed { auth_len: u8, length: u8 },
    #[error("authentication (type {0}) is not supported")]
    AuthUnsupported(u8),
}

impl DecodeError {
    /// Authentication-related: counted apart from other malformed packets.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            DecodeError::AuthMalformed { .. } | DecodeError::AuthUnsupported(_)
        )
    }
}

fn be32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        w.copy_from_slice(s);
    }
    u32::from_be_bytes(w)
}

impl ControlPacket {
    /// Decodes the UDP payload `buf`, applying the RFC 5880 §6.8.6 checks:
    /// version 1; Length at least 24 (26 with the A bit) and no more than
    /// the payload; Detect Mult nonzero; M bit clear; My Discriminator
    /// nonzero; Your Discriminator zero only in Down or AdminDown. Bytes past
    /// Length are ignored.
    pub fn decode(buf: &[u8]) -> Result<ControlPacket, DecodeError> {
        let Some(h) = buf.get(..LEN) else {
            return Err(DecodeError::Truncated(buf.len()));
        };
        let version = h[0] >> 5;
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let flags = h[1];
        let auth = flags & BIT_A != 0;
        let length = h[3];
        let min = if auth { MIN_LEN_AUTH } else { LEN };
        if usize::from(length) < min {
            return Err(DecodeError::LengthTooSmall { length, min });
        }
        if usize::from(length) > buf.len() {
            return Err(DecodeError::LengthExceedsPayload {
                length,
                payload: buf.len(),
            });
        }
        let detect_mult = h[2];
        if detect_mult == 0 {
            return Err(DecodeError::ZeroDetectMult);
        }
        if flags & BIT_M != 0 {
            return Err(DecodeError::Multipoint);
        }
        let state = State::from_bits(flags >> 6);
        let my_disc = be32(h, 4);
        let your_disc = be32(h, 8);
        if my_disc == 0 {
            return Err(DecodeError::ZeroMyDiscriminator);
        }
        if your_disc == 0 && !matches!(state, State::Down | State::AdminDown) {
            return Err(DecodeError::ZeroYourDiscriminator(state));
        }
        if auth {
            // Auth Type and Auth Len exist (length >= 26 <= payload).
            let auth_type = buf.get(LEN).copied().unwrap_or(0);
            let auth_len = buf.get(LEN + 1).copied().unwrap_or(0);
            // The section holds at least its own two header bytes and ends
            // exactly at Length (RFC 5880 §4.1: Length covers it).
            if auth_len < 2 || LEN + usize::from(auth_len) != usize::from(length) {
                return Err(DecodeError::AuthMalformed { auth_len, length });
            }
            return Err(DecodeError::AuthUnsupported(auth_type));
        }
        Ok(ControlPacket {
            diag: Diag::new(h[0]),
            state,
            poll: flags & BIT_P != 0,
            final_: flags & BIT_F != 0,
            cpi: flags & BIT_C != 0,
            demand: flags & BIT_D != 0,
            detect_mult,
            my_disc,
            your_disc,
            desired_min_tx_us: be32(h, 12),
            required_min_rx_us: be32(h, 16),
            required_min_echo_rx_us: be32(h, 20),
        })
    }

    /// The 24-byte wire form (no authentication, M and A clear).
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (VERSION << 5) | self.diag.code();
        let mut flags = (self.state as u8) << 6;
        for (set, bit) in [
            (self.poll, BIT_P),
            (self.final_, BIT_F),
            (self.cpi, BIT_C),
            (self.demand, BIT_D),
        ] {
            if set {
                flags |= bit;
            }
        }
        b[1] = flags;
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        for (i, v) in [
            self.my_disc,
            self.your_disc,
            self.desired_min_tx_us,
            self.required_min_rx_us,
            self.required_min_echo_rx_us,
        ]
        .into_iter()
        .enumerate()
        {
            b[4 + 4 * i..8 + 4 * i].copy_from_slice(&v.to_be_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlPacket {
        ControlPacket {
            diag: Diag::NEIGHBOR_SIGNALED_DOWN,
            state: State::Up,
            poll: true,
            final_: false,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_disc: 0x1122_3344,
            your_disc: 0x5566_7788,
            desired_min_tx_us: 50_000,
            required_min_rx_us: 10_000,
            required_min_echo_rx_us: 0,
        }
    }

    #[test]
    fn encodes_the_rfc_layout() {
        let b = sample().encode();
        assert_eq!(
            b,
            [
                0x23, 0xe0, 3, 24, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0, 0, 0xc3,
                0x50, 0, 0, 0x27, 0x10, 0, 0, 0, 0
            ]
        );
        assert_eq!(ControlPacket::decode(&b), Ok(sample()));
    }

    #[test]
    fn round_trips_every_state_and_flag() {
        for st in [State::AdminDown, State::Down, State::Init, State::Up] {
            for bits in 0..16u8 {
                let p = ControlPacket {
                    state: st,
                    poll: bits & 1 != 0,
                    final_: bits & 2 != 0,
                    cpi: bits & 4 != 0,
                    demand: bits & 8 != 0,
                    diag: Diag::new(bits + 9),
                    ..sample()
                };
                assert_eq!(ControlPacket::decode(&p.encode()), Ok(p));
            }
        }
    }

    #[test]
    fn trailing_bytes_past_length_are_ignored() {
        let mut v = sample().encode().to_vec();
        v.extend_from_slice(&[0xde, 0xad]);
        assert_eq!(ControlPacket::decode(&v), Ok(sample()));
    }

    fn with(f: impl FnOnce(&mut Vec<u8>)) -> Result<ControlPacket, DecodeError> {
        let mut v = sample().encode().to_vec();
        f(&mut v);
        ControlPacket::decode(&v)
    }

    #[test]
    fn reception_checks_reject_with_the_reason() {
        assert_eq!(
            ControlPacket::decode(&[0x20; 23]),
            Err(DecodeError::Truncated(23))
        );
        assert_eq!(with(|v| v[0] = 0x43), Err(DecodeError::BadVersion(2)));
        assert_eq!(with(|v| v[0] = 0x03), Err(DecodeError::BadVersion(0)));
        assert_eq!(
            with(|v| v[3] = 23),
            Err(DecodeError::LengthTooSmall {
                length: 23,
                min: 24
            })
        );
        assert_eq!(
            with(|v| v[3] = 30),
            Err(DecodeError::LengthExceedsPayload {
                length: 30,
                payload: 24
            })
        );
        assert_eq!(with(|v| v[2] = 0), Err(DecodeError::ZeroDetectMult));
        assert_eq!(with(|v| v[1] |= BIT_M), Err(DecodeError::Multipoint));
        assert_eq!(
            with(|v| v[4..8].fill(0)),
            Err(DecodeError::ZeroMyDiscriminator)
        );
        assert_eq!(
            with(|v| v[8..12].fill(0)),
            Err(DecodeError::ZeroYourDiscriminator(State::Up))
        );
        assert_eq!(
            with(|v| {
                v[8..12].fill(0);
                v[1] = (v[1] & 0x3f) | ((State::Init as u8) << 6);
            }),
            Err(DecodeError::ZeroYourDiscriminator(State::Init))
        );
        // Your Discriminator 0 is fine in Down and AdminDown.
        for st in [State::Down, State::AdminDown] {
            let p = with(|v| {
                v[8..12].fill(0);
                v[1] = (v[1] & 0x3f) | ((st as u8) << 6);
            });
            assert_eq!(p.map(|p| (p.state, p.your_disc)), Ok((st, 0)));
        }
    }

    #[test]
    fn authenticated_packets_are_sanity_checked_then_refused() {
        // A bit, Length 24: below the 26 an auth section needs.
        assert_eq!(
            with(|v| v[1] |= BIT_A),
            Err(DecodeError::LengthTooSmall {
                length: 24,
                min: 26
            })
        );
        // Simple password auth (type 1), Auth Len 7 = 3 + 4-byte password.
        let good = with(|v| {
            v[1] |= BIT_A;
            v[3] = 31;
            v.extend_from_slice(&[1, 7, 1, b'p', b'w', b'd', b'x']);
        });
        assert_eq!(good, Err(DecodeError::AuthUnsupported(1)));
        assert!(good.err().is_some_and(|e| e.is_auth()));
        // Auth Len disagreeing with Length.
        assert_eq!(
            with(|v| {
                v[1] |= BIT_A;
                v[3] = 26;
                v.extend_from_slice(&[1, 7]);
            }),
            Err(DecodeError::AuthMalformed {
                auth_len: 7,
                length: 26
            })
        );
        assert_eq!(
            with(|v| {
                v[1] |= BIT_A;
                v[3] = 26;
                v.extend_from_slice(&[1, 0]);
            }),
            Err(DecodeError::AuthMalformed {
                auth_len: 0,
                length: 26
            })
        );
    }

    #[test]
    fn never_panics_on_short_or_odd_input() {
        for len in 0..40 {
            for fill in [0u8, 0x20, 0xff] {
                let _ = ControlPacket::decode(&vec![fill; len]);
            }
        }
    }
}
