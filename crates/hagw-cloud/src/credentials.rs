//! AWS credentials and the standard lookup chain: environment, shared
//! credentials file, then the instance role from IMDSv2.
//!
//! The chain is resolved on first use and cached. Credentials with an
//! expiry (instance role) are fetched anew [`ChainSources::refresh_before`]
//! ahead of it; the shared file is read again every
//! [`FILE_RELOAD`] so a rotated key is picked up without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use crate::imds::{Imds, ImdsError};

/// How often credentials from the shared file are read again.
pub const FILE_RELOAD: Duration = Duration::from_secs(15 * 60);

/// Where a set of credentials came from (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredentialSource {
    /// Given by the caller.
    #[default]
    Static,
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    Environment,
    /// A profile of a shared credentials file.
    SharedFile { path: PathBuf, profile: String },
    /// The instance's IAM role (the role name).
    InstanceRole(String),
}

/// One set of AWS credentials. `Debug` does not print the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// When temporary credentials stop working.
    pub expires_at: Option<SystemTime>,
    pub source: CredentialSource,
}

impl Credentials {
    /// Static credentials (no expiry).
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Credentials {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: session_token.filter(|t| !t.is_empty()),
            expires_at: None,
            source: CredentialSource::Static,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .field("source", &self.source)
            .finish()
    }
}

/// Why no credentials could be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("no AWS credentials: {tried}")]
    NotFound { tried: String },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: profile [{profile}] has no {missing}")]
    Incomplete {
        path: PathBuf,
        profile: String,
        missing: &'static str,
    },
    #[error("instance role credentials: {0}")]
    Imds(#[from] ImdsError),
}

impl CredentialsError {
    /// Whether trying again soon may succeed: IMDS did not answer, or
    /// answered 429/5xx. A missing or broken configuration is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            CredentialsError::Imds(ImdsError::Transport { .. }) => true,
            CredentialsError::Imds(e) => e.status().is_some_and(|s| s == 429 || s >= 500),
            _ => false,
        }
    }
}

/// The places the chain looks, in order. [`ChainSources::from_env`] fills
/// it from the process environment; tests fill it by hand.
#[derive(Debug, Clone)]
pub struct ChainSources {
    /// Credentials from the environment, if both key variables were set.
    pub env: Option<Credentials>,
    /// The shared credentials file (a missing file is skipped).
    pub shared_file: Option<PathBuf>,
    /// The profile to read from it.
    pub profile: String,
    /// IMDS for the instance role; `None` skips it (e.g. off EC2).
    pub imds: Option<Arc<Imds>>,
    /// Fetch expiring credentials again this long before they expire.
    pub refresh_before: Duration,
}

impl ChainSources {
    /// The standard places: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
    /// `AWS_SESSION_TOKEN`; `AWS_SHARED_CREDENTIALS_FILE` or
    /// `~/.aws/credentials` with `AWS_PROFILE` (or `default`); then `imds`.
    pub fn from_env(imds: Option<Arc<Imds>>) -> ChainSources {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let env = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(akid), Some(secret)) => {
                let mut c = Credentials::new(akid, secret, var("AWS_SESSION_TOKEN"));
                c.source = CredentialSource::Environment;
                Some(c)
            }
            _ => None,
        };
        let shared_file = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".aws/credentials")));
        ChainSources {
            env,
            shared_file,
            profile: var("AWS_PROFILE").unwrap_or_else(|| "default".into()),
            imds,
            refresh_before: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Debug, Clone)]
struct Cached {
    creds: Credentials,
    /// When to resolve again (`None`: never).
    refresh_at: Option<SystemTime>,
}

/// The credentials chain with its cache. Share it (`Arc`) between clients.
#[derive(Debug)]
pub struct CredentialsChain {
    sources: ChainSources,
    cache: Mutex<Option<Cached>>,
}

impl CredentialsChain {
    pub fn new(sources: ChainSources) -> CredentialsChain {
        CredentialsChain {
            sources,
            cache: Mutex::new(None),
        }
    }

    /// A chain that always answers `creds` (tests, or keys from hagw's own
    /// config).
    pub fn fixed(creds: Credentials) -> CredentialsChain {
        let sources = ChainSources {
            env: Some(creds),
            shared_file: None,
            profile: String::new(),
            imds: None,
            refresh_before: Duration::ZERO,
        };
        CredentialsChain::new(sources)
    }

