//! Starting, reloading and stopping a balancer.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError};
use crate::endpoint::Endpoints;
use crate::listener::BoundListener;
use crate::metrics::{Metrics, ResultLabels};
use crate::pool_update::PoolUpdater;
use crate::snapshot::{Inputs, Pools, Routes, Snapshot};
use crate::state::Shared;
use crate::sticky::StickySecret;

/// Options that are not part of the config file.
#[derive(Clone)]
pub struct Options {
    /// How often the config and certificate files are checked for changes
    /// (`None` turns file watching off; SIGHUP and [`Balancer::reload`] still work).
    pub watch_interval: Option<Duration>,
    /// The Kubernetes client for EndpointSlice discovery; when `None` one is
    /// made from the environment (in-cluster or kubeconfig) when needed.
    pub kube_client: Option<kube::Client>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("watch_interval", &self.watch_interval)
            .field("kube_client", &self.kube_client.is_some())
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            watch_interval: Some(Duration::from_secs(1)),
            kube_client: None,
        }
    }
}

/// A running balancer.
pub struct Balancer {
    shared: Arc<Shared>,
    config_path: PathBuf,
    listeners: Vec<Arc<BoundListener>>,
    admin_addr: Option<SocketAddr>,
    admin_stop: CancellationToken,
    control_stop: CancellationToken,
    updater: Arc<PoolUpdater>,
    reload_lock: Mutex<u64>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// Loads `config_path`, binds every listener and starts serving.
    pub async fn start(config_path: &Path, options: Options) -> anyhow::Result<Arc<Self>> {
        let config = config::load(config_path)?;
        let fingerprint = fingerprint(&config);
        let metrics = Metrics::default();
        let endpoints = Arc::new(Endpoints::new(metrics.clone()));
        let pools = Pools::new(metrics.clone());
        let routes = Routes::default();
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let bound = BoundListener::bind(l)
                .await
                .with_context(|| format!("cannot bind listener `{}` to {}", l.name, l.bind))?;
            listeners.push(Arc::new(bound));
        }
        let admin_tcp = match &config.admin {
            Some(a) => Some(
                TcpListener::bind(a.bind)
                    .await
                    .with_context(|| format!("cannot bind the admin listener to {}", a.bind))?,
            ),
            None => None,
        };
        let config = Arc::new(config);
        // A placeholder without endpoints; the real first snapshot is
        // installed below, before any listener serves.
        let empty = Snapshot::build(
            config.clone(),
            &Inputs {
                endpoints: &endpoints,
                pools: &pools,
                routes: &routes,
                endpoint_lists: &|_| Vec::new(),
                initial: &|_| true,
                secrets: &|_, _| crate::sticky::Keys {
                    current: StickySecret::random(),
                    previous: None,
                },
            },
        );
        let registry: Arc<Registry> = Arc::new(metrics.registry(endpoints.clone()));
        let mut shared = Shared::new(empty, endpoints, pools, routes, metrics);
        let open_files = crate::connection::raise_open_file_limit();
        shared.default_max_connections = crate::connection::default_max_connections(open_files);
        let shared = Arc::new(shared);
        let (updater, updates) = PoolUpdater::new(shared.clone(), options.kube_client.clone());
        updater.install(config, true);
        updater.listen(updates);
        record_reload(&shared, true);

