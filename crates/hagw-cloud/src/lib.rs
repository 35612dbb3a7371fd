//! What hagw needs from AWS for floating VIPs: the EC2 Query API calls that
//! move a secondary private IP or a route to this gateway's ENI, the
//! IMDSv2 documents that say which ENI and addresses this instance has, and
//! the credentials to sign with.
//!
//! * [`client`] — [`Ec2Client`]: SigV4-signed calls with retries (jittered
//!   exponential backoff on throttling, 5xx and network errors; never on
//!   auth or parameter errors) and one token-bucket rate limit per client;
//!   the failover operations [`Ec2Client::claim_secondary_ip`],
//!   [`Ec2Client::owner_of_private_ip`], [`Ec2Client::replace_route`],
//!   [`Ec2Client::route_target`].
//! * [`ec2`] — request building and response parsing as pure functions.
//! * [`imds`] — [`Imds`], the IMDSv2 client (token cached and refreshed).
//! * [`credentials`] — [`CredentialsChain`]: environment, shared
//!   credentials file, instance role; cached, refreshed before expiry.
//! * [`retry`] — [`RetryPolicy`] and [`RateLimit`].
//! * [`arbiter`] — [`Arbiter`]: when to claim, re-check and fence (sans-IO).
//!
//! # Why no AWS SDK
//!
//! `aws-sdk-ec2` 1.274 is 1.24 million lines of generated Rust (88 MB of
//! source) and, with `aws-config`, a graph of 217 crates; it also needs Rust
//! 1.94 while the workspace promises 1.85. hagw uses six EC2 actions. This
//! crate instead uses:
//!
//! * `hyper` 1 + `hyper-util` (pooled HTTP/1.1 client) and `hyper-rustls`
//!   with rustls on `ring` and the bundled webpki roots: HTTPS works for
//!   real AWS with no system certificate store and no CMake build of
//!   aws-lc; plain `http://` for tests and endpoints given that way;
//! * `roxmltree` (no dependencies) for the XML answers;
//! * SigV4 written here over `ring`'s HMAC/SHA-256 (module `sigv4`, about
//!   a hundred lines, tested against AWS's documented example, botocore's
//!   signer, and moto with IAM authentication on). `aws-sigv4` would add
//!   ~70 crates (smithy runtime types, `time`...) and the same Rust 1.94
//!   requirement.
//!
//! Rough clean-build times on the shared 2-core machine (load 3-4 from
//! other builds, so only the ratios mean much): in scratch projects,
//! `cargo build --release` of roxmltree alone 8 s, hmac+sha2 8 s,
//! aws-sigv4 77 s, hyper+hyper-rustls+tokio 117 s; this whole crate with
//! all its dependencies (71 crates, about 25 of them new to the workspace)
//! 85 s debug, 140 s release. `aws-sdk-ec2` was not built here: its
//! signer alone costs as much as our whole TLS stack.
//!
//! Left to the caller (the VRRP driver): which MAC is which Linux interface,
//! and adding/removing the address on the interface itself.

pub mod arbiter;
pub mod client;
pub mod credentials;
mod datetime;
pub mod ec2;
mod http;
pub mod imds;
pub mod retry;
mod sigv4;

pub use arbiter::{Action, Arbiter, ArbiterConfig, Owner};
pub use client::{CallReport, ClaimReport, Ec2Client, Ec2Config, Ec2Error, Ec2ErrorKind, Reply};
pub use credentials::{
    ChainSources, CredentialSource, Credentials, CredentialsChain, CredentialsError,
};
pub use ec2::{
    ApiError, Filter, NetworkInterface, ParseError, PrivateIp, QueryRequest, Route, RouteTable,
};
pub use http::TransportError;
pub use imds::{Imds, ImdsConfig, ImdsError};
pub use retry::{RateLimit, RetryPolicy};
