//! The load on each server, for the whole run: a thread per server sending
//! a bounded number of requests per tick to 127.0.0.1 only, on kept-alive
//! connections, until the run stops it.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{
    catalog::Kind,
    http::{Conn, Counts},
    requests::{alertmanager, caddy, etcd, etcd_watch, prometheus, pushgateway},
};
use crate::util::Guard;

/// The load threads and the helper processes they hold open; stopped and
/// joined when dropped.
#[derive(Default)]
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    helpers: Vec<Guard>,
}

impl Load {
    /// Starts the load on a `kind` server listening on `ports`; `root` is
    /// its suite's unpacked tree (for etcdctl).
    pub fn add(
        &mut self,
        kind: Kind,
        root: &Path,
        ports: &[u16],
        counts: Arc<Counts>,
    ) -> anyhow::Result<()> {
        let port = ports[0];
        match kind {
            Kind::Prometheus => {
                let mut conn = Conn::new(port);
                self.every(Duration::from_secs(1), move |n| {
                    prometheus(&counts, &mut conn, n);
                });
            }
            Kind::Alertmanager => {
                let (mut conn, mut silence) = (Conn::new(port), None);
                self.every(Duration::from_secs(3), move |n| {
                    alertmanager(&counts, &mut conn, &mut silence, n);
                });
            }
            Kind::Etcd => {
                self.helpers.push(etcd_watch(root, port)?);
                let mut conn = Conn::new(port);
                self.every(Duration::from_secs(1), move |n| etcd(&counts, &mut conn, n));
            }
            Kind::Caddy => {
                let mut conns: Vec<Conn> = (0..4).map(|_| Conn::new(port)).collect();
                self.every(Duration::from_millis(50), move |n| {
                    caddy(&counts, &mut conns, n);
                });
            }
            Kind::Pushgateway => {
                let mut conn = Conn::new(port);
                self.every(Duration::from_secs(2), move |n| {
                    pushgateway(&counts, &mut conn, n);
                });
            }
            Kind::NodeExporter => {
                let mut conn = Conn::new(port);
                self.every(Duration::from_secs(5), move |_| {
                    counts.get(&mut conn, "/metrics");
                });
            }
        }
        Ok(())
    }

    /// Runs `tick(n)` every `period` on a thread of its own until stopped.
    fn every(&mut self, period: Duration, mut tick: impl FnMut(u64) + Send + 'static) {
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                tick(n);
                n += 1;
                let next = start + period * n as u32;
                while !stop.load(Relaxed) && Instant::now() < next {
                    thread::sleep(
                        next.saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(100)),
                    );
                }
            }
        }));
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
