//! `endpoints.dns`: A/AAAA records of a name (a headless Service), resolved
//! again every interval. A failed lookup keeps the last good list.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::{SourceKind, Update, UpdateSender};
use crate::config::{DEFAULT_WEIGHT, DnsSource, EndpointSpec};

/// A resolver for `nameservers` (UDP, then TCP), or the system's when empty.
/// Its cache is off: every round asks the server.
pub fn resolver(nameservers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system resolver config: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
    };
    builder.options_mut().cache_size = 0;
    builder.options_mut().timeout = Duration::from_secs(2);
    builder
        .build()
        .map_err(|e| format!("cannot build a DNS resolver: {e}"))
}

/// Resolves `name` to endpoints on `port`, sorted.
pub async fn resolve(
    resolver: &TokioResolver,
    name: &str,
    port: u16,
) -> Result<Vec<EndpointSpec>, String> {
    let lookup = resolver.lookup_ip(name).await.map_err(|e| e.to_string())?;
    let mut addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs
        .into_iter()
        .map(|a| EndpointSpec {
            address: a.to_string(),
            weight: DEFAULT_WEIGHT,
            draining: false,
            starting: false,
        })
        .collect())
}

/// Resolves every interval and sends the list when it changes.
pub async fn run(pool: String, settings: DnsSource, updates: UpdateSender) {
    let resolver = match resolver(&settings.nameservers) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(%pool, error = %e, "DNS discovery cannot start");
            return;
        }
    };
    let mut last: Option<Vec<EndpointSpec>> = None;
    loop {
        match resolve(&resolver, &settings.name, settings.port).await {
            Ok(endpoints) if last.as_ref() != Some(&endpoints) => {
                tracing::info!(%pool, name = %settings.name, endpoints = endpoints.len(), "DNS endpoints changed");
                last = Some(endpoints.clone());
                if updates
                    .send(Update {
                        pool: pool.clone(),
                        source: SourceKind::Dns,
                        endpoints,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%pool, name = %settings.name, error = %e, "DNS lookup failed; keeping the last good list")
            }
        }
        tokio::time::sleep(settings.interval).await;
    }
}
