//! IMDSv2 client: the instance's own view of its network interfaces, its
//! region and its role credentials.
//!
//! Every GET carries a session token obtained with
//! `PUT /latest/api/token` (`X-aws-ec2-metadata-token-ttl-seconds`). The
//! token is cached and fetched anew shortly before it expires, and once more
//! when IMDS answers 401 (a token can be invalidated early, e.g. on instance
//! stop/start). IMDS is on the instance's own link, so timeouts are short:
//! a slow answer means IMDS is unreachable (hop limit, firewall), and
//! waiting longer does not help.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::{Method, Uri};
use ipnet::Ipv4Net;
use tokio::sync::Mutex;

use crate::credentials::{CredentialSource, Credentials};
use crate::http::{HttpClient, TransportError};

/// The IMDS address on every Nitro and Xen instance (IPv4).
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TOKEN_PATH: &str = "/latest/api/token";
const META: &str = "/latest/meta-data/";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// Where and how to reach IMDS.
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// Base URL, `http://169.254.169.254` by default (`http://[fd00:ec2::254]`
    /// on IPv6-only instances; tests give their own).
    pub endpoint: String,
    /// Lifetime asked for each session token (AWS allows 1 s to 6 h).
    pub token_ttl: Duration,
    /// Deadline of one HTTP exchange with IMDS.
    pub timeout: Duration,
}

impl Default for ImdsConfig {
    fn default() -> Self {
        ImdsConfig {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token_ttl: Duration::from_secs(6 * 3600),
            timeout: Duration::from_secs(1),
        }
    }
}

/// An IMDS failure, naming the metadata path and, when there was an
/// answer, its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("IMDS {path}: {source}")]
    Transport {
        path: String,
        #[source]
        source: TransportError,
    },
    #[error("IMDS {path}: HTTP {status}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("IMDS {path}: cannot parse {value:?}: {reason}")]
    Parse {
        path: String,
        value: String,
        reason: String,
    },
    #[error("IMDS endpoint {endpoint:?}: {reason}")]
    Config { endpoint: String, reason: String },
}

impl ImdsError {
    /// The HTTP status IMDS answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ImdsError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    refresh_at: Instant,
}

/// An IMDSv2 client. Cheap calls, safe to share (`Arc<Imds>`).
#[derive(Debug)]
pub struct Imds {
    http: HttpClient,
    base: String,
    config: ImdsConfig,
    token: Mutex<Option<Token>>,
}

impl Imds {
    pub fn new(config: ImdsConfig) -> Result<Imds, ImdsError> {
        let base = config.endpoint.trim_end_matches('/').to_string();
        let config_err = |reason: String| ImdsError::Config {
            endpoint: config.endpoint.clone(),
            reason,
        };
        let uri: Uri = base.parse().map_err(|e| config_err(format!("{e}")))?;
        if uri.host().is_none() {
            return Err(config_err("no host".into()));
        }
        let http = HttpClient::new(config.timeout).map_err(|e| config_err(e.to_string()))?;
        Ok(Imds {
            http,
            base,
            config,
            token: Mutex::new(None),
        })
    }

    fn uri(&self, path: &str) -> Result<Uri, ImdsError> {
        format!("{}{path}", self.base)
            .parse()
            .map_err(|e| ImdsError::Config {
                endpoint: self.base.clone(),
                reason: format!("path {path}: {e}"),
            })
    }

