//! `endpoints.kubernetes`: discovery.k8s.io/v1 EndpointSlices of a Service,
//! followed with kube's watcher. Ready endpoints take traffic; endpoints that
//! are `serving` and `terminating` drain (sticky sessions keep reaching them
//! until the pool's drain timeout; new sessions go elsewhere); endpoints
//! that are neither ready nor terminating are starting pods (no traffic; new
//! sessions may wait for them, see `stickySessions.sessionPlacement`).

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::{SourceKind, Update, UpdateSender};
use crate::config::{DEFAULT_WEIGHT, EndpointSpec, KubernetesPort, KubernetesSource};

/// The endpoints of a set of slices: ready ones active, serving-and-terminating
/// ones draining, not-ready and not-terminating ones starting, the rest left
/// out. Sorted by address.
pub fn endpoints_of<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: &KubernetesPort,
) -> Vec<EndpointSpec> {
    // Address → (draining, starting); "ready" in any slice wins.
    let mut out: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for slice in slices {
        let number = match port {
            KubernetesPort::Number(n) => Some(i32::from(*n)),
            KubernetesPort::Name(name) => slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| p.port),
        };
        let Some(number) = number else { continue };
        for e in &slice.endpoints {
            let c = e.conditions.as_ref();
            // The API says an unknown `ready` is to be read as ready.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let state = match (ready && !terminating, serving && terminating, terminating) {
                (true, _, _) => (false, false),
                (false, true, _) => (true, false),
                (false, false, false) => (false, true),
                (false, false, true) => continue,
            };
            for ip in &e.addresses {
                let address = if ip.contains(':') {
                    format!("[{ip}]:{number}")
                } else {
                    format!("{ip}:{number}")
                };
                let entry = out.entry(address).or_insert(state);
                if super::rank(state.0, state.1) < super::rank(entry.0, entry.1) {
                    *entry = state;
                }
            }
        }
    }
    out.into_iter()
        .map(|(address, (draining, starting))| EndpointSpec {
            address,
            weight: DEFAULT_WEIGHT,
            draining,
            starting,
        })
        .collect()
}

/// Watches the Service's slices and sends the endpoint list on every change.
pub async fn run(pool: String, settings: KubernetesSource, client: Client, updates: UpdateSender) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &settings.namespace);
    let config = watcher::Config::default()
        .labels(&format!("kubernetes.io/service-name={}", settings.service));
    let mut stream = watcher::watcher(api, config).boxed();
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut init: Option<BTreeMap<String, EndpointSlice>> = None;
    let mut last: Option<Vec<EndpointSpec>> = None;
    while let Some(event) = stream.next().await {
        let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        match event {
            Ok(Event::Init) => init = Some(BTreeMap::new()),
            Ok(Event::InitApply(s)) => {
                init.get_or_insert_with(BTreeMap::new).insert(name(&s), s);
            }
            Ok(Event::InitDone) => slices = init.take().unwrap_or_default(),
            Ok(Event::Apply(s)) => {
                slices.insert(name(&s), s);
            }
            Ok(Event::Delete(s)) => {
                slices.remove(&name(&s));
            }
            Err(e) => {
                tracing::warn!(%pool, service = %settings.service, error = %e, "EndpointSlice watch failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        }
        if init.is_some() {
            continue;
        }
        let endpoints = endpoints_of(slices.values(), &settings.port);
        if last.as_ref() != Some(&endpoints) {
            tracing::info!(
                %pool,
                service = %settings.service,
                ready = endpoints.iter().filter(|e| !e.draining && !e.starting).count(),
                draining = endpoints.iter().filter(|e| e.draining).count(),
                starting = endpoints.iter().filter(|e| e.starting).count(),
                "EndpointSlices changed"
            );
            last = Some(endpoints.clone());
            if updates
                .send(Update {
                    pool: pool.clone(),
                    source: SourceKind::Kubernetes,
                    endpoints,
                })
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn ep(
        ip: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Endpoint {
        Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            ..Endpoint::default()
        }
    }

    fn slice(endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..EndpointPort::default()
            }]),
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn conditions_map_to_active_draining_starting_or_absent() {
        let s = slice(vec![
            ep("10.0.0.1", Some(true), Some(true), Some(false)),
            ep("10.0.0.2", Some(false), Some(true), Some(true)),
            ep("10.0.0.3", Some(false), Some(false), Some(true)),
            ep("10.0.0.4", Some(false), Some(false), Some(false)),
            ep("10.0.0.5", None, None, None),
        ]);
        let got = endpoints_of([&s], &KubernetesPort::Name("http".into()));
        let summary: Vec<(&str, bool, bool)> = got
            .iter()
            .map(|e| (e.address.as_str(), e.draining, e.starting))
            .collect();
        assert_eq!(
            summary,
            [
                ("10.0.0.1:8080", false, false),
                ("10.0.0.2:8080", true, false),
                ("10.0.0.4:8080", false, true),
                ("10.0.0.5:8080", false, false)
            ]
        );
    }

    #[test]
    fn ports_by_number_or_name() {
        let s = slice(vec![ep("10.0.0.1", Some(true), None, None)]);
        assert_eq!(
            endpoints_of([&s], &KubernetesPort::Number(9000))[0].address,
            "10.0.0.1:9000"
        );
        assert!(endpoints_of([&s], &KubernetesPort::Name("grpc".into())).is_empty());
        let v6 = EndpointSlice {
            address_type: "IPv6".into(),
            ..slice(vec![ep("fd00::1", Some(true), None, None)])
        };
        assert_eq!(
            endpoints_of([&v6], &KubernetesPort::Name("http".into()))[0].address,
            "[fd00::1]:8080"
        );
    }

    #[test]
    fn an_address_in_two_slices_is_active_if_either_says_so() {
        let a = slice(vec![ep("10.0.0.1", Some(false), Some(true), Some(true))]);
        let b = slice(vec![ep("10.0.0.1", Some(true), Some(true), Some(false))]);
        let got = endpoints_of([&a, &b], &KubernetesPort::Name("http".into()));
        assert_eq!(got.len(), 1);
        assert!(!got[0].draining);
        let starting = slice(vec![ep("10.0.0.1", Some(false), Some(false), Some(false))]);
        let got = endpoints_of([&starting, &b], &KubernetesPort::Name("http".into()));
        assert!(!got[0].starting, "ready in one slice: not starting");
        let got = endpoints_of([&starting, &a], &KubernetesPort::Name("http".into()));
        assert!(
            got[0].draining && !got[0].starting,
            "draining in one slice, starting in another: draining"
        );
    }
}