    /// Current credentials: cached, or resolved now when there are none yet
    /// or they are due for refresh. If a refresh fails while the cached
    /// credentials have not expired yet, those are used (and the error
    /// logged), so an IMDS hiccup does not stop a failover.
    pub async fn credentials(&self) -> Result<Credentials, CredentialsError> {
        let mut cache = self.cache.lock().await;
        let now = SystemTime::now();
        if let Some(c) = cache.as_ref() {
            if c.refresh_at.is_none_or(|at| now < at) {
                return Ok(c.creds.clone());
            }
        }
        match self.resolve().await {
            Ok(creds) => {
                let refresh_at = match (&creds.source, creds.expires_at) {
                    (_, Some(exp)) => Some(
                        exp.checked_sub(self.sources.refresh_before)
                            .unwrap_or(exp)
                            .max(now + Duration::from_secs(10)),
                    ),
                    (CredentialSource::SharedFile { .. }, None) => Some(now + FILE_RELOAD),
                    _ => None,
                };
                tracing::debug!(source = ?creds.source, key = %creds.access_key_id, "AWS credentials resolved");
                *cache = Some(Cached {
                    creds: creds.clone(),
                    refresh_at,
                });
                Ok(creds)
            }
            Err(e) => match cache.as_ref() {
                Some(c) if c.creds.expires_at.is_none_or(|exp| now < exp) => {
                    tracing::warn!(error = %e, "refreshing AWS credentials failed; using the cached ones until they expire");
                    Ok(c.creds.clone())
                }
                _ => Err(e),
            },
        }
    }

    /// Drops the cached credentials (e.g. after the API refused them), so
    /// the next call resolves the chain again.
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    async fn resolve(&self) -> Result<Credentials, CredentialsError> {
        let s = &self.sources;
        if let Some(c) = &s.env {
            return Ok(c.clone());
        }
        let mut tried = vec!["environment (AWS_ACCESS_KEY_ID unset)".to_string()];
        if let Some(path) = &s.shared_file {
            match read_shared_file(path, &s.profile)? {
                Some(c) => return Ok(c),
                None => tried.push(format!("{} (no profile [{}])", path.display(), s.profile)),
            }
        }
        match &s.imds {
            Some(imds) => Ok(imds.role_credentials().await?),
            None => {
                tried.push("instance role (IMDS not configured)".into());
                Err(CredentialsError::NotFound {
                    tried: tried.join(", "),
                })
            }
        }
    }
}

/// Credentials of `profile` in the shared credentials file at `path`;
/// `Ok(None)` when the file or the profile does not exist.
pub fn read_shared_file(
    path: &Path,
    profile: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::File {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let profiles = parse_ini(&text).map_err(|(line, reason)| CredentialsError::Parse {
        path: path.to_path_buf(),
        line,
        reason,
    })?;
    let Some(keys) = profiles.get(profile) else {
        return Ok(None);
    };
    let incomplete = |missing| CredentialsError::Incomplete {
        path: path.to_path_buf(),
        profile: profile.to_string(),
        missing,
    };
    let akid = keys
        .get("aws_access_key_id")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| incomplete("aws_access_key_id"))?;
    let secret = keys
        .get("aws_secret_access_key")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| incomplete("aws_secret_access_key"))?;
    let mut creds = Credentials::new(
        akid.clone(),
        secret.clone(),
        keys.get("aws_session_token").cloned(),
    );
    creds.source = CredentialSource::SharedFile {
        path: path.to_path_buf(),
        profile: profile.to_string(),
    };
    Ok(Some(creds))
}

type Sections = HashMap<String, HashMap<String, String>>;

/// The INI dialect of `~/.aws/credentials`: `[section]` headers (a
/// `profile ` prefix is accepted, as in `~/.aws/config`), `key = value`
/// lines, `#` and `;` comment lines. Keys are lower-cased; a repeated key
/// or section continues/overrides like the AWS CLI. Errors carry the line
/// number (1-based).
fn parse_ini(text: &str) -> Result<Sections, (usize, String)> {
    let mut sections: Sections = HashMap::new();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err((i + 1, format!("unterminated section header {line:?}")));
            };
            let name = name.trim();
            let name = name.strip_prefix("profile ").map(str::trim).unwrap_or(name);
            if name.is_empty() {
                return Err((i + 1, "empty section name".into()));
            }
            sections.entry(name.to_string()).or_default();
            current = Some(name.to_string());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err((i + 1, format!("expected key = value, got {line:?}")));
        };
        let Some(section) = current.as_ref() else {
            return Err((i + 1, "key outside any [profile] section".into()));
        };
        // Indented lines are sub-properties (e.g. `s3 =` blocks in config
        // files): not credentials, skipped.
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        sections
            .entry(section.clone())
            .or_default()
            .insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# hagw's gateways
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key=secret/default+key

; another one
[prod]
AWS_ACCESS_KEY_ID = AKIAPROD
aws_secret_access_key = prodsecret
aws_session_token = tok=en
region = eu-west-1

[profile lab]
aws_access_key_id = AKIALAB
aws_secret_access_key = labsecret
s3 =
  max_concurrent_requests = 2

