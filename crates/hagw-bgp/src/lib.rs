//! Sans-IO BGP-4 for hagw: the message codec ([`packet`]), the session state
//! machine ([`fsm`]), the small multipath RIB ([`rib`]) and graceful restart
//! beside it ([`graceful_restart`]).
//!
//! Nothing here touches a socket or the clock: bytes, events and `now` go in;
//! messages, actions and timer deadlines come out. The daemon's async drivers are
//! thin glue around these types.

pub mod fsm;
pub mod graceful_restart;
pub mod packet;
pub mod rib;
