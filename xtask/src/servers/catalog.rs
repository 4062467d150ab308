//! The servers: their Debian packages, ports and configuration, and the
//! command that runs each one on loopback from its suite's unpacked tree.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// A server nobody here wrote, as Debian builds it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, clap::ValueEnum)]
pub enum Kind {
    Prometheus,
    Alertmanager,
    Etcd,
    Caddy,
    Pushgateway,
    NodeExporter,
}

/// Every server, in the order they start and are reported.
pub const ALL: [Kind; 6] = [
    Kind::Prometheus,
    Kind::Alertmanager,
    Kind::Etcd,
    Kind::Caddy,
    Kind::Pushgateway,
    Kind::NodeExporter,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prometheus => "prometheus",
            Kind::Alertmanager => "alertmanager",
            Kind::Etcd => "etcd",
            Kind::Caddy => "caddy",
            Kind::Pushgateway => "pushgateway",
            Kind::NodeExporter => "node-exporter",
        }
    }

    /// Its Debian packages; the first holds the server.
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Kind::Prometheus => &["prometheus"],
            Kind::Alertmanager => &["prometheus-alertmanager"],
            // etcdctl holds the load's watch open.
            Kind::Etcd => &["etcd-server", "etcd-client"],
            Kind::Caddy => &["caddy"],
            Kind::Pushgateway => &["prometheus-pushgateway"],
            Kind::NodeExporter => &["prometheus-node-exporter"],
        }
    }

    /// The executable, inside the unpacked tree.
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Prometheus => "usr/bin/prometheus",
            Kind::Alertmanager => "usr/bin/prometheus-alertmanager",
            Kind::Etcd => "usr/bin/etcd",
            Kind::Caddy => "usr/bin/caddy",
            Kind::Pushgateway => "usr/bin/prometheus-pushgateway",
            Kind::NodeExporter => "usr/bin/prometheus-node-exporter",
        }
    }

    /// Ports it listens on: the service first; etcd's peer port, caddy's
    /// admin port second.
    pub fn port_count(self) -> usize {
        match self {
            Kind::Etcd | Kind::Caddy => 2,
            _ => 1,
        }
    }

    /// The port serving its own /metrics (caddy's is on the admin API).
    pub fn metrics_port(self, ports: &[u16]) -> u16 {
        match self {
            Kind::Caddy => ports[1],
            _ => ports[0],
        }
    }

    /// A GET on the service port that answers 2xx once it is ready.
    pub fn ready_path(self) -> &'static str {
        match self {
            Kind::Prometheus | Kind::Alertmanager | Kind::Pushgateway => "/-/ready",
            Kind::Etcd => "/health",
            Kind::Caddy => "/index.html",
            Kind::NodeExporter => "/metrics",
        }
    }
}

/// Where one server runs: its suite's unpacked tree, a folder of its own
/// for configuration and data, its ports.
pub struct Place<'a> {
    pub root: &'a Path,
    pub dir: PathBuf,
    pub ports: Vec<u16>,
}

