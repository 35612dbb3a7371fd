//! Sans-IO BGP-4.
