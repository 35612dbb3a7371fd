//! The loop every reconciler runs in.
//!
//! A reconciler holds a desired state, observes the kernel through netlink
//! events and dumps, and makes the kernel match. What differs between them
//! (FIB routes, pinning rules, policy routing tables, and next addresses,
//! bridges, NAT) is what they want and how they compare; the loop is the same:
//! commands from a cheap cloneable [`Handle`], event datagrams (an overrun of
//! the event socket means events were lost: the reconciler must resync), its
//! own deadline (coalesced resyncs, retries), a periodic safety resync, then
//! one [`Reconciler::apply`] pass; snapshots are answered after that pass, so
//! they show what pending changes did; shutdown comes last, with or without
//! removing what the reconciler installed.

use std::{future::Future, time::Duration};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::error;

use crate::netlink::NlSocket;

/// Period of the safety resync, unless a reconciler says otherwise.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(30);

/// What a reconciler plugs into [`spawn`].
pub trait Reconciler: Send + 'static {
    /// Changes of the desired state.
    type Cmd: Send + 'static;
    /// What [`Handle::snapshot`] returns.
    type Snapshot: Clone + Default + Send + 'static;

    /// A datagram from the event socket.
    fn on_datagram(&mut self, _buf: &[u8]) {}
    /// The event socket overran: events were lost.
    fn on_overrun(&mut self) {}
    fn on_command(&mut self, cmd: Self::Cmd);
    /// When [`Reconciler::on_deadline`] is due next.
    fn deadline(&self) -> Option<Instant>;
    /// The deadline passed (the reconciler clears or moves it).
    fn on_deadline(&mut self) -> impl Future<Output = ()> + Send;
    /// The periodic safety resync.
    fn on_tick(&mut self) -> impl Future<Output = ()> + Send;
    /// Converge the kernel on the desired state; runs after every input.
    fn apply(&mut self) -> impl Future<Output = ()> + Send;
    fn snapshot(&self) -> Self::Snapshot;
    /// Stop; `remove`: delete what this reconciler installed first.
    fn shutdown(&mut self, remove: bool) -> impl Future<Output = ()> + Send;
    /// Every handle is gone (the daemon ended without a shutdown): leave the
    /// kernel as it is, or finish pending work.
    fn on_orphaned(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
    fn resync_period(&self) -> Duration {
        RESYNC_PERIOD
    }
}

enum Msg<C, S> {
    Cmd(C),
    Snapshot(oneshot::Sender<S>),
    Shutdown(bool, oneshot::Sender<()>),
}

/// A handle to a running reconciler: sending never blocks.
pub struct Handle<C, S> {
    tx: mpsc::UnboundedSender<Msg<C, S>>,
}

impl<C, S> Clone for Handle<C, S> {
    fn clone(&self) -> Self {
        Handle {
            tx: self.tx.clone(),
        }
    }
}

impl<C, S> std::fmt::Debug for Handle<C, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reconcile::Handle")
    }
}

impl<C, S: Default> Handle<C, S> {
    /// Queues a command (bursts are coalesced by the reconciler).
    pub fn send(&self, cmd: C) {
        let _ = self.tx.send(Msg::Cmd(cmd));
    }

    /// The reconciler's state after pending commands are applied.
    pub async fn snapshot(&self) -> S {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Snapshot(tx)).is_err() {
            return S::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Stops the reconciler after pending commands; with `remove`, it deletes
    /// what it installed first.
    pub async fn shutdown(&self, remove: bool) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(remove, tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Spawns `r` on the current tokio runtime, reading `events` (a socket
/// subscribed to the groups it needs) if given.
pub fn spawn<R: Reconciler>(r: R, events: Option<NlSocket>) -> Handle<R::Cmd, R::Snapshot> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(r, rx, events));
    Handle { tx }
}

async fn next_datagram(events: &mut Option<NlSocket>) -> std::io::Result<Vec<u8>> {
    match events {
        Some(s) => s.recv_raw().await,
        None => std::future::pending().await,
    }
}

async fn run<R: Reconciler>(
    mut r: R,
    mut rx: mpsc::UnboundedReceiver<Msg<R::Cmd, R::Snapshot>>,
    mut events: Option<NlSocket>,
) {
    let period = r.resync_period();
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut snaps = Vec::new();
    let mut shutdown = None;
    loop {
        let deadline = r.deadline();
        tokio::select! {
            biased;
            dgram = next_datagram(&mut events) => match dgram {
                Ok(buf) => r.on_datagram(&buf),
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => r.on_overrun(),
                Err(e) => {
                    error!(error = %e, "netlink event socket failed");
                    r.on_overrun();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            msg = rx.recv() => {
                let Some(msg) = msg else {
                    r.on_orphaned().await;
                    return;
                };
                let mut next = Some(msg);
                while let Some(m) = next {
                    match m {
                        Msg::Cmd(c) => r.on_command(c),
                        Msg::Snapshot(tx) => snaps.push(tx),
                        Msg::Shutdown(remove, tx) => {
                            shutdown.get_or_insert((remove, tx));
                        }
                    }
                    next = rx.try_recv().ok();
                }
            },
            _ = async { match deadline {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            } } => r.on_deadline().await,
            _ = tick.tick() => r.on_tick().await,
        }
        r.apply().await;
        if !snaps.is_empty() {
            let snap = r.snapshot();
            for tx in snaps.drain(..) {
                let _ = tx.send(snap.clone());
            }
        }
        if let Some((remove, tx)) = shutdown.take() {
            r.shutdown(remove).await;
            let _ = tx.send(());
            return;
        }
    }
}
