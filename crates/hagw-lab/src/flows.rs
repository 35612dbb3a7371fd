//! The lab's traffic: a TCP server on "the internet" that tells every
//! connection which source address it sees (so which router's SNAT it came
//! through) and echoes lines, and a flow holder on the host that keeps N
//! connections alive (a line a second, the echo read back) and answers on a
//! Unix socket with each connection's state.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener};
use tokio::sync::oneshot;

/// A flow whose last echo is older than this is counted as broken even if
/// its socket has not failed yet (it is retransmitting into a dead path).
pub const STALL_MS: u64 = 2500;
const KEEPALIVE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn touch(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

// ---------------------------------------------------------------------------
// The server (`hagw lab serve-internal`).

pub fn serve(listen: SocketAddr, ready: Option<&Path>) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        eprintln!("hagw lab server: listening on {listen}");
        if let Some(r) = ready {
            touch(r, "ready\n")?;
        }
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("hagw lab server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (mut r, mut w) = stream.into_split();
                // The first line names the source the server sees: with SNAT
                // on the routers, it tells which router the flow went through.
                let hello = format!("hello {} {}\n", peer.ip(), peer.port());
                if w.write_all(hello.as_bytes()).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    })
}

// ---------------------------------------------------------------------------
// The flow holder (`hagw lab flows-internal`).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    Connecting,
    Open,
    Broken,
}

/// One connection as the holder reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowInfo {
    pub id: usize,
    pub local: Option<String>,
    /// The source address the server saw (a router's SNAT address).
    pub seen_as: Option<IpAddr>,
    pub state: FlowState,
    /// Milliseconds since the last echo came back (or since it opened).
    pub echo_age_ms: Option<u64>,
    pub echoes: u64,
    pub error: Option<String>,
}

impl FlowInfo {
    /// Open and answering: an echo within [`STALL_MS`].
    pub fn healthy(&self) -> bool {
        self.state == FlowState::Open && self.echo_age_ms.is_some_and(|a| a < STALL_MS)
    }

    /// Open but silent for longer than [`STALL_MS`].
    pub fn stalled(&self) -> bool {
        self.state == FlowState::Open && !self.healthy()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub flows: Vec<FlowInfo>,
}

struct Flow {
    local: Option<String>,
    seen_as: Option<IpAddr>,
    state: FlowState,
    last_echo: Option<Instant>,
    echoes: u64,
    error: Option<String>,
}

type Flows = Arc<Mutex<Vec<Flow>>>;

fn with_flow(flows: &Flows, id: usize, f: impl FnOnce(&mut Flow)) {
    let mut all = flows.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(flow) = all.get_mut(id) {
        f(flow);
    }
}

pub fn hold(a: &HoldArgs) -> anyhow::Result<()> {
    let (target, count, socket, ready) =
        (a.target, a.count, a.socket.as_path(), a.ready.as_deref());
    let bind_first = a.bind_first;
    runtime()?.block_on(async {
        let flows: Flows = Arc::new(Mutex::new(
            (0..count)
                .map(|_| Flow {
                    local: None,
                    seen_as: None,
                    state: FlowState::Connecting,
                    last_echo: None,
                    echoes: 0,
                    error: None,
                })
                .collect(),
        ));

        if socket.exists() {
            std::fs::remove_file(socket)
                .with_context(|| format!("cannot remove stale {}", socket.display()))?;
        }
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        let f = flows.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let _ = answer(stream, &f, target).await;
                });
            }
        });

        let mut settled = Vec::new();
        for id in 0..count {
            let (tx, rx) = oneshot::channel();
            settled.push(rx);
            tokio::spawn(keep_flow(id, target, bind_first, flows.clone(), tx));
        }
        for rx in settled {
            let _ = rx.await;
        }
        let (open, broken) = {
            let all = flows.lock().unwrap_or_else(|e| e.into_inner());
            let open = all.iter().filter(|f| f.state == FlowState::Open).count();
            (open, all.len() - open)
        };
        eprintln!("hagw lab flows: {open} open, {broken} failed to open, to {target}");
        if let Some(r) = ready {
            touch(r, &format!("open={open} broken={broken}\n"))?;
        }
        // Runs until the lab stops it (SIGTERM).
        std::future::pending::<()>().await;
        Ok(())
    })
}

