//! [`Ec2Client`]: signs and sends the requests of [`crate::ec2`], with the
//! retry loop and the rate limit of [`crate::retry`], and the high-level
//! operations the VRRP driver calls on a transition.
//!
//! All calls are async and may take seconds (backoff); the driver spawns
//! them and never blocks its state machine on one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::{Method, Uri};
use ipnet::IpNet;

use crate::credentials::{CredentialsChain, CredentialsError};
use crate::ec2::{
    self, ApiError, AssignedPrivateIps, Filter, NetworkInterface, ParseError, QueryRequest,
    RouteTable,
};
use crate::http::{host_header, HttpClient, TransportError};
use crate::retry::{random_unit, retryable_api_error, RateLimit, RetryPolicy, TokenBucket};
use crate::sigv4::{sign, SigningRequest};

const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
const USER_AGENT: &str = concat!("hagw-cloud/", env!("CARGO_PKG_VERSION"));

/// Error codes after which the cached credentials are dropped, so the next
/// call resolves the chain again (rotated keys, expired role session).
const STALE_CREDENTIALS: &[&str] = &["AuthFailure", "ExpiredToken", "InvalidClientTokenId"];

/// How to reach EC2.
#[derive(Debug, Clone)]
pub struct Ec2Config {
    /// Region, also the SigV4 signing region.
    pub region: String,
    /// `None`: `https://ec2.REGION.amazonaws.com`. VPC endpoints and tests
    /// give theirs (`http://` works for tests).
    pub endpoint: Option<String>,
    pub retry: RetryPolicy,
    pub rate_limit: RateLimit,
    /// Deadline of one HTTP exchange.
    pub attempt_timeout: Duration,
    /// Deadline of one TCP connect.
    pub connect_timeout: Duration,
}

impl Ec2Config {
    pub fn new(region: impl Into<String>) -> Ec2Config {
        Ec2Config {
            region: region.into(),
            endpoint: None,
            retry: RetryPolicy::default(),
            rate_limit: RateLimit::default(),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// The endpoint URL that will be used.
    pub fn endpoint_url(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None if self.region.starts_with("cn-") => {
                format!("https://ec2.{}.amazonaws.com.cn", self.region)
            }
            None => format!("https://ec2.{}.amazonaws.com", self.region),
        }
    }
}

/// What went wrong with one EC2 call, after all its attempts.
#[derive(Debug)]
pub struct Ec2Error {
    pub action: &'static str,
    /// Attempts made (1 when the error was not retried).
    pub attempts: u32,
    pub elapsed: Duration,
    /// Boxed: errors travel through `Result`s on the happy path's stack.
    pub kind: Box<Ec2ErrorKind>,
}

#[derive(Debug, thiserror::Error)]
pub enum Ec2ErrorKind {
    /// EC2 answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// No (complete) answer.
    #[error("{0}")]
    Transport(TransportError),
    #[error("{0}")]
    Credentials(CredentialsError),
    /// A 200 answer we could not read.
    #[error("unexpected response (request id {}): {error}", request_id.as_deref().unwrap_or("none"))]
    Parse {
        error: ParseError,
        request_id: Option<String>,
    },
    /// The client was configured wrong (endpoint...).
    #[error("{0}")]
    Config(String),
}

impl std::fmt::Display for Ec2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EC2 {} failed after {} attempt(s) in {:.1?}: {}",
            self.action, self.attempts, self.elapsed, self.kind
        )
    }
}

impl std::error::Error for Ec2Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            Ec2ErrorKind::Transport(e) => std::error::Error::source(e),
            Ec2ErrorKind::Credentials(e) => std::error::Error::source(e),
            _ => None,
        }
    }
}

impl Ec2Error {
    /// The AWS error, when EC2 answered with one.
    pub fn api(&self) -> Option<&ApiError> {
        match &*self.kind {
            Ec2ErrorKind::Api(e) => Some(e),
            _ => None,
        }
    }

