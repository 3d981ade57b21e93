//! TLS termination: PEM loading, SNI certificate choice, and hot-swappable certificates.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Tls;

/// The crypto provider used everywhere (ring), passed explicitly so the
/// process never depends on a globally installed default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and key read from PEM, with the DNS names it covers.
pub struct LoadedKey {
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// DNS names from the certificate's subjectAltName (or CN), lower case.
    pub names: Vec<String>,
}

/// Why a certificate could not be loaded: `field` is `certFile` or `keyFile`.
#[derive(Debug)]
pub struct LoadError {
    /// The config key at fault.
    pub field: &'static str,
    /// What went wrong.
    pub problem: String,
}

/// Reads a PEM chain and key and checks that they belong together.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<LoadedKey, LoadError> {
    let cert_err = |problem: String| LoadError {
        field: "certFile",
        problem,
    };
    let key_err = |problem: String| LoadError {
        field: "keyFile",
        problem,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_err(format!("cannot read `{}`: {e}", cert_file.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("`{}` is not valid PEM: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err(cert_err(format!(
            "`{}` holds no CERTIFICATE block; give a PEM certificate chain, leaf first",
            cert_file.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        key_err(format!(
            "cannot read a private key from `{}`: {e}; give a PEM PKCS#8, PKCS#1 or SEC1 key",
            key_file.display()
        ))
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| key_err(format!("unsupported key in `{}`: {e}", key_file.display())))?;
    let names = certificate_names(&certs[0]);
    let key = CertifiedKey::new(certs, signing);
    key.keys_match().map_err(|e| {
        key_err(format!(
            "`{}` does not match the certificate in `{}` ({e}); pair each certificate with its own key",
            key_file.display(),
            cert_file.display()
        ))
    })?;
    Ok(LoadedKey {
        key: Arc::new(key),
        names,
    })
}

fn certificate_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// Certificates of one listener, indexed by SNI name.
struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertTable {
    fn new(tls: &Tls) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in &tls.certificates {
            for name in &cert.server_names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()),
                    None => exact.entry(name.clone()),
                }
                .or_insert_with(|| cert.key.clone());
            }
        }
        Self {
            exact,
            wildcard,
            default: tls.certificates[0].key.clone(),
        }
    }

    fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// Chooses a certificate by SNI; its table is swapped on reload without
/// touching established connections.
pub struct SniResolver {
    table: ArcSwap<CertTable>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl SniResolver {
    /// A resolver serving `tls`'s certificates.
    pub fn new(tls: &Tls) -> Self {
        Self {
            table: ArcSwap::from_pointee(CertTable::new(tls)),
        }
    }

    /// Serves `tls`'s certificates from the next handshake on.
    pub fn update(&self, tls: &Tls) {
        self.table.store(Arc::new(CertTable::new(tls)));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.table.load().choose(hello.server_name()))
    }
}

/// A rustls server config for a listener: ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<SniResolver>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
