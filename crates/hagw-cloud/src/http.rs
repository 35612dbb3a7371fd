//! The one HTTP client of the crate: HTTP/1.1 with a small connection pool,
//! HTTPS through rustls (ring, webpki roots) and plain HTTP for IMDS, tests
//! and `http://` endpoints. Every request has a deadline covering connect,
//! send and reading the whole body.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Responses larger than this are refused: EC2 and IMDS answers are a few KiB.
const MAX_BODY: usize = 4 << 20;

/// A request that got no HTTP response (or an unreadable one).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("reading the response body: {0}")]
    Body(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
}

/// A response read to its end.
#[derive(Debug, Clone)]
pub(crate) struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as text (lossy: bodies only end up in parsers and messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// `connect_timeout` bounds the TCP connect alone; each request also
    /// gets its own overall deadline.
    pub fn new(connect_timeout: Duration) -> Result<Self, TransportError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .map_err(TransportError::Tls)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(https);
        Ok(HttpClient { client })
    }

    /// Sends one request and reads the whole response within `timeout`.
    pub async fn send(
        &self,
        method: Method,
        uri: &Uri,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<HttpResponse, TransportError> {
        let mut req = Request::builder().method(method).uri(uri.clone());
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| TransportError::Invalid(format!("header {name}: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| TransportError::Invalid(format!("header {name}: {e}")))?;
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| TransportError::Invalid(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(TransportError::Request)?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| TransportError::Body(e.to_string()))?
                .to_bytes();
            Ok(HttpResponse {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
    }
}

/// The `Host` header value for `uri` (port only when not the scheme's
/// default), as SigV4 signs it.
pub(crate) fn host_header(uri: &Uri) -> Option<String> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    Some(match uri.port_u16() {
        Some(p) if p != default_port => format!("{host}:{p}"),
        _ => host.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_drops_default_ports_only() {
        let h = |s: &str| host_header(&s.parse::<Uri>().expect("uri"));
        assert_eq!(
            h("https://ec2.eu-west-1.amazonaws.com").as_deref(),
            Some("ec2.eu-west-1.amazonaws.com")
        );
        assert_eq!(h("https://x.example:443/").as_deref(), Some("x.example"));
        assert_eq!(
            h("http://127.0.0.1:5000/").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(h("http://127.0.0.1:80/").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            h("https://x.example:8443").as_deref(),
            Some("x.example:8443")
        );
    }
}