    /// A valid token, from the cache or fetched now.
    async fn token(&self, force_new: bool) -> Result<String, ImdsError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref() {
            if !force_new && Instant::now() < t.refresh_at {
                return Ok(t.value.clone());
            }
        }
        let ttl = self.config.token_ttl.as_secs().clamp(1, 21_600);
        let ttl_text = ttl.to_string();
        let started = Instant::now();
        let resp = self
            .http
            .send(
                Method::PUT,
                &self.uri(TOKEN_PATH)?,
                &[(TTL_HEADER, &ttl_text)],
                Bytes::new(),
                self.config.timeout,
            )
            .await
            .map_err(|source| ImdsError::Transport {
                path: TOKEN_PATH.into(),
                source,
            })?;
        if resp.status != 200 {
            return Err(ImdsError::Status {
                path: TOKEN_PATH.into(),
                status: resp.status,
                body: truncate(&resp.text()),
            });
        }
        let value = resp.text().trim().to_string();
        if value.is_empty() {
            return Err(ImdsError::Parse {
                path: TOKEN_PATH.into(),
                value,
                reason: "empty token".into(),
            });
        }
        // Refresh when 90% of the lifetime has passed (at least 1 s early),
        // so a token never expires between our check and IMDS's.
        let ttl = Duration::from_secs(ttl);
        let margin = (ttl / 10).max(Duration::from_secs(1)).min(ttl);
        *cached = Some(Token {
            value: value.clone(),
            refresh_at: started + ttl - margin,
        });
        tracing::debug!(ttl_s = ttl.as_secs(), "IMDS: new session token");
        Ok(value)
    }

    /// GETs `/latest/meta-data/<path>`: `Ok(None)` on 404 (the item does
    /// not exist on this instance, e.g. `ipv6s` without IPv6).
    pub async fn get_opt(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let full = format!("{META}{}", path.trim_start_matches('/'));
        let uri = self.uri(&full)?;
        let mut retried = false;
        loop {
            let token = self.token(retried).await?;
            let resp = self
                .http
                .send(
                    Method::GET,
                    &uri,
                    &[(TOKEN_HEADER, &token)],
                    Bytes::new(),
                    self.config.timeout,
                )
                .await
                .map_err(|source| ImdsError::Transport {
                    path: full.clone(),
                    source,
                })?;
            match resp.status {
                200 => return Ok(Some(resp.text())),
                404 => return Ok(None),
                401 if !retried => {
                    tracing::debug!(path = %full, "IMDS: token refused (401), fetching a new one");
                    retried = true;
                }
                status => {
                    return Err(ImdsError::Status {
                        path: full,
                        status,
                        body: truncate(&resp.text()),
                    })
                }
            }
        }
    }

    /// GETs `/latest/meta-data/<path>`; 404 is an error.
    pub async fn get(&self, path: &str) -> Result<String, ImdsError> {
        self.get_opt(path).await?.ok_or_else(|| ImdsError::Status {
            path: format!("{META}{}", path.trim_start_matches('/')),
            status: 404,
            body: String::new(),
        })
    }

    /// `placement/region`, e.g. `eu-west-1`.
    pub async fn region(&self) -> Result<String, ImdsError> {
        Ok(self.get("placement/region").await?.trim().to_string())
    }

    /// `instance-id`.
    pub async fn instance_id(&self) -> Result<String, ImdsError> {
        Ok(self.get("instance-id").await?.trim().to_string())
    }

    /// MAC addresses of the instance's interfaces (`network/interfaces/macs/`).
    pub async fn macs(&self) -> Result<Vec<String>, ImdsError> {
        let listing = self.get("network/interfaces/macs/").await?;
        Ok(listing
            .lines()
            .map(|l| l.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|l| !l.is_empty())
            .collect())
    }

    fn mac_path(mac: &str, item: &str) -> String {
        format!(
            "network/interfaces/macs/{}/{item}",
            mac.trim().to_ascii_lowercase()
        )
    }

    /// The ENI id (`eni-...`) of the interface with this MAC.
    pub async fn interface_id(&self, mac: &str) -> Result<String, ImdsError> {
        Ok(self
            .get(&Self::mac_path(mac, "interface-id"))
            .await?
            .trim()
            .to_string())
    }

    /// Private IPv4 addresses of the interface, primary first.
    pub async fn local_ipv4s(&self, mac: &str) -> Result<Vec<Ipv4Addr>, ImdsError> {
        let path = Self::mac_path(mac, "local-ipv4s");
        parse_lines(&path, &self.get(&path).await?)
    }

    /// IPv6 addresses of the interface; empty when it has none (IMDS
    /// answers 404 then).
    pub async fn ipv6s(&self, mac: &str) -> Result<Vec<Ipv6Addr>, ImdsError> {
        let path = Self::mac_path(mac, "ipv6s");
        match self.get_opt(&path).await? {
            Some(text) => parse_lines(&path, &text),
            None => Ok(Vec::new()),
        }
    }

    /// All IPv4 CIDR blocks of the interface's VPC.
    pub async fn vpc_ipv4_cidr_blocks(&self, mac: &str) -> Result<Vec<Ipv4Net>, ImdsError> {
        let path = Self::mac_path(mac, "vpc-ipv4-cidr-blocks");
        parse_lines(&path, &self.get(&path).await?)
    }

    /// The IPv4 CIDR block of the interface's subnet.
    pub async fn subnet_ipv4_cidr_block(&self, mac: &str) -> Result<Ipv4Net, ImdsError> {
        let path = Self::mac_path(mac, "subnet-ipv4-cidr-block");
        let text = self.get(&path).await?;
        parse_one(&path, text.trim())
    }

    /// Credentials of the instance's IAM role
    /// (`iam/security-credentials/` names the role, `.../ROLE` has the keys).
    pub async fn role_credentials(&self) -> Result<Credentials, ImdsError> {
        let listing = self.get("iam/security-credentials/").await?;
        let Some(role) = listing.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Err(ImdsError::Parse {
                path: format!("{META}iam/security-credentials/"),
                value: listing,
                reason: "no role attached to the instance".into(),
            });
        };
        let path = format!("iam/security-credentials/{role}");
        let body = self.get(&path).await?;
        parse_role_credentials(&format!("{META}{path}"), role, &body)
    }
}