/// Writes `kind`'s configuration into its folder and returns the command
/// that runs it. `peers` are the other servers of its suite (kind, ports):
/// prometheus scrapes them all and sends its alerts to the alertmanager.
///
/// Each runs in a mount namespace of its own where /usr/share is its
/// package's layered over the system's, as if installed: Debian's
/// alertmanager reads its default template from
/// /usr/share/prometheus/alertmanager, which the system need not have.
pub fn command(kind: Kind, place: &Place, peers: &[(Kind, Vec<u16>)]) -> anyhow::Result<Command> {
    let args = args(kind, place, peers)?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c"])
        .arg(r#"r=$1; shift; mount -t overlay overlay -o lowerdir="$r/usr/share:/usr/share" /usr/share && exec "$@""#)
        .arg("sh")
        .arg(place.root)
        .arg(place.root.join(kind.binary()))
        .args(args)
        .current_dir(&place.dir)
        // Caddy keeps its state under the XDG folders.
        .env("HOME", &place.dir)
        .env("XDG_DATA_HOME", &place.dir)
        .env("XDG_CONFIG_HOME", &place.dir);
    Ok(cmd)
}

/// `kind`'s command line, its configuration files written.
fn args(kind: Kind, place: &Place, peers: &[(Kind, Vec<u16>)]) -> anyhow::Result<Vec<String>> {
    let dir = &place.dir;
    fs::create_dir_all(dir)?;
    let at = |name: &str| dir.join(name).display().to_string();
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let port = place.ports[0];
    let args = match kind {
        Kind::Prometheus => {
            fs::write(
                dir.join("prometheus.yml"),
                prometheus_config(dir, port, peers),
            )?;
            fs::write(dir.join("rules.yml"), PROMETHEUS_RULES)?;
            vec![
                format!("--config.file={}", at("prometheus.yml")),
                format!("--storage.tsdb.path={}", at("data")),
                format!("--web.listen-address={}", listen(port)),
            ]
        }
        Kind::Alertmanager => {
            fs::write(dir.join("alertmanager.yml"), ALERTMANAGER_CONFIG)?;
            vec![
                format!("--config.file={}", at("alertmanager.yml")),
                format!("--storage.path={}", at("data")),
                format!("--web.listen-address={}", listen(port)),
                // No gossip: it would take 0.0.0.0:9094 for every instance.
                "--cluster.listen-address=".into(),
            ]
        }
        Kind::Etcd => {
            let (client, peer) = (
                format!("http://{}", listen(port)),
                format!("http://{}", listen(place.ports[1])),
            );
            vec![
                "--name=load".into(),
                format!("--data-dir={}", at("data")),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster=load={peer}"),
            ]
        }
        Kind::Caddy => {
            caddy_site(dir, port, place.ports[1])?;
            vec!["run".into(), "--config".into(), at("caddy.json")]
        }
        Kind::Pushgateway => vec![
            format!("--web.listen-address={}", listen(port)),
            format!("--persistence.file={}", at("pushed")),
            "--persistence.interval=5s".into(),
        ],
        Kind::NodeExporter => vec![
            format!("--web.listen-address={}", listen(port)),
            // Debian turns the systemd collector on; there is no systemd here.
            "--no-collector.systemd".into(),
            format!("--collector.textfile.directory={}", dir.display()),
        ],
    };
    Ok(args)
}

/// Scrapes itself and every peer each second; rules every two seconds,
/// one alert always firing, sent to the alertmanager.
fn prometheus_config(dir: &Path, port: u16, peers: &[(Kind, Vec<u16>)]) -> String {
    let mut s = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 2s}}\nrule_files: [{}]\n",
        dir.join("rules.yml").display()
    );
    if let Some((_, ports)) = peers.iter().find(|(k, _)| *k == Kind::Alertmanager) {
        let _ = writeln!(
            s,
            "alerting: {{alertmanagers: [{{static_configs: [{{targets: [\"127.0.0.1:{}\"]}}]}}]}}",
            ports[0]
        );
    }
    s += "scrape_configs:\n";
    let jobs = std::iter::once(("prometheus", port))
        .chain(peers.iter().map(|(k, p)| (k.name(), k.metrics_port(p))));
    for (job, port) in jobs {
        let _ = writeln!(
            s,
            "  - {{job_name: {job}, static_configs: [{{targets: [\"127.0.0.1:{port}\"]}}]}}"
        );
    }
    s
}

const PROMETHEUS_RULES: &str = "groups:
  - name: load
    rules:
      - {alert: AlwaysFiring, expr: vector(1), labels: {severity: none}}
      - {alert: ManyGoroutines, expr: 'go_goroutines > 20', labels: {severity: none}}
      - {record: 'job:go_goroutines:sum', expr: sum by (job) (go_goroutines)}
";

/// Every alert to a receiver that sends nothing, regrouped every two seconds.
const ALERTMANAGER_CONFIG: &str = "route:
  receiver: 'null'
  group_by: [alertname, instance]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1m
receivers:
  - name: 'null'
";

/// A static site (a small page and a 64 KiB file) on `port`, the admin
/// API (and /metrics) on `admin`; no automatic HTTPS.
fn caddy_site(dir: &Path, port: u16, admin: u16) -> anyhow::Result<()> {
    let www = dir.join("www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("index.html"), "<p>gostray load</p>\n")?;
    fs::write(www.join("big.bin"), vec![b'x'; 64 * 1024])?;
    let config = serde_json::json!({
        "admin": {"listen": format!("127.0.0.1:{admin}")},
        "apps": {"http": {"servers": {"load": {
            "listen": [format!("127.0.0.1:{port}")],
            "automatic_https": {"disable": true},
            "routes": [{"handle": [{"handler": "file_server", "root": www}]}],
        }}}},
    });
    fs::write(dir.join("caddy.json"), config.to_string())?;
    Ok(())
}