[broken]
aws_access_key_id = AKIABROKEN
";

    #[test]
    fn ini_sections_keys_and_comments() {
        let s = parse_ini(FILE).expect("valid");
        assert_eq!(s["default"]["aws_access_key_id"], "AKIADEFAULT");
        assert_eq!(s["default"]["aws_secret_access_key"], "secret/default+key");
        assert_eq!(s["prod"]["aws_access_key_id"], "AKIAPROD");
        assert_eq!(s["prod"]["aws_session_token"], "tok=en");
        assert_eq!(s["lab"]["aws_secret_access_key"], "labsecret");
        assert!(!s["lab"].contains_key("max_concurrent_requests"));
    }

    #[test]
    fn ini_errors_carry_the_line() {
        assert_eq!(parse_ini("[default\nx=1").expect_err("header").0, 1);
        assert_eq!(parse_ini("[a]\n\njunk").expect_err("no =").0, 3);
        assert_eq!(parse_ini("x = 1").expect_err("no section").0, 1);
        assert_eq!(parse_ini("[ ]").expect_err("empty").0, 1);
    }

    fn write_temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hagw-cloud-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn shared_file_profiles() {
        let path = write_temp("profiles", FILE);
        let c = read_shared_file(&path, "prod")
            .expect("ok")
            .expect("present");
        assert_eq!(c.access_key_id, "AKIAPROD");
        assert_eq!(c.session_token.as_deref(), Some("tok=en"));
        assert_eq!(
            c.source,
            CredentialSource::SharedFile {
                path: path.clone(),
                profile: "prod".into()
            }
        );
        assert!(read_shared_file(&path, "nope").expect("ok").is_none());
        let err = read_shared_file(&path, "broken").expect_err("incomplete");
        assert!(err.to_string().contains("aws_secret_access_key"), "{err}");
        assert!(
            read_shared_file(Path::new("/nonexistent/hagw/credentials"), "default")
                .expect("missing file is no error")
                .is_none()
        );
    }

    fn sources(env: Option<Credentials>, file: Option<PathBuf>, profile: &str) -> ChainSources {
        ChainSources {
            env,
            shared_file: file,
            profile: profile.into(),
            imds: None,
            refresh_before: Duration::from_secs(300),
        }
    }

    #[tokio::test]
    async fn chain_prefers_environment_then_file() {
        let path = write_temp("chain", FILE);
        let env = Credentials::new("AKIAENV", "envsecret", None);
        let chain = CredentialsChain::new(sources(Some(env.clone()), Some(path.clone()), "prod"));
        assert_eq!(chain.credentials().await.expect("env"), env);

        let chain = CredentialsChain::new(sources(None, Some(path.clone()), "default"));
        let c = chain.credentials().await.expect("file");
        assert_eq!(c.access_key_id, "AKIADEFAULT");

        let chain = CredentialsChain::new(sources(None, Some(path), "missing"));
        let err = chain.credentials().await.expect_err("nothing");
        assert!(
            matches!(err, CredentialsError::NotFound { ref tried } if tried.contains("no profile [missing]")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn chain_caches_file_credentials_until_reload() {
        let path = write_temp("rotate", FILE);
        let chain = CredentialsChain::new(sources(None, Some(path.clone()), "default"));
        assert_eq!(
            chain.credentials().await.expect("first").access_key_id,
            "AKIADEFAULT"
        );
        std::fs::write(
            &path,
            "[default]\naws_access_key_id=AKIANEW\naws_secret_access_key=x\n",
        )
        .expect("rewrite");
        assert_eq!(
            chain.credentials().await.expect("cached").access_key_id,
            "AKIADEFAULT",
            "served from the cache until FILE_RELOAD"
        );
        chain.invalidate().await;
        assert_eq!(
            chain.credentials().await.expect("reread").access_key_id,
            "AKIANEW"
        );
    }

    #[test]
    fn only_imds_outages_are_transient() {
        let timeout = CredentialsError::Imds(ImdsError::Transport {
            path: "/latest/api/token".into(),
            source: crate::http::TransportError::Timeout(Duration::from_secs(1)),
        });
        assert!(timeout.is_transient());
        let status = |status| {
            CredentialsError::Imds(ImdsError::Status {
                path: "p".into(),
                status,
                body: String::new(),
            })
        };
        assert!(status(503).is_transient() && status(429).is_transient());
        assert!(!status(404).is_transient());
        assert!(!CredentialsError::NotFound { tried: "x".into() }.is_transient());
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::new("AKIA", "topsecret", Some("tok".into()));
        let text = format!("{c:?}");
        assert!(
            !text.contains("topsecret") && !text.contains("tok\""),
            "{text}"
        );
    }
}