    /// The AWS error code (`UnauthorizedOperation`...), if any.
    pub fn code(&self) -> Option<&str> {
        self.api().map(|e| e.code.as_str())
    }
}

/// How a successful call went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallReport {
    pub action: &'static str,
    pub request_id: Option<String>,
    pub attempts: u32,
    /// From the first attempt to the answer, backoff and rate limit included.
    pub elapsed: Duration,
}

/// A successful call's raw answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub body: String,
    pub report: CallReport,
}

/// The outcome of [`Ec2Client::claim_secondary_ip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimReport {
    pub eni: String,
    pub ip: Ipv4Addr,
    /// Addresses EC2 reports as assigned by this call.
    pub assigned: Vec<Ipv4Addr>,
    pub call: CallReport,
}

/// An EC2 API client. Cheap to clone; clones share the connection pool, the
/// credentials and one rate limit.
#[derive(Clone, Debug)]
pub struct Ec2Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: HttpClient,
    endpoint: Uri,
    host: String,
    path: String,
    region: String,
    credentials: Arc<CredentialsChain>,
    retry: RetryPolicy,
    bucket: TokenBucket,
    attempt_timeout: Duration,
}

impl Ec2Client {
    pub fn new(
        config: Ec2Config,
        credentials: Arc<CredentialsChain>,
    ) -> Result<Ec2Client, Ec2Error> {
        let url = config.endpoint_url();
        let config_err = |what: String| Ec2Error {
            action: "(client setup)",
            attempts: 0,
            elapsed: Duration::ZERO,
            kind: Box::new(Ec2ErrorKind::Config(what)),
        };
        let endpoint: Uri = url
            .parse()
            .map_err(|e| config_err(format!("endpoint {url:?}: {e}")))?;
        if !matches!(endpoint.scheme_str(), Some("http" | "https")) {
            return Err(config_err(format!(
                "endpoint {url:?}: scheme must be http or https"
            )));
        }
        let host = host_header(&endpoint)
            .ok_or_else(|| config_err(format!("endpoint {url:?}: no host")))?;
        let path = match endpoint.path() {
            "" => "/".to_string(),
            p => p.to_string(),
        };
        let http = HttpClient::new(config.connect_timeout)
            .map_err(|e| config_err(format!("HTTP client: {e}")))?;
        let mut retry = config.retry;
        retry.max_attempts = retry.max_attempts.max(1);
        Ok(Ec2Client {
            inner: Arc::new(Inner {
                http,
                endpoint,
                host,
                path,
                region: config.region,
                credentials,
                retry,
                bucket: TokenBucket::new(config.rate_limit),
                attempt_timeout: config.attempt_timeout,
            }),
        })
    }

