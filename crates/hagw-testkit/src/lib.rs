//! Namespace test harness.
