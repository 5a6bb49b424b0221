//! Mutual TLS between agent, controller and pivotctl, with certificates made by the test.

use std::path::Path;
use std::time::Duration;

use pivot_e2e::{bin, free_port, start_and_wait};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A test CA in a temporary directory; certificates it signs are written beside it
/// (`<file>.pem`, `<file>.key`). Shared with the attack tests (`attacks.rs`).
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A CA, a server certificate for `localhost`, and one client certificate.
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "pivot test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let pki = Self {
            dir,
            issuer: Issuer::new(ca, ca_key),
        };
        // The agent's certificate names its host (common name `rack-1`); `ops` is a person's,
        // enrolled as an operator in the controller's [auth]; `intruder` is a second agent
        // certificate, for host `rack-9`.
        for (file, cn, sans) in [
            ("server", "server", vec!["localhost".to_owned()]),
            ("agent", "rack-1", vec!["rack-1.agents.pivot".to_owned()]),
            ("ops", "ops", vec![]),
            ("intruder", "rack-9", vec![]),
        ] {
            pki.issue(file, cn, sans);
        }
        pki
    }

    /// Signs a client or server certificate with common name `cn`.
    pub(crate) fn issue(&self, file: &str, cn: &str, sans: Vec<String>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.dir.path().join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(
            self.dir.path().join(format!("{file}.key")),
            key.serialize_pem(),
        )
        .unwrap();
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
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
             [listen.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n[store]\npath = \"{}\"\n\
             [[auth.certificates]]\ncn = \"ops\"\nrole = \"operator\"\n",
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
        &pki.path("ops.pem"),
        "--key-file",
        &pki.path("ops.key"),
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

    // The agent's own certificate may open its agent session, nothing else.
    let out = pivotctl(&[
        "--cert-file",
        &pki.path("agent.pem"),
        "--key-file",
        &pki.path("agent.key"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PermissionDenied") && err.contains("role `agent`"),
        "{err}"
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_speaks_only_for_its_own_host() {
    let pki = Pki::new();
    let port = free_port();
    let controller_toml = pki.dir.path().join("controller.toml");
    write(
        &controller_toml,
        &format!(
            "[site]\nid = \"tls-site\"\ncap_w = 1000000\n[listen]\ngrpc = \"127.0.0.1:{port}\"\n\
             [listen.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n[store]\npath = \"{}\"\n\
             [[auth.certificates]]\ncn = \"ops\"\nrole = \"viewer\"\n",
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
    // rack-9's certificate, configured as host rack-1: a hijack attempt.
    let agent_toml = pki.dir.path().join("agent.toml");
    write(
        &agent_toml,
        &format!(
            "host_id = \"rack-1\"\nstate_dir = \"{}\"\n[controller]\nurl = \"{url}\"\nreconnect_max_s = 1\n\
             [controller.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            pki.path("intruder-state"),
            pki.path("ca.pem"),
            pki.path("intruder.pem"),
            pki.path("intruder.key"),
        ),
    );
    let _agent = start_and_wait(
        "pivot-agent",
        &["run", "--config", agent_toml.to_str().unwrap()],
        "pivot-agent metrics on ",
        Duration::from_secs(20),
    );
    let pivotctl = |args: &[&str]| {
        std::process::Command::new(bin("pivotctl"))
            .args(["--controller", &url, "--ca-file", &pki.path("ca.pem")])
            .args([
                "--cert-file",
                &pki.path("ops.pem"),
                "--key-file",
                &pki.path("ops.key"),
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = pivotctl(&["audit", "--json", "--limit", "50"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("cert:rack-9 may not speak for host `rack-1`") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused hello was not audited: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status: serde_json::Value =
        serde_json::from_slice(&pivotctl(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["agents_connected"], 0, "{status}");
    assert_eq!(status["miners_total"], 0, "{status}");
    // A viewer reads but may not act.
    let out = pivotctl(&["curtail"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PermissionDenied")
            && err.contains("role `viewer`")
            && err.contains("operate"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_carry_roles_the_audit_names_them_and_revoked_ones_are_refused() {
    let pki = Pki::new();
    let port = free_port();
    let controller_toml = pki.dir.path().join("controller.toml");
    // TLS without client certificates: people come with tokens.
    write(
        &controller_toml,
        &format!(
            "[site]\nid = \"tls-site\"\ncap_w = 1000000\n[listen]\ngrpc = \"127.0.0.1:{port}\"\n\
             [listen.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[store]\npath = \"{}\"\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("pivot.db"),
        ),
    );
    let config = controller_toml.to_str().unwrap();
    let token = |name: &str, role: &str| -> String {
        let out = std::process::Command::new(bin("pivot-controller"))
            .args([
                "token", "create", "--config", config, "--name", name, "--role", role,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let viewer = token("vera", "viewer");
    let operator = token("otto", "operator");
    let admin = token("ada", "admin");
    let out = std::process::Command::new(bin("pivot-controller"))
        .args([
            "token", "create", "--config", config, "--name", "x", "--role", "root",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _controller = start_and_wait(
        "pivot-controller",
        &["serve", "--config", config],
        "pivot-controller listening on ",
        Duration::from_secs(20),
    );
    let url = format!("https://localhost:{port}");
    let pivotctl = |token: Option<&str>, args: &[&str]| {
        let mut c = std::process::Command::new(bin("pivotctl"));
        c.args(["--controller", &url, "--ca-file", &pki.path("ca.pem")]);
        if let Some(t) = token {
            c.env("PIVOT_TOKEN", t);
        }
        c.args(args).output().unwrap()
    };
    let refused = |out: std::process::Output, role: &str| {
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            err.contains("PermissionDenied") && err.contains(&format!("role `{role}`")),
            "{err}"
        );
    };
    // No token: unauthenticated, with what to do.
    let out = pivotctl(None, &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthenticated") && err.contains("--token"),
        "{err}"
    );
    // Each role reads; each is refused outside its rights.
    for t in [&viewer, &operator, &admin] {
        assert!(pivotctl(Some(t), &["status", "--json"]).status.success());
    }
    let policy = pki.dir.path().join("policy.toml");
    write(&policy, "name = \"tokens\"\n");
    let policy = policy.to_str().unwrap();
    refused(pivotctl(Some(&viewer), &["curtail"]), "viewer");
    refused(
        pivotctl(
            Some(&viewer),
            &["dr", "start", "--target-kw", "1", "--duration", "1m"],
        ),
        "viewer",
    );
    refused(
        pivotctl(Some(&operator), &["policy", "set", policy]),
        "operator",
    );
    refused(
        pivotctl(Some(&viewer), &["policy", "set", policy]),
        "viewer",
    );
    assert!(pivotctl(Some(&operator), &["curtail"]).status.success());
    assert!(pivotctl(Some(&operator), &["resume"]).status.success());
    // The audit names the identity, whatever the client claims (USER is the client's word).
    let out = std::process::Command::new(bin("pivotctl"))
        .args(["--controller", &url, "--ca-file", &pki.path("ca.pem")])
        .env("PIVOT_TOKEN", &admin)
        .env("USER", "root")
        .args(["policy", "set", policy])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = pivotctl(Some(&admin), &["audit", "--json", "--limit", "20"]);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&audit.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let policy_row = rows.iter().find(|r| r["kind"] == "policy").unwrap();
    assert_eq!(policy_row["actor"], "token:ada");
    assert_eq!(policy_row["detail"]["client_actor"], "pivotctl:root");
    let curtail = rows
        .iter()
        .find(|r| r["kind"] == "override" && r["subject"] == "miners")
        .unwrap();
    assert_eq!(curtail["actor"], "token:otto");
    // Revoked: refused from then on.
    let list = std::process::Command::new(bin("pivot-controller"))
        .args(["token", "list", "--config", config])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.contains(&viewer),
        "the token itself is never stored or listed"
    );
    let id = list
        .lines()
        .find(|l| l.contains(" vera "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let out = std::process::Command::new(bin("pivot-controller"))
        .args(["token", "revoke", "--config", config, &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pivotctl(Some(&viewer), &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
}
