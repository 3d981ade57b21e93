//! The pool update path: config reloads and every discovery source end here,
//! in one place that rebuilds and publishes the routing snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::discovery::{self, Discovered, SourceKind, Update, UpdateSender};
use crate::health::checker::Checkers;
use crate::snapshot::{Inputs, Snapshot};
use crate::state::Shared;
use crate::sticky::SecretRing;

/// A running source task and the settings it was started with.
type RunningSource = (String, JoinHandle<()>);

/// Builds snapshots from the config and discovered endpoints, and runs the
/// discovery sources.
pub struct PoolUpdater {
    shared: Arc<Shared>,
    discovered: Discovered,
    updates: UpdateSender,
    sources: Mutex<HashMap<(String, SourceKind), RunningSource>>,
    secrets: Mutex<HashMap<String, SecretRing>>,
    /// Pools that have had endpoints; the first endpoints of a pool count as
    /// present at start (no slow start, no wait for a first check).
    seen: Mutex<HashSet<String>>,
    /// Serializes rebuilds.
    lock: Mutex<()>,
    /// Checker tasks.
    pub checkers: Checkers,
    kube_client: Option<kube::Client>,
}

impl std::fmt::Debug for PoolUpdater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolUpdater").finish_non_exhaustive()
    }
}

impl PoolUpdater {
    /// An updater for `shared`; call [`PoolUpdater::start`] next.
    pub fn new(
        shared: Arc<Shared>,
        kube_client: Option<kube::Client>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Update>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let updater = Arc::new(Self {
            shared,
            discovered: Discovered::default(),
            updates: tx,
            sources: Mutex::default(),
            secrets: Mutex::default(),
            seen: Mutex::default(),
            lock: Mutex::new(()),
            checkers: Checkers::default(),
            kube_client,
        });
        (updater, rx)
    }

