//! Endpoint discovery: every source (static list, file, DNS, Kubernetes
//! EndpointSlices) reports full endpoint lists for one pool into the same
//! update path, which rebuilds the routing snapshot. An endpoint that
//! disappears drains; it is never cut.

pub mod dns;
pub mod file;
pub mod kubernetes;

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::config::EndpointSpec;

/// Where a list of endpoints came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// `endpoints.static`.
    Static,
    /// `endpoints.file`.
    File,
    /// `endpoints.dns`.
    Dns,
    /// `endpoints.kubernetes`.
    Kubernetes,
}

impl SourceKind {
    /// Name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::File => "file",
            Self::Dns => "dns",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// A full endpoint list from one source of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Pool name.
    pub pool: String,
    /// The source.
    pub source: SourceKind,
    /// Every endpoint the source knows now.
    pub endpoints: Vec<EndpointSpec>,
}

/// Which of two reports of one address wins: ready (0) over draining (1)
/// over starting (2), whichever source or slice says so.
pub(crate) fn rank(draining: bool, starting: bool) -> u8 {
    match (draining, starting) {
        (false, false) => 0,
        (true, _) => 1,
        (false, true) => 2,
    }
}

/// Sends updates to the pool update path.
pub type UpdateSender = mpsc::UnboundedSender<Update>;

/// The latest list of every (pool, source).
#[derive(Debug, Default)]
pub struct Discovered {
    lists: Mutex<HashMap<(String, SourceKind), Vec<EndpointSpec>>>,
}

impl Discovered {
    /// Records an update; returns whether it changed anything.
    pub fn apply(&self, update: Update) -> bool {
        let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        let key = (update.pool, update.source);
        if lists.get(&key) == Some(&update.endpoints) {
            return false;
        }
        lists.insert(key, update.endpoints);
        true
    }

    /// Forgets sources that are no longer configured.
    pub fn retain(&self, keep: impl Fn(&str, SourceKind) -> bool) {
        let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        lists.retain(|(pool, kind), _| keep(pool, *kind));
    }

    /// The union of every source's list for `pool`: an address reported
    /// twice keeps the first source's weight, and is ready if any source
    /// says so, else draining if any says so, else starting.
    pub fn endpoints(&self, pool: &str) -> Vec<EndpointSpec> {
        let lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<_> = lists.keys().filter(|(p, _)| p == pool).collect();
        keys.sort();
        let mut out: Vec<EndpointSpec> = Vec::new();
        for key in keys {
            for e in &lists[key] {
                match out.iter_mut().find(|o| o.address == e.address) {
                    Some(existing) => {
                        if rank(e.draining, e.starting) < rank(existing.draining, existing.starting)
                        {
                            existing.draining = e.draining;
                            existing.starting = e.starting;
                        }
                    }
                    None => out.push(e.clone()),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(address: &str, weight: u32, draining: bool) -> EndpointSpec {
        EndpointSpec {
            address: address.to_string(),
            weight,
            draining,
            starting: false,
        }
    }

    #[test]
    fn union_of_sources() {
        let d = Discovered::default();
        assert!(d.apply(Update {
            pool: "p".into(),
            source: SourceKind::Static,
            endpoints: vec![e("a:1", 100, false)]
        }));
        assert!(d.apply(Update {
            pool: "p".into(),
            source: SourceKind::Dns,
            endpoints: vec![e("a:1", 5, true), e("b:1", 100, true)],
        }));
        assert!(!d.apply(Update {
            pool: "p".into(),
            source: SourceKind::Dns,
            endpoints: vec![e("a:1", 5, true), e("b:1", 100, true)],
        }));
        assert_eq!(
            d.endpoints("p"),
            vec![e("a:1", 100, false), e("b:1", 100, true)]
        );
        assert!(d.endpoints("q").is_empty());
        d.retain(|_, kind| kind != SourceKind::Dns);
        assert_eq!(d.endpoints("p"), vec![e("a:1", 100, false)]);
    }

    #[test]
    fn starting_only_when_every_source_says_so() {
        let d = Discovered::default();
        let starting = |address: &str| EndpointSpec {
            starting: true,
            ..e(address, 100, false)
        };
        d.apply(Update {
            pool: "p".into(),
            source: SourceKind::File,
            endpoints: vec![starting("a:1"), starting("b:1")],
        });
        d.apply(Update {
            pool: "p".into(),
            source: SourceKind::Static,
            endpoints: vec![e("a:1", 100, false)],
        });
        assert_eq!(
            d.endpoints("p"),
            vec![e("a:1", 100, false), starting("b:1")]
        );
    }
}
