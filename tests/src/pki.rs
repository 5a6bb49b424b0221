//! A site's certificates for a test: a CA, the controller's server certificate for `localhost`,
//! and a client certificate for each common name (`<cn>.pem`, `<cn>.key`), in a temporary folder.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

#[derive(Debug)]
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// `ca.pem`, `server.pem`/`server.key` (for `localhost`) and one pair per client name.
    pub fn new(clients: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "pivot test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        write("ca.pem", ca_cert.pem());
        let names = std::iter::once(("server", vec!["localhost".to_owned()]))
            .chain(clients.iter().map(|c| (*c, Vec::new())));
        for (cn, sans) in names {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &issuer).unwrap();
            write(&format!("{cn}.pem"), cert.pem());
            write(&format!("{cn}.key"), key.serialize_pem());
        }
        Self { dir }
    }

    /// The path of one of its files.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}