    /// Receives discovery updates until the sender side is gone.
    pub fn listen(self: &Arc<Self>, mut rx: mpsc::UnboundedReceiver<Update>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(update) = rx.recv().await {
                let Some(me) = weak.upgrade() else { return };
                if me.discovered.apply(update) {
                    // The config is read under the rebuild lock: a reload
                    // published meanwhile is never undone.
                    me.rebuild(None, false);
                }
            }
        });
    }

    /// Installs `config`: static lists, endpoint files, sources, snapshot.
    pub fn install(self: &Arc<Self>, config: Arc<Config>, start: bool) {
        for (name, pool) in &config.pools {
            self.discovered.apply(Update {
                pool: name.clone(),
                source: SourceKind::Static,
                endpoints: pool.endpoints.clone(),
            });
            if let Some(file) = &pool.discovery.file {
                // Read now so the first snapshot of this config has them.
                match discovery::file::read(&file.path) {
                    Ok(endpoints) => {
                        self.discovered.apply(Update {
                            pool: name.clone(),
                            source: SourceKind::File,
                            endpoints,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(pool = %name, error = %e, "endpoints file not usable yet")
                    }
                }
            }
        }
        self.discovered.retain(|pool, kind| {
            config.pools.get(pool).is_some_and(|p| match kind {
                SourceKind::Static => true,
                SourceKind::File => p.discovery.file.is_some(),
                SourceKind::Dns => p.discovery.dns.is_some(),
                SourceKind::Kubernetes => p.discovery.kubernetes.is_some(),
            })
        });
        self.rebuild(Some(config.clone()), start);
        self.reconcile_sources(&config);
    }

    /// Builds and publishes a snapshot of `config` (the current one when
    /// `None`) with the endpoints known now.
    pub fn rebuild(&self, config: Option<Arc<Config>>, start: bool) {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let config = config.unwrap_or_else(|| self.shared.snapshot.load().config.clone());
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let lists = |pool: &str| self.discovered.endpoints(pool);
        let initial = |pool: &str| start || !seen.contains(pool);
        let now = std::time::Instant::now();
        let secrets = |pool: &str, sticky: &crate::config::Sticky| {
            let configured = sticky.secret.as_deref();
            let mut rings = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
            let ring = rings.entry(pool.to_string()).or_insert_with(|| {
                if configured.is_none() {
                    tracing::warn!(
                        pool,
                        "sticky sessions are signed with a secret of this process only: another balancer replica, or this one after a restart, will not honour its cookies; set stickySessions.secretFile to a secret shared by every replica (the Helm chart does)"
                    );
                }
                SecretRing::new(configured)
            });
            let was_local = ring.is_local();
            let keys = ring.update(configured, sticky.ttl, now);
            if !was_local && ring.is_local() {
                tracing::warn!(
                    pool,
                    "the sticky-session secret was removed from the config; signing with a secret of this process only"
                );
            }
            keys
        };
        let inputs = Inputs {
            endpoints: &self.shared.endpoints,
            pools: &self.shared.pools,
            routes: &self.shared.routes,
            endpoint_lists: &lists,
            initial: &initial,
            secrets: &secrets,
        };
        let snapshot = Snapshot::build(config, &inputs);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            for p in snapshot.pools.iter().filter(|p| !p.members.is_empty()) {
                seen.insert(p.settings.name.clone());
            }
        }
        let members = snapshot.members();
        let pools: Vec<_> = snapshot.pools.iter().map(|p| p.live.clone()).collect();
        self.shared.snapshot.store(Arc::new(snapshot));
        self.shared.endpoints.retain(&members, Instant::now());
        self.checkers.reconcile(&self.shared);
        // New capacity may have arrived: let waiting requests have it.
        for live in pools {
            live.slot_freed();
            live.capacity.notify_waiters();
        }
    }

    fn reconcile_sources(self: &Arc<Self>, config: &Config) {
        let mut wanted: HashMap<(String, SourceKind), String> = HashMap::new();
        for (name, pool) in &config.pools {
            let d = &pool.discovery;
            if let Some(f) = &d.file {
                wanted.insert((name.clone(), SourceKind::File), format!("{f:?}"));
            }
            if let Some(dns) = &d.dns {
                wanted.insert((name.clone(), SourceKind::Dns), format!("{dns:?}"));
            }
            if let Some(k) = &d.kubernetes {
                wanted.insert((name.clone(), SourceKind::Kubernetes), format!("{k:?}"));
            }
        }
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.retain(|key, (settings, task)| {
            let keep = wanted.get(key) == Some(settings) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, settings) in wanted {
            if sources.contains_key(&key) {
                continue;
            }
            let pool = &config.pools[&key.0];
            let tx = self.updates.clone();
            let name = key.0.clone();
            let task = match key.1 {
                SourceKind::File => {
                    let f = pool.discovery.file.clone().expect("wanted");
                    tokio::spawn(discovery::file::run(name, f.path, f.interval, tx))
                }
                SourceKind::Dns => {
                    let d = pool.discovery.dns.clone().expect("wanted");
                    tokio::spawn(discovery::dns::run(name, d, tx))
                }
                SourceKind::Kubernetes => {
                    let k = pool.discovery.kubernetes.clone().expect("wanted");
                    let client = self.kube_client.clone();
                    tokio::spawn(async move {
                        let client = match client {
                            Some(c) => c,
                            None => match kube::Client::try_default().await {
                                Ok(c) => c,
                                Err(e) => {
                                    tracing::error!(pool = %name, error = %e, "cannot reach the Kubernetes API; EndpointSlice discovery is off");
                                    return;
                                }
                            },
                        };
                        discovery::kubernetes::run(name, k, client, tx).await;
                    })
                }
                SourceKind::Static => continue,
            };
            sources.insert(key, (settings, task));
        }
    }

    /// Forgets drained endpoints, serialized with rebuilds so that a state a
    /// rebuild just brought back is never forgotten.
    pub fn sweep(&self) -> usize {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = self.shared.snapshot.load();
        let now = Instant::now();
        for pool in &snapshot.pools {
            pool.live.sessions.sweep();
            pool.live.metrics.starting.set(pool.starting(now) as i64);
        }
        self.shared.endpoints.sweep(&snapshot.members(), now)
    }

    /// Stops every source and checker.
    pub fn stop(&self) {
        for (_, (_, task)) in self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            task.abort();
        }
        self.checkers.stop();
    }
}