async fn answer(
    stream: tokio::net::UnixStream,
    flows: &Flows,
    target: SocketAddr,
) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(256)).read_line(&mut line).await?;
    let reply = match line.trim() {
        "flows" => {
            let now = Instant::now();
            let all = flows.lock().unwrap_or_else(|e| e.into_inner());
            let report = Report {
                target: target.to_string(),
                flows: all
                    .iter()
                    .enumerate()
                    .map(|(id, f)| FlowInfo {
                        id,
                        local: f.local.clone(),
                        seen_as: f.seen_as,
                        state: f.state,
                        echo_age_ms: f
                            .last_echo
                            .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                        echoes: f.echoes,
                        error: f.error.clone(),
                    })
                    .collect(),
            };
            serde_json::to_vec(&report)?
        }
        other => serde_json::to_vec(
            &serde_json::json!({ "error": format!("unknown request {other:?}") }),
        )?,
    };
    w.write_all(&reply).await?;
    w.shutdown().await?;
    Ok(())
}

async fn keep_flow(
    id: usize,
    target: SocketAddr,
    bind_first: bool,
    flows: Flows,
    settled: oneshot::Sender<()>,
) {
    let mut settled = Some(settled);
    let result = run_flow(id, target, bind_first, &flows, &mut settled).await;
    let error = match result {
        Ok(()) => "closed".to_string(),
        Err(e) => format!("{e:#}"),
    };
    with_flow(&flows, id, |f| {
        f.state = FlowState::Broken;
        f.error = Some(error);
    });
    if let Some(tx) = settled.take() {
        let _ = tx.send(());
    }
}

async fn run_flow(
    id: usize,
    target: SocketAddr,
    bind_first: bool,
    flows: &Flows,
    settled: &mut Option<oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let connect = async {
        if !bind_first {
            return TcpStream::connect(target).await;
        }
        // Bound (port 0) before connect: the kernel knows the source port at
        // the connect-time route lookup, so the flow's first path is already
        // its 5-tuple hash's (see `hagw lab up --help`).
        let sock = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let any: SocketAddr = if target.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        sock.bind(any)?;
        sock.connect(target).await
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow::anyhow!("connect: no answer within {CONNECT_TIMEOUT:?}"))?
        .context("connect")?;
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok().map(|a| a.to_string());
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let hello = tokio::time::timeout(CONNECT_TIMEOUT, lines.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("no hello from the server within {CONNECT_TIMEOUT:?}"))?
        .context("reading the server's hello")?
        .context("the server closed before its hello")?;
    let seen_as = hello
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.parse::<IpAddr>().ok())
        .with_context(|| format!("unexpected hello from the server: {hello:?}"))?;
    with_flow(flows, id, |f| {
        f.local = local;
        f.seen_as = Some(seen_as);
        f.state = FlowState::Open;
        f.last_echo = Some(Instant::now());
    });
    if let Some(tx) = settled.take() {
        let _ = tx.send(());
    }

    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                w.write_all(format!("ping {id} {seq}\n").as_bytes()).await.context("send")?;
                seq += 1;
            }
            line = lines.next_line() => {
                match line.context("receive")? {
                    Some(_) => with_flow(flows, id, |f| {
                        f.last_echo = Some(Instant::now());
                        f.echoes += 1;
                    }),
                    None => bail!("closed by the server"),
                }
            }
        }
    }
}

/// Asks the flow holder for its flows (from the lab's own namespace: a Unix
/// socket path works across network namespaces).
pub fn query(socket: &Path) -> anyhow::Result<Report> {
    let mut s = StdUnixStream::connect(socket)
        .with_context(|| format!("cannot reach the flow holder at {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"flows\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .context("no answer from the flow holder")?;
    serde_json::from_slice(&buf).context("the flow holder's answer is not a flow report")
}

/// Hidden subcommands' arguments.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    /// Written once listening.
    #[arg(long)]
    pub ready: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct HoldArgs {
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long)]
    pub count: usize,
    /// Where to answer "flows" requests.
    #[arg(long)]
    pub socket: PathBuf,
    /// Written once every connection has opened or failed.
    #[arg(long)]
    pub ready: Option<PathBuf>,
    /// Bind each socket (port 0) before connecting.
    #[arg(long)]
    pub bind_first: bool,
}