    pub fn endpoint(&self) -> &Uri {
        &self.inner.endpoint
    }

    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// Sends `req` with retries; `Ok` for a 2xx answer.
    pub async fn call(&self, req: &QueryRequest) -> Result<Reply, Ec2Error> {
        let retry = &self.inner.retry;
        let started = Instant::now();
        let body = Bytes::from(req.body());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (kind, retry_reason) = match self.attempt(req, &body, attempt, started).await {
                Ok(reply) => return Ok(reply),
                Err(failure) => failure,
            };
            if let Some(reason) = retry_reason {
                let delay = retry.backoff(attempt, random_unit());
                if attempt < retry.max_attempts && started.elapsed() + delay < retry.max_total {
                    tracing::warn!(action = req.action, attempt, reason, error = %kind,
                        delay_ms = delay.as_millis() as u64, "EC2 call failed, retrying after backoff");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            let err = Ec2Error {
                action: req.action,
                attempts: attempt,
                elapsed: started.elapsed(),
                kind: Box::new(kind),
            };
            tracing::warn!(action = req.action, attempt, elapsed_ms = err.elapsed.as_millis() as u64,
                request_id = err.api().and_then(|a| a.request_id.as_deref()).unwrap_or("-"),
                error = %err.kind, "EC2 call failed");
            return Err(err);
        }
    }

    /// One attempt: rate limit, credentials, sign, send. A failure comes
    /// with the reason to retry it, if it deserves one.
    async fn attempt(
        &self,
        req: &QueryRequest,
        body: &Bytes,
        attempt: u32,
        started: Instant,
    ) -> Result<Reply, (Ec2ErrorKind, Option<&'static str>)> {
        let inner = &*self.inner;
        let queued = inner.bucket.acquire().await;
        let creds = inner.credentials.credentials().await.map_err(|e| {
            let reason = e.is_transient().then_some("credentials unavailable");
            (Ec2ErrorKind::Credentials(e), reason)
        })?;
        let signing = SigningRequest {
            method: "POST",
            host: &inner.host,
            path: &inner.path,
            query: &[],
            content_type: CONTENT_TYPE,
            body,
            region: &inner.region,
            service: "ec2",
        };
        let auth = sign(&signing, &creds, SystemTime::now());
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", &inner.host),
            ("content-type", CONTENT_TYPE),
            ("user-agent", USER_AGENT),
        ];
        headers.extend(auth.iter().map(|(k, v)| (*k, v.as_str())));

        let sent = Instant::now();
        let result = inner
            .http
            .send(
                Method::POST,
                &inner.endpoint,
                &headers,
                body.clone(),
                inner.attempt_timeout,
            )
            .await;
        let latency_ms = sent.elapsed().as_millis() as u64;
        let resp = result.map_err(|e| {
            tracing::debug!(action = req.action, attempt, latency_ms, error = %e, "EC2 call got no answer");
            (Ec2ErrorKind::Transport(e), Some("no answer"))
        })?;
        let header_id = resp.header("x-amzn-requestid");
        if !(200..300).contains(&resp.status) {
            let api = ec2::parse_error(resp.status, &resp.text(), header_id);
            tracing::debug!(action = req.action, attempt, latency_ms, status = api.status, code = %api.code,
                request_id = api.request_id.as_deref().unwrap_or("-"), "EC2 call answered with an error");
            if STALE_CREDENTIALS.contains(&api.code.as_str()) {
                inner.credentials.invalidate().await;
            }
            let reason = retryable_api_error(api.status, &api.code);
            return Err((Ec2ErrorKind::Api(api), reason));
        }
        let text = resp.text();
        let report = CallReport {
            action: req.action,
            request_id: header_id
                .map(str::to_string)
                .or_else(|| ec2::request_id(&text)),
            attempts: attempt,
            elapsed: started.elapsed(),
        };
        let (request_id, queued_ms, elapsed_ms) = (
            report.request_id.as_deref().unwrap_or("-"),
            queued.as_millis() as u64,
            report.elapsed.as_millis() as u64,
        );
        if req.is_mutating() {
            tracing::info!(
                action = req.action,
                attempt,
                latency_ms,
                queued_ms,
                elapsed_ms,
                request_id,
                "EC2 call done"
            );
        } else {
            tracing::debug!(
                action = req.action,
                attempt,
                latency_ms,
                queued_ms,
                elapsed_ms,
                request_id,
                "EC2 call done"
            );
        }
        Ok(Reply { body: text, report })
    }

