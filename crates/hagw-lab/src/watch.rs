//! The host's default route, watched over netlink from a thread inside its
//! namespace: `hagw lab fail` and `heal` time the change from the moment the
//! cut is in place to the kernel's route notification, with no polling (a
//! poll loop of `ip route` processes adds 5-12 ms of its own on 2 cores).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hagw_kernel::netlink::events::{self, Event};
use hagw_kernel::netlink::{parse_route, NlSocket, RTMGRP_IPV4_ROUTE};
use nix::sched::{setns, CloneFlags};

const RT_TABLE_MAIN: u32 = 254;

/// A watch started before the change it times.
pub struct Watch {
    done: mpsc::Receiver<anyhow::Result<Option<Instant>>>,
}

impl Watch {
    /// Subscribes to `ns`'s route changes, then returns: from then on the
    /// first moment the main table's IPv4 default next hops satisfy `want`
    /// is recorded. Fails if they already do (nothing would be timed).
    pub fn start(
        ns: &str,
        want: impl Fn(&[Ipv4Addr]) -> bool + Send + 'static,
        timeout: Duration,
    ) -> anyhow::Result<Watch> {
        let path = format!("/run/netns/{ns}");
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        thread::Builder::new()
            .name("hagw-lab-watch".into())
            .spawn(move || {
                let r = watch(&path, &want, timeout, &ready_tx);
                if let Err(e) = &r {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                }
                let _ = done_tx.send(r);
            })
            .context("cannot start the route watcher thread")?;
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the route watcher did not start")??;
        Ok(Watch { done })
    }

    /// When `want` first held; `None` if the timeout passed first.
    pub fn wait(self) -> anyhow::Result<Option<Instant>> {
        self.done.recv().context("the route watcher thread died")?
    }
}

fn watch(
    path: &str,
    want: &dyn Fn(&[Ipv4Addr]) -> bool,
    timeout: Duration,
    ready: &mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<Option<Instant>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter {path}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the watcher's runtime")?;
    rt.block_on(async {
        let mut events = NlSocket::open(RTMGRP_IPV4_ROUTE)?;
        let mut dumps = NlSocket::open(0)?;
        let now = defaults(&mut dumps).await?;
        if want(&now) {
            bail!("the default route already is as awaited (next hops {now:?})");
        }
        let _ = ready.send(Ok(()));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = tokio::time::timeout_at(deadline, events.recv_raw()).await;
            let at = Instant::now();
            match got {
                Err(_) => return Ok(None),
                // An overrun lost events: the dump below tells the state.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Ok(Err(e)) => return Err(e).context("route event socket"),
                // Only a main-table default route change can be it (not,
                // say, hagw's pinning tables).
                Ok(Ok(buf)) if !main_default_changed(&buf) => continue,
                Ok(Ok(_)) => {}
            }
            if want(&defaults(&mut dumps).await?) {
                return Ok(Some(at));
            }
        }
    })
}

fn main_default_changed(buf: &[u8]) -> bool {
    events::decode(buf).into_iter().any(|e| match e {
        Event::RouteAdded(r) | Event::RouteDeleted(r) => {
            r.table == RT_TABLE_MAIN && r.prefix.prefix_len() == 0
        }
        _ => false,
    })
}

/// The IPv4 gateways of the main table's default routes.
async fn defaults(sock: &mut NlSocket) -> anyhow::Result<Vec<Ipv4Addr>> {
    let routes = sock.dump_routes().await.context("route dump")?;
    Ok(routes
        .into_iter()
        .filter_map(parse_route)
        .filter(|r| r.table == RT_TABLE_MAIN && r.prefix.prefix_len() == 0)
        .flat_map(|r| r.nexthops)
        .filter_map(|n| match n.addr {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .collect())
}
