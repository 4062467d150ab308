//! Starting a suite's servers: ports from the range, configuration and
//! command from the catalog, each server's load, and the wait until each
//! answers.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{
    catalog::{self, Kind, Place},
    debian::{Suite, Unpacked},
    http::{self, Counts},
    load::Load,
    watch::Seen,
    Watched,
};
use crate::util::{done, step, Guard};

/// Starts `kinds` from one suite's tree, each with its load.
pub fn start_suite(
    suite: Suite,
    tree: &Unpacked,
    kinds: &[Kind],
    dir: &Path,
    ports: &mut Ports,
    load: &mut Load,
) -> anyhow::Result<Vec<Watched>> {
    let t = step(&format!(
        "starting {} servers of {} ({})",
        kinds.len(),
        suite.release(),
        suite.name()
    ));
    let mut planned = Vec::new();
    for &kind in kinds {
        planned.push((
            kind,
            (0..kind.port_count())
                .map(|_| ports.take())
                .collect::<anyhow::Result<Vec<u16>>>()?,
        ));
    }
    let mut watched = Vec::new();
    for (kind, own) in &planned {
        let place = Place {
            root: &tree.root,
            dir: dir.join(format!("{}-{}", suite.name(), kind.name())),
            ports: own.clone(),
        };
        let peers: Vec<(Kind, Vec<u16>)> =
            planned.iter().filter(|(k, _)| k != kind).cloned().collect();
        let server = start_server(*kind, &place, &peers)?;
        let counts = Arc::new(Counts::default());
        load.add(*kind, &tree.root, own, counts.clone())?;
        let version = tree
            .packages
            .iter()
            .find(|(p, _)| p == kind.packages()[0])
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        eprintln!(
            "    {} {version}: pid {}, port {}",
            kind.name(),
            server.0.id(),
            own[0]
        );
        watched.push(Watched {
            suite,
            kind: *kind,
            version,
            counts,
            seen: Seen::default(),
            died: None,
            folder: place.dir,
            server,
            agent: None,
        });
    }
    done(t);
    Ok(watched)
}

/// Runs one server and waits until it answers on its service port.
fn start_server(kind: Kind, place: &Place, peers: &[(Kind, Vec<u16>)]) -> anyhow::Result<Guard> {
    let log_path = place.dir.join("server.log");
    let mut cmd = catalog::command(kind, place, peers)?;
    let log = File::create(&log_path)?;
    let mut server = Guard(
        cmd.stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?,
    );
    let tail = || {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    };
    let mut conn = http::Conn::new(place.ports[0]);
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        if matches!(conn.get(kind.ready_path()), Ok((200..=299, _))) {
            break;
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            bail!("{} exited ({status}):\n{}", kind.name(), tail());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer {} within 60 s:\n{}",
                kind.name(),
                kind.ready_path(),
                tail()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    // unshare and sh exec into the server: the pid the agent watches is its own.
    let exe: PathBuf = fs::read_link(format!("/proc/{}/exe", server.0.id()))?;
    if exe != place.root.join(kind.binary()) {
        bail!(
            "pid {} runs {}, not {}",
            server.0.id(),
            exe.display(),
            kind.binary()
        );
    }
    Ok(server)
}

/// Ports handed out in order from a range, each free on loopback when taken.
pub struct Ports {
    next: u16,
    end: u16,
}

impl Ports {
    pub fn new(start: u16, end: u16) -> Self {
        Self { next: start, end }
    }

    pub fn take(&mut self) -> anyhow::Result<u16> {
        while self.next < self.end {
            let port = self.next;
            self.next += 1;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        bail!("no free port left below {}", self.end)
    }
}