        let admin_addr = admin_tcp
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let balancer = Arc::new(Self {
            shared: shared.clone(),
            config_path: config_path.to_path_buf(),
            listeners,
            admin_addr,
            admin_stop: CancellationToken::new(),
            control_stop: CancellationToken::new(),
            updater,
            reload_lock: Mutex::new(fingerprint),
        });
        if let Some(tcp) = admin_tcp {
            tokio::spawn(crate::admin::serve(
                tcp,
                shared.clone(),
                registry,
                balancer.admin_stop.clone(),
            ));
        }
        for l in &balancer.listeners {
            tokio::spawn(l.clone().serve(shared.clone()));
        }
        tokio::spawn(sweep(
            balancer.updater.clone(),
            balancer.control_stop.clone(),
        ));
        if let Some(every) = options.watch_interval {
            tokio::spawn(watch(
                Arc::downgrade(&balancer),
                every,
                balancer.control_stop.clone(),
            ));
        }
        shared.set_ready(true);
        for l in &balancer.listeners {
            tracing::info!(listener = %l.name, address = %l.local_addr, tls = l.resolver.is_some(), "listening");
        }
        if let Some(a) = admin_addr {
            tracing::info!(address = %a, "admin listening");
        }
        Ok(balancer)
    }

    /// The state shared with the request path.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The bound address of a listener.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.local_addr)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Re-reads the config file. On error the running config stays in force,
    /// the error is logged and counted, and returned.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let mut last = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Fingerprint the files before reading them: a change made while
        // loading then differs from what is recorded and the watcher reloads
        // again (a fingerprint taken after loading could record content that
        // was never applied, and the watcher would never pick it up).
        let before = fingerprint(&self.shared.snapshot.load().config);
        match config::load(&self.config_path) {
            Err(e) => {
                record_reload(&self.shared, false);
                tracing::error!(error = %e, "config reload rejected; the previous config keeps serving");
                Err(e)
            }
            Ok(config) => {
                // Validation bounds every value, so applying should never
                // panic; if it does anyway, the reload fails like an invalid
                // file instead of taking the watcher or the process down, and
                // the previous config is applied again (the panic may have
                // come after the new snapshot was published).
                let previous = self.shared.snapshot.load().config.clone();
                let applied =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply(config)));
                if let Err(panic) = applied {
                    let what = panic_message(panic.as_ref());
                    let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.apply((*previous).clone())
                    }));
                    if restored.is_err() {
                        tracing::error!("restoring the previous config failed too");
                    }
                    record_reload(&self.shared, false);
                    tracing::error!(error = %what, "config reload failed while applying; the previous config keeps serving");
                    return Err(ConfigError {
                        file: self.config_path.clone(),
                        field: String::new(),
                        problem: format!("applying the config failed: {what}"),
                    });
                }
                *last = before;
                record_reload(&self.shared, true);
                tracing::info!(file = %self.config_path.display(), "config reloaded");
                Ok(())
            }
        }
    }

    fn apply(&self, config: Config) {
        for l in &config.listeners {
            match self.listeners.iter().find(|b| b.name == l.name) {
                Some(bound) => bound.update(l),
                None => {
                    tracing::warn!(listener = %l.name, "a new listener needs a restart to bind")
                }
            }
        }
        let current = self.shared.snapshot.load_full();
        if config.admin.as_ref().map(|a| a.bind) != current.config.admin.as_ref().map(|a| a.bind) {
            tracing::warn!("changing the admin bind address needs a restart");
        }
        self.updater.install(Arc::new(config), false);
    }

    /// Drains and stops: readiness turns false, after `shutdown.delay` the
    /// listeners stop accepting, open connections finish their requests
    /// (upgraded ones included) within `shutdown.drainTimeout`, then the rest
    /// is closed. Returns whether everything drained in time.
    pub async fn shutdown(&self) -> bool {
        let settings = self.shared.snapshot.load().config.shutdown.clone();
        self.shared.set_ready(false);
        tracing::info!(delay = ?settings.delay, drain_timeout = ?settings.drain_timeout, "shutting down");
        tokio::time::sleep(settings.delay).await;
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        let drained = tokio::time::timeout(settings.drain_timeout, self.shared.tasks.wait())
            .await
            .is_ok();
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!(
                open = self.shared.tasks.len(),
                "drain timeout reached; closing the remaining connections"
            );
        }
        self.control_stop.cancel();
        self.updater.stop();
        self.admin_stop.cancel();
        drained
    }
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

fn record_reload(shared: &Shared, ok: bool) {
    let m = &shared.metrics;
    m.config_reloads
        .get_or_create(&ResultLabels {
            result: if ok { "success" } else { "failure" },
        })
        .inc();
    m.config_last_reload_successful.set(i64::from(ok));
    if ok {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        m.config_last_reload_success_timestamp.set(now as i64);
    }
}

/// Files whose change triggers a reload: the config and its certificates.
fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.source.clone()];
    for l in &config.listeners {
        for c in l.tls.iter().flat_map(|t| &t.certificates) {
            files.push(c.cert_file.clone());
            files.push(c.key_file.clone());
        }
    }
    files
}

fn fingerprint_files(files: &[PathBuf]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        std::fs::read(f).ok().hash(&mut h);
    }
    h.finish()
}

fn fingerprint(config: &Config) -> u64 {
    fingerprint_files(&watched_files(config))
}

/// Polls the config and certificate files and reloads when their content
/// changes. Polling (rather than inotify) also sees Kubernetes ConfigMap and
/// Secret updates, which swap a symlink.
async fn watch(balancer: std::sync::Weak<Balancer>, every: Duration, stop: CancellationToken) {
    let mut last_seen: Option<u64> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(b) = balancer.upgrade() else { return };
        let snapshot = b.shared.snapshot.load_full();
        let now = fingerprint_files(&watched_files(&snapshot.config));
        let loaded = *b.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Reload when the files differ from what is loaded, once per distinct content.
        if now != loaded && last_seen != Some(now) {
            last_seen = Some(now);
            let _ = b.reload();
        }
    }
}

async fn sweep(updater: Arc<PoolUpdater>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let gone = updater.sweep();
        if gone > 0 {
            tracing::info!(endpoints = gone, "drained endpoints removed");
        }
    }
}
