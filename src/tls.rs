//! TLS material: the HTTPS listener's certificates (chosen by SNI, swapped on reload) and what
//! a connection to an `https://` upstream presents and trusts.
//!
//! Files are read when a plan is made live (start-up and every reload), never during a
//! handshake: the listener's resolver only picks from the table in force, so a renewed
//! certificate is served from the first handshake after a SIGHUP, and connections already
//! open keep theirs.
//!
//! rustls with ring is the TLS stack (pingora's `rustls` feature): no C toolchain beyond what
//! ring needs, no OpenSSL to build or ship, TLS 1.2 and 1.3 with AEAD suites only.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use crate::model::plan::{CertSpec, UpstreamTlsDef};
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("{cert} and {key}: the key does not belong to the certificate")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), why: why.to_string() }
}

/// Every certificate in a PEM file, in order (the leaf first in a chain), each checked to be
/// a parseable X.509 certificate.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c).map_err(|e| file_error(path, format!("not an X.509 certificate: {e}")))?;
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, format!("no usable PEM private key: {e}")))
}

/// The leaf's DNS names (subjectAltName), lower-cased.
fn dns_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.trim_end_matches('.').to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Seconds from the UNIX epoch at which the leaf expires.
fn not_after(leaf: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(leaf).ok().map(|(_, c)| c.validity().not_after.timestamp())
}

/// Logs each certificate at load with the days it has left; a warning under 14 days (a renewal
/// that is not happening), an error once expired.
fn log_expiry(path: &Path, names: &[String], not_after: Option<i64>) {
    let Some(t) = not_after else { return };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let days = (t - now) / 86_400;
    let cert = path.display();
    if t <= now {
        tracing::error!(%cert, ?names, "TLS certificate has expired");
    } else if days < 14 {
        tracing::warn!(%cert, ?names, days_left = days, "TLS certificate expires soon");
    } else {
        tracing::info!(%cert, ?names, days_left = days, "TLS certificate loaded");
    }
}

/// One loaded certificate and the names it answers.
struct Entry {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
    source: PathBuf,
}

/// The listener's certificates: picked by SNI, exact names before wildcards, the first when
/// nothing matches (or the client sent no name).
pub struct Certificates {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| (&e.source, &e.names))).finish()
    }
}

impl Certificates {
    /// Reads and checks every certificate of `specs`; one bad file fails the whole load, so a
    /// reload with a half-written renewal keeps the certificates in force.
    pub fn load(specs: &[CertSpec]) -> Result<Self, TlsError> {
        let mut entries = Vec::with_capacity(specs.len());
        for spec in specs {
            let certs = read_certs(&spec.cert)?;
            let key = read_key(&spec.key)?;
            let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| file_error(&spec.key, e))?;
            let names = if spec.names.is_empty() { dns_names(&certs[0]) } else { spec.names.clone() };
            let not_after = not_after(&certs[0]);
            let key = CertifiedKey::new(certs, signer);
            if key.keys_match().is_err() {
                return Err(TlsError::Mismatch { cert: spec.cert.clone(), key: spec.key.clone() });
            }
            log_expiry(&spec.cert, &names, not_after);
            entries.push(Entry { names, key: Arc::new(key), source: spec.cert.clone() });
        }
        Ok(Certificates { entries })
    }

    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let exact = self.entries.iter().find(|e| e.names.contains(&name));
            // a wildcard covers exactly one label
            let wildcard = || {
                let parent = name.split_once('.')?.1;
                self.entries.iter().find(|e| e.names.iter().any(|n| n.strip_prefix("*.") == Some(parent)))
            };
            if let Some(e) = exact.or_else(wildcard) {
                return Some(e.key.clone());
            }
        }
        self.entries.first().map(|e| e.key.clone())
    }
}

/// What connections to an `https://` upstream present and trust, loaded once per definition.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub verify: bool,
    /// Replaces the system roots for this upstream.
    pub ca: Option<Arc<[WrappedX509]>>,
    pub client: Option<Arc<CertKey>>,
}

impl UpstreamTls {
    pub fn load(def: &UpstreamTlsDef) -> Result<Self, TlsError> {
        let ca = match &def.ca_file {
            Some(path) => {
                let certs = read_certs(path)?;
                let wrapped: Vec<WrappedX509> =
                    certs.into_iter().map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509)).collect();
                Some(Arc::from(wrapped))
            }
            None => None,
        };
        let client = match &def.client_cert {
            Some((cert, key)) => {
                let certs = read_certs(cert)?;
                let der = read_key(key)?;
                rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| file_error(key, e))?;
                // pingora reads the key back from bare DER by guessing its kind: check it can
                PrivateKeyDer::try_from(der.secret_der().to_vec()).map_err(|e| file_error(key, e))?;
                Some(Arc::new(CertKey::new(certs.into_iter().map(|c| c.to_vec()).collect(), der.secret_der().to_vec())))
            }
            None => None,
        };
        Ok(UpstreamTls { sni: def.sni.clone(), verify: def.verify, ca, client })
    }
}

/// Makes ring the process's rustls provider before any TLS is used (pingora, the OTLP
/// exporters and the warming client all take the process default).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