    /// [`Ec2Client::call`], then parses the body.
    async fn call_parse<T>(
        &self,
        req: &QueryRequest,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<(T, CallReport), Ec2Error> {
        let reply = self.call(req).await?;
        match parse(&reply.body) {
            Ok(v) => Ok((v, reply.report)),
            Err(error) => Err(Ec2Error {
                action: req.action,
                attempts: reply.report.attempts,
                elapsed: reply.report.elapsed,
                kind: Box::new(Ec2ErrorKind::Parse {
                    error,
                    request_id: reply.report.request_id,
                }),
            }),
        }
    }

    /// `AssignPrivateIpAddresses`.
    pub async fn assign_private_ip_addresses(
        &self,
        eni: &str,
        ips: &[Ipv4Addr],
        allow_reassignment: bool,
    ) -> Result<(AssignedPrivateIps, CallReport), Ec2Error> {
        let req = ec2::assign_private_ip_addresses(eni, ips, allow_reassignment);
        self.call_parse(&req, ec2::parse_assign_private_ip_addresses)
            .await
    }

    /// `UnassignPrivateIpAddresses`.
    pub async fn unassign_private_ip_addresses(
        &self,
        eni: &str,
        ips: &[Ipv4Addr],
    ) -> Result<CallReport, Ec2Error> {
        let req = ec2::unassign_private_ip_addresses(eni, ips);
        let action = req.action;
        Ok(self
            .call_parse(&req, |b| ec2::parse_return(action, b))
            .await?
            .1)
    }

    /// `AssignIpv6Addresses`; returns the addresses EC2 reports assigned.
    pub async fn assign_ipv6_addresses(
        &self,
        eni: &str,
        ips: &[Ipv6Addr],
    ) -> Result<Vec<Ipv6Addr>, Ec2Error> {
        let req = ec2::assign_ipv6_addresses(eni, ips);
        Ok(self
            .call_parse(&req, ec2::parse_assign_ipv6_addresses)
            .await?
            .0)
    }

    /// `DescribeNetworkInterfaces` by ids and/or filters.
    pub async fn describe_network_interfaces(
        &self,
        ids: &[&str],
        filters: &[Filter],
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        let req = ec2::describe_network_interfaces(ids, filters);
        Ok(self
            .call_parse(&req, ec2::parse_describe_network_interfaces)
            .await?
            .0)
    }

    /// `DescribeRouteTables` by ids and/or filters.
    pub async fn describe_route_tables(
        &self,
        ids: &[&str],
        filters: &[Filter],
    ) -> Result<Vec<RouteTable>, Ec2Error> {
        let req = ec2::describe_route_tables(ids, filters);
        Ok(self
            .call_parse(&req, ec2::parse_describe_route_tables)
            .await?
            .0)
    }

    /// Moves the secondary private IP `ip` onto `eni`, taking it from
    /// whichever interface of the subnet holds it
    /// (`AssignPrivateIpAddresses` with `AllowReassignment=true`). This is
    /// the floating-VIP failover call.
    pub async fn claim_secondary_ip(
        &self,
        eni: &str,
        ip: Ipv4Addr,
    ) -> Result<ClaimReport, Ec2Error> {
        let (assigned, call) = self.assign_private_ip_addresses(eni, &[ip], true).await?;
        tracing::info!(eni, %ip, attempts = call.attempts, elapsed_ms = call.elapsed.as_millis() as u64,
            request_id = call.request_id.as_deref().unwrap_or("-"), "claimed secondary IP");
        Ok(ClaimReport {
            eni: eni.to_string(),
            ip,
            assigned: assigned.assigned,
            call,
        })
    }

    /// Which ENI holds private IPv4 `ip` (primary or secondary), if any.
    ///
    /// The `hint_enis` (the pair's own interfaces) are described first and
    /// scanned, which answers the usual case in one call. Otherwise the
    /// `addresses.private-ip-address` filter asks the whole region; its
    /// results are confirmed by scanning each interface's address list
    /// (moto's filter matches only primary addresses, which is why the hints
    /// come first). A hint that no longer exists is skipped.
    pub async fn owner_of_private_ip(
        &self,
        ip: Ipv4Addr,
        hint_enis: &[&str],
    ) -> Result<Option<String>, Ec2Error> {
        let target = IpAddr::V4(ip);
        if !hint_enis.is_empty() {
            match self.describe_network_interfaces(hint_enis, &[]).await {
                Ok(enis) => {
                    if let Some(eni) = enis.into_iter().find(|e| e.holds(target)) {
                        return Ok(Some(eni.id));
                    }
                }
                Err(e) if e.code() == Some("InvalidNetworkInterfaceID.NotFound") => {
                    tracing::warn!(error = %e, "a hinted ENI does not exist; searching by filter");
                }
                Err(e) => return Err(e),
            }
        }
        let filter = Filter::new("addresses.private-ip-address", ip);
        let enis = self.describe_network_interfaces(&[], &[filter]).await?;
        Ok(enis.into_iter().find(|e| e.holds(target)).map(|e| e.id))
    }

    /// Points the route for `destination` in route table `table` at `eni`
    /// (`ReplaceRoute`; the route must exist).
    pub async fn replace_route(
        &self,
        table: &str,
        destination: IpNet,
        eni: &str,
    ) -> Result<CallReport, Ec2Error> {
        let req = ec2::replace_route(table, destination, eni);
        let action = req.action;
        let (_, call) = self
            .call_parse(&req, |b| ec2::parse_return(action, b))
            .await?;
        tracing::info!(table, %destination, eni, attempts = call.attempts, elapsed_ms = call.elapsed.as_millis() as u64,
            request_id = call.request_id.as_deref().unwrap_or("-"), "replaced route");
        Ok(call)
    }

    /// The ENI the route for `destination` in `table` points at; `None`
    /// when there is no such route or it points elsewhere (gateway,
    /// instance without ENI id...). An unknown table is an error.
    pub async fn route_target(
        &self,
        table: &str,
        destination: IpNet,
    ) -> Result<Option<String>, Ec2Error> {
        let tables = self.describe_route_tables(&[table], &[]).await?;
        Ok(tables
            .iter()
            .find(|t| t.id == table)
            .and_then(|t| t.route(destination))
            .and_then(|r| r.network_interface_id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Credentials;

    fn chain() -> Arc<CredentialsChain> {
        Arc::new(CredentialsChain::fixed(Credentials::new(
            "AKID", "secret", None,
        )))
    }

    #[test]
    fn default_endpoints() {
        assert_eq!(
            Ec2Config::new("eu-west-1").endpoint_url(),
            "https://ec2.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            Ec2Config::new("cn-north-1").endpoint_url(),
            "https://ec2.cn-north-1.amazonaws.com.cn"
        );
        let mut c = Ec2Config::new("eu-west-1");
        c.endpoint = Some("https://vpce-1.ec2.eu-west-1.vpce.amazonaws.com".into());
        assert_eq!(
            c.endpoint_url(),
            "https://vpce-1.ec2.eu-west-1.vpce.amazonaws.com"
        );
    }

    #[test]
    fn bad_endpoints_are_config_errors() {
        for bad in ["not a url", "ftp://x.example", "/just/a/path"] {
            let mut c = Ec2Config::new("eu-west-1");
            c.endpoint = Some(bad.into());
            let err = Ec2Client::new(c, chain()).expect_err(bad);
            assert!(matches!(*err.kind, Ec2ErrorKind::Config(_)), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn client_keeps_endpoint_host_and_path() {
        let mut c = Ec2Config::new("us-east-1");
        c.endpoint = Some("http://127.0.0.1:5000".into());
        let client = Ec2Client::new(c, chain()).expect("client");
        assert_eq!(client.inner.host, "127.0.0.1:5000");
        assert_eq!(client.inner.path, "/");
        assert_eq!(client.region(), "us-east-1");
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_retried_then_reported() {
        // Port 9 on loopback: nothing listens, the connect fails at once.
        let mut c = Ec2Config::new("us-east-1");
        c.endpoint = Some("http://127.0.0.1:9".into());
        c.retry = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            max_total: Duration::from_secs(5),
        };
        let client = Ec2Client::new(c, chain()).expect("client");
        let err = client
            .replace_route("rtb-1", "10.9.0.0/16".parse().expect("net"), "eni-1")
            .await
            .expect_err("nothing listens");
        assert_eq!(err.attempts, 3, "{err}");
        assert!(matches!(*err.kind, Ec2ErrorKind::Transport(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with("EC2 ReplaceRoute failed after 3 attempt(s)"),
            "{err}"
        );
    }
}
