//! Runs `moto_ec2.py` (moto's EC2 server, patched, plus per-instance IMDS)
//! on loopback ports for one test, and stops it by PID when dropped, also
//! when the test panics.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// Longest wait for the launcher to print its JSON line (moto's import is
/// slow on a busy 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(90);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One running launcher.
pub struct Moto {
    child: Child,
    log: PathBuf,
    setup_file: PathBuf,
    /// The launcher's JSON line.
    pub info: Value,
}

/// One "instance" of the setup.
#[derive(Debug, Clone)]
pub struct Instance {
    pub instance_id: String,
    pub eni: String,
    pub mac: String,
    pub imds: String,
}

fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/moto_ec2.py")
}

impl Moto {
    /// Starts the launcher with `setup` (see the doc of moto_ec2.py) and
    /// waits for its JSON line.
    pub fn start(setup: Value) -> Moto {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("hagw-cloud-moto-{}-{n}", std::process::id()));
        let setup_file = base.with_extension("json");
        let log = base.with_extension("log");
        std::fs::write(&setup_file, setup.to_string()).expect("write setup file");
        let log_file = std::fs::File::create(&log).expect("create log file");
        let python = std::env::var("HAGW_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(launcher())
            .args(["--ec2", "127.0.0.1:0", "--imds", "127.0.0.1:0", "--setup"])
            .arg(&setup_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {python} {}: {e}", launcher().display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut moto = Moto {
            child,
            log,
            setup_file,
            info: Value::Null,
        };
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        moto.info = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "moto_ec2.py printed no setup JSON ({e}); is `moto[server]` installed \
                 (.ci/install-deps)? log:\n{}",
                moto.log_text()
            )
        });
        moto
    }

    pub fn ec2_url(&self) -> String {
        self.info["ec2"].as_str().expect("ec2 url").to_string()
    }

    pub fn region(&self) -> String {
        self.info["region"].as_str().expect("region").to_string()
    }

    pub fn route_table(&self) -> String {
        self.info["route_table"]
            .as_str()
            .expect("route table")
            .to_string()
    }

    pub fn instance(&self, name: &str) -> Instance {
        let i = &self.info["instances"][name];
        let s = |k: &str| {
            i[k].as_str()
                .unwrap_or_else(|| panic!("instance {name}: no {k} in {i}"))
                .to_string()
        };
        Instance {
            instance_id: s("instance_id"),
            eni: s("eni"),
            mac: s("mac"),
            imds: s("imds"),
        }
    }

    /// (access key id, secret) of IAM user `allowed` or `denied`.
    pub fn iam_keys(&self, user: &str) -> (String, String) {
        let u = &self.info["iam"][user];
        (
            u["access_key_id"].as_str().expect("iam keys").to_string(),
            u["secret_access_key"]
                .as_str()
                .expect("iam keys")
                .to_string(),
        )
    }

    /// The next `count` calls of `action` ("*": any) get this EC2 error.
    pub fn inject(&self, action: &str, code: &str, status: u16, count: u32) {
        let body = json!({"action": action, "code": code, "status": status, "count": count});
        let (st, _) = http(&self.ec2_url(), "POST", "/_hagw/fail", &body.to_string());
        assert_eq!(st, 200, "injecting a fault");
    }

    /// How many EC2 calls of `action` the server received so far.
    pub fn calls(&self, action: &str) -> u64 {
        let (_, body) = http(&self.ec2_url(), "GET", "/_hagw/calls", "");
        let counts: Value = serde_json::from_str(&body).expect("calls JSON");
        counts[action].as_u64().unwrap_or(0)
    }

    /// Turns on moto's SigV4 checking against its IAM users.
    pub fn enable_auth(&self) {
        let (st, body) = http(&self.ec2_url(), "POST", "/moto-api/reset-auth", "0");
        assert_eq!(st, 200, "reset-auth: {body}");
    }

    /// Every IMDS token handed out so far stops working (IMDS answers 401).
    pub fn expire_imds_tokens(&self) {
        let (st, _) = http(&self.ec2_url(), "POST", "/_hagw/imds/expire-tokens", "");
        assert_eq!(st, 200);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // By PID: the Child handle kills exactly the process we started.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of moto_ec2.py's log ---\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        let _ = std::fs::remove_file(&self.setup_file);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A minimal blocking HTTP/1.0 request to the launcher's control paths
/// (text/plain body); returns status and body.
pub fn http(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let authority = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(authority).expect("connect to moto");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The two-instance setup most tests use: `a` (10.0.1.10, MAC ..:0a) and
/// `b` (10.0.1.11, MAC ..:0b) in 10.0.1.0/24 of VPC 10.0.0.0/16, a route
/// table with 192.168.50.0/24 via `a`.
pub fn pair_setup(iam: bool) -> Value {
    json!({
        "region": "eu-west-1",
        "vpc": "10.0.0.0/16",
        "subnet": "10.0.1.0/24",
        "instances": [
            {"name": "a", "mac": "02:00:00:00:00:0a", "ip": "10.0.1.10"},
            {"name": "b", "mac": "02:00:00:00:00:0b", "ip": "10.0.1.11"}
        ],
        "routes": [{"destination": "192.168.50.0/24", "instance": "a"}],
        "iam": iam
    })
}
