//! Mutual TLS between agent, controller and pivotctl, with certificates made by the test.

use std::path::Path;
use std::time::Duration;

use pivot_e2e::{bin, start_and_wait};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for `localhost`, and one client certificate.
    fn new() -> Self {
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
        for (name, sans) in [
            ("server", vec!["localhost".to_owned()]),
            ("agent", vec!["rack-1.agents.pivot".to_owned()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_pivotctl_reach_a_controller_over_mutual_tls_and_strangers_do_not() {
    let pki = Pki::new();
    let port = free_port();
    let controller_toml = pki.dir.path().join("controller.toml");
    write(
        &controller_toml,
        &format!(
            "[site]\nid = \"tls-site\"\ncap_w = 1000000\n[listen]\ngrpc = \"127.0.0.1:{port}\"\n\
             [listen.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n[store]\npath = \"{}\"\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
            pki.path("pivot.db"),
        ),
    );
    let _controller = start_and_wait(
        "pivot-controller",
        &["serve", "--config", controller_toml.to_str().unwrap()],
        "pivot-controller listening on ",
        Duration::from_secs(20),
    );
    let url = format!("https://localhost:{port}");

    // An agent with the site's client certificate connects.
    let agent_toml = pki.dir.path().join("agent.toml");
    write(
        &agent_toml,
        &format!(
            "host_id = \"rack-1\"\nstate_dir = \"{}\"\n[controller]\nurl = \"{url}\"\nreconnect_max_s = 1\n\
             [controller.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            pki.path("agent-state"),
            pki.path("ca.pem"),
            pki.path("agent.pem"),
            pki.path("agent.key"),
        ),
    );
    let _agent = start_and_wait(
        "pivot-agent",
        &["run", "--config", agent_toml.to_str().unwrap()],
        "pivot-agent metrics on ",
        Duration::from_secs(20),
    );
    let pivotctl = |extra: &[&str]| {
        std::process::Command::new(bin("pivotctl"))
            .args(["--controller", &url, "--ca-file", &pki.path("ca.pem")])
            .args(extra)
            .args(["status", "--json"])
            .output()
            .unwrap()
    };
    let client = [
        "--cert-file",
        &pki.path("agent.pem"),
        "--key-file",
        &pki.path("agent.key"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = pivotctl(&client);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["agents_connected"] == 1 {
            assert_eq!(status["site_id"], "tls-site");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the TLS agent never connected: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Without a client certificate the controller refuses the connection.
    let out = pivotctl(&[]);
    assert!(
        !out.status.success(),
        "a client without a certificate must be refused"
    );
    // Plaintext to the TLS port is refused too.
    let out = std::process::Command::new(bin("pivotctl"))
        .args([
            "--controller",
            &format!("http://127.0.0.1:{port}"),
            "status",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
