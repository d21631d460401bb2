//! A certificate authority of the test's own (rcgen), and leaf certificates it signs, written
//! as PEM files for fastgate, uvicorn and the clients.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::PathBuf;

pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf's files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    /// The CA certificate's PEM file.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf for `names` (DNS names or IP addresses), usable by servers and clients, written
    /// to `<stem>.pem` and `<stem>.key` (replaced atomically when they exist: a renewal).
    pub fn issue(&self, stem: &str, names: &[&str]) -> Leaf {
        self.issue_valid(stem, names, None)
    }

    /// A leaf valid from `days.0` to `days.1` days from today (negative: in the past).
    #[allow(dead_code)]
    pub fn issue_for_days(&self, stem: &str, names: &[&str], days: (i64, i64)) -> Leaf {
        self.issue_valid(stem, names, Some(days))
    }

    fn issue_valid(&self, stem: &str, names: &[&str], days: Option<(i64, i64)>) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some((from, to)) = days {
            params.not_before = day_from_today(from);
            params.not_after = day_from_today(to);
        }
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (self.dir.path().join(format!("{stem}.pem")), self.dir.path().join(format!("{stem}.key")));
        for (path, text) in [(&cert_path, cert.pem()), (&key_path, key.serialize_pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        Leaf { cert: cert_path, key: key_path, der: cert.der().to_vec() }
    }
}

/// Now, `offset` days away (negative: in the past).
fn day_from_today(offset: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(offset)
}
