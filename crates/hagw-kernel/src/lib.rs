//! Kernel southbound.
