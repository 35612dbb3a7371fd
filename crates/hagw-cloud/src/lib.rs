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
//!
//! # Why no AWS SDK
//!
//! `aws-sdk-ec2` is hundreds of thousands of lines of generated code behind
//! the whole smithy runtime; hagw uses six actions of it. Building it on
//! the project's 2-core machines takes many minutes, for every developer
//! and every CI run. This crate instead uses:
//!
//! * `hyper` 1 + `hyper-util` (pooled HTTP/1.1 client) and `hyper-rustls`
//!   with rustls on `ring` and the bundled webpki roots: HTTPS works for
//!   real AWS with no system certificate store and no C/CMake build of
//!   aws-lc; plain `http://` for tests and endpoints given that way;
//! * `roxmltree` (no dependencies) for the XML answers;
//! * SigV4 written here over `ring`'s HMAC/SHA-256 (module `sigv4`, about
//!   a hundred lines, tested against AWS's documented example, botocore's
//!   signer, and moto with IAM authentication on). `aws-sigv4` would add ~70
//!   crates (the smithy runtime types, `time`...), needs Rust 1.94 while the
//!   workspace promises 1.85, and alone took longer to build than all of
//!   TLS.
//!
//! Measured on the 2-core machine, clean builds in a scratch project
//! (`cargo build --release`, seconds): roxmltree 8, hmac+sha2 8,
//! aws-sigv4 77, hyper+hyper-rustls+tokio 117. The whole crate with its
//! dependencies, clean: see README (`hagw-cloud` section).
//!
//! Left to the caller (the VRRP driver): which MAC is which Linux interface,
//! and adding/removing the address on the interface itself.

pub mod client;
pub mod credentials;
mod datetime;
pub mod ec2;
mod http;
pub mod imds;
pub mod retry;
mod sigv4;

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
