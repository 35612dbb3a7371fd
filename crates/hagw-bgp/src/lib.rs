//! Sans-IO BGP-4.

pub mod packet;