/// The JSON document of `iam/security-credentials/ROLE`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleDocument {
    code: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    token: Option<String>,
    expiration: Option<String>,
}

pub(crate) fn parse_role_credentials(
    path: &str,
    role: &str,
    body: &str,
) -> Result<Credentials, ImdsError> {
    let err = |reason: String| ImdsError::Parse {
        path: path.to_string(),
        value: truncate(body),
        reason,
    };
    let doc: RoleDocument = serde_json::from_str(body).map_err(|e| err(e.to_string()))?;
    if let Some(code) = doc.code.as_deref().filter(|c| *c != "Success") {
        return Err(err(format!("Code is {code:?}")));
    }
    let (Some(akid), Some(secret)) = (doc.access_key_id, doc.secret_access_key) else {
        return Err(err("AccessKeyId or SecretAccessKey missing".into()));
    };
    let expires_at: Option<SystemTime> = match doc.expiration.as_deref() {
        Some(e) => Some(
            crate::datetime::parse_rfc3339(e)
                .ok_or_else(|| err(format!("bad Expiration {e:?}")))?,
        ),
        None => None,
    };
    let mut creds = Credentials::new(akid, secret, doc.token);
    creds.expires_at = expires_at;
    creds.source = CredentialSource::InstanceRole(role.to_string());
    Ok(creds)
}

fn parse_one<T: std::str::FromStr>(path: &str, text: &str) -> Result<T, ImdsError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| ImdsError::Parse {
        path: format!("{META}{path}"),
        value: text.to_string(),
        reason: e.to_string(),
    })
}

/// One value per line, blank lines skipped.
fn parse_lines<T: std::str::FromStr>(path: &str, text: &str) -> Result<Vec<T>, ImdsError>
where
    T::Err: std::fmt::Display,
{
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| parse_one(path, l))
        .collect()
}

/// Error bodies go into messages: keep them short.
fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_role_credentials_document() {
        let body = r#"{
  "Code" : "Success",
  "LastUpdated" : "2024-05-01T11:00:00Z",
  "Type" : "AWS-HMAC",
  "AccessKeyId" : "ASIAEXAMPLE",
  "SecretAccessKey" : "secret",
  "Token" : "token",
  "Expiration" : "2024-05-01T17:00:00Z"
}"#;
        let c = parse_role_credentials("p", "gw-role", body).expect("valid");
        assert_eq!(c.access_key_id, "ASIAEXAMPLE");
        assert_eq!(c.secret_access_key, "secret");
        assert_eq!(c.session_token.as_deref(), Some("token"));
        assert_eq!(
            c.expires_at,
            crate::datetime::parse_rfc3339("2024-05-01T17:00:00Z")
        );
        assert_eq!(c.source, CredentialSource::InstanceRole("gw-role".into()));
    }

    #[test]
    fn role_credentials_errors_name_the_path() {
        let err = parse_role_credentials("/latest/meta-data/iam/x", "x", r#"{"Code":"Failure"}"#)
            .expect_err("failure code");
        assert!(err.to_string().contains("/latest/meta-data/iam/x"), "{err}");
        assert!(parse_role_credentials("p", "x", "not json").is_err());
        assert!(parse_role_credentials("p", "x", r#"{"AccessKeyId":"a"}"#).is_err());
        assert!(parse_role_credentials(
            "p",
            "x",
            r#"{"AccessKeyId":"a","SecretAccessKey":"b","Expiration":"soon"}"#
        )
        .is_err());
    }

    #[test]
    fn parse_lines_skips_blanks_and_reports_the_bad_value() {
        let ips: Vec<Ipv4Addr> =
            parse_lines("macs/x/local-ipv4s", "10.0.1.10\n10.0.1.20\n\n").expect("ok");
        assert_eq!(
            ips,
            [Ipv4Addr::new(10, 0, 1, 10), Ipv4Addr::new(10, 0, 1, 20)]
        );
        let err = parse_lines::<Ipv4Net>("macs/x/vpc-ipv4-cidr-blocks", "10.0.0.0/16\nbogus")
            .expect_err("bad line");
        let text = err.to_string();
        assert!(
            text.contains("vpc-ipv4-cidr-blocks") && text.contains("bogus"),
            "{text}"
        );
    }

    #[test]
    fn truncate_keeps_short_bodies() {
        assert_eq!(truncate("abc"), "abc");
        assert_eq!(truncate(&"x".repeat(300)).len(), 203);
    }
}
