//! `pivot-controller dev` as a user runs it: health, pivotctl, a Python client, hostile agents.

use std::process::Command;

use pivot_e2e::{bin, python, start_dev_controller, workspace_root};
use pivot_proto::v1;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn url(addr: &str) -> String {
    format!("http://{addr}")
}

async fn health_client(addr: &str) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(url(addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

#[tokio::test]
async fn dev_controller_is_serving_and_pivotctl_reads_status() {
    let ctl = start_dev_controller(&["--site-cap-w", "7500000"]);
    let mut health = health_client(&ctl.addr).await;
    for service in ["", "pivot.v1.FleetService", "pivot.v1.AgentService"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.status(),
            ServingStatus::Serving,
            "service `{service}`"
        );
    }

    let out = Command::new(bin("pivotctl"))
        .args(["--controller", &url(&ctl.addr), "status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pivotctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["site_id"], "dev");
    assert_eq!(status["site_cap_w"], 7_500_000.0);
    assert_eq!(status["agents_connected"], 0);
    assert_eq!(status["policy"], "economic");
}

#[tokio::test]
async fn pivotctl_names_an_unreachable_controller() {
    let out = Command::new(bin("pivotctl"))
        .args(["--controller", "http://127.0.0.1:1", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn python_grpcio_client_reads_site_status() {
    let ctl = start_dev_controller(&["--site-cap-w", "1234000"]);
    let python = python().unwrap_or_else(|e| panic!("{e}"));
    let root = workspace_root();
    let out = Command::new(python)
        .arg(root.join("tests/peers/site_status.py"))
        .arg(root.join("proto"))
        .arg(&ctl.addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["siteId"], "dev");
    assert_eq!(status["siteCapW"], 1_234_000.0);
    assert_eq!(status["controllerVersion"], env!("CARGO_PKG_VERSION"));
}

async fn session(
    addr: &str,
    msgs: Vec<v1::AgentMessage>,
) -> Result<Vec<v1::ControllerMessage>, tonic::Status> {
    let mut client = v1::agent_service_client::AgentServiceClient::connect(url(addr))
        .await
        .unwrap();
    let mut replies = client.session(tokio_stream::iter(msgs)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = replies.message().await? {
        out.push(m);
    }
    Ok(out)
}

fn hello(host: &str, dialect: i32) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::Hello {
            host_id: host.into(),
            agent_version: "0.1.0".into(),
            miners: vec![v1::MinerInventory {
                device_id: format!("{host}/miner-1"),
                addr: "127.0.0.1:4028".into(),
                dialect,
                nameplate_power_w: Some(3500),
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn hostile_agent_messages_get_invalid_argument_naming_the_field() {
    let ctl = start_dev_controller(&[]);
    // Telemetry before hello.
    let e = session(
        &ctl.addr,
        vec![v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Telemetry(
                v1::TelemetrySnapshot::default(),
            )),
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("hello"), "{}", e.message());

    // An unknown enum value.
    let e = session(&ctl.addr, vec![hello("h-bad", 77)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("hello.miners[0].dialect"),
        "{}",
        e.message()
    );

    // A NaN in telemetry after a good hello ends the session with the field named.
    let nan = v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Telemetry(v1::TelemetrySnapshot {
            miners: vec![v1::MinerReading {
                device_id: "h-nan/miner-1".into(),
                reachable: true,
                power_w: Some(f64::NAN),
                ..Default::default()
            }],
            ..Default::default()
        })),
    };
    let e = session(
        &ctl.addr,
        vec![hello("h-nan", v1::MinerDialect::Luxos as i32), nan],
    )
    .await
    .unwrap_err();
    assert!(
        e.message().contains("telemetry.miners[0].power_w"),
        "{}",
        e.message()
    );

    // The controller still serves after the hostile sessions.
    let mut health = health_client(&ctl.addr).await;
    let ok = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().status(), ServingStatus::Serving);
}

#[tokio::test]
async fn agent_session_registers_devices_and_telemetry() {
    let ctl = start_dev_controller(&[]);
    let mut client = v1::agent_service_client::AgentServiceClient::connect(url(&ctl.addr))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("rack-7", v1::MinerDialect::Antminer as i32))
        .await
        .unwrap();
    let mut down = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let welcome = down.message().await.unwrap().unwrap();
    assert!(matches!(
        welcome.msg,
        Some(v1::controller_message::Msg::Welcome(_))
    ));
    tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Telemetry(v1::TelemetrySnapshot {
            miners: vec![v1::MinerReading {
                device_id: "rack-7/miner-1".into(),
                reachable: true,
                state: v1::MinerState::Sleeping as i32,
                power_w: Some(45.0),
                ..Default::default()
            }],
            ..Default::default()
        })),
    })
    .await
    .unwrap();

    let mut fleet = v1::fleet_service_client::FleetServiceClient::connect(url(&ctl.addr))
        .await
        .unwrap();
    let mut status = v1::SiteStatus::default();
    // Until the reading is in and the engine has planned with it (the round at hello saw the
    // miner unseen, at its nameplate; the first readings start a new round). The devices are
    // read before the status, so an intent seen here is one the status may already count.
    for _ in 0..100 {
        let waking = fleet
            .list_devices(v1::ListDevicesRequest {
                kind: 0,
                host_id: "rack-7".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .devices
            .iter()
            .any(|d| d.device_id == "rack-7/miner-1" && d.intent.is_some());
        status = fleet
            .get_site_status(v1::GetSiteStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let asleep = status.committed_power_w <= 100.0;
        if status.miners_sleeping == 1 && (asleep || (waking && status.committed_power_w == 3500.0))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status.agents_connected, 1);
    assert_eq!(status.miners_sleeping, 1);
    assert_eq!(status.measured_power_w, 45.0);
    // The dev controller's market makes mining pay, so its engine may already be waking the
    // miner (its first round follows the agent's hello): a miner on its way up counts at its
    // nameplate, one left asleep at what it draws (45 W) or, in the planner's figure, at least
    // the site's assumption for a sleeping miner (100 W).
    assert!(status.committed_power_w >= 45.0, "{status:?}");
    if status.committed_power_w > 100.0 {
        assert_eq!(status.committed_power_w, 3500.0, "{status:?}");
        let devices = fleet
            .list_devices(v1::ListDevicesRequest {
                kind: 0,
                host_id: "rack-7".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .devices;
        let intent = devices
            .iter()
            .find(|d| d.device_id == "rack-7/miner-1")
            .and_then(|d| d.intent.as_ref())
            .unwrap_or_else(|| panic!("counted at its nameplate with no intent: {devices:?}"));
        assert!(
            matches!(&intent.target, Some(v1::intent::Target::Miner(m)) if m.mode == v1::MinerMode::Run as i32),
            "{intent:?}"
        );
    }

    drop(tx);
    // After the agent goes away its miner is unseen and counts at its nameplate.
    for _ in 0..50 {
        status = fleet
            .get_site_status(v1::GetSiteStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if status.agents_connected == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status.agents_connected, 0);
    assert_eq!(status.committed_power_w, 3500.0);

    let audit = fleet
        .list_audit(v1::ListAuditRequest {
            limit: 10,
            before_id: 0,
            subject: "host/rack-7".into(),
            kind: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let reasons: Vec<_> = audit.records.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons, ["agent disconnected", "agent connected"]);
}

#[test]
fn undecodable_messages_are_invalid_argument_and_change_nothing() {
    let ctl = start_dev_controller(&[]);
    let python = python().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(python)
        .arg(workspace_root().join("tests/peers/hostile.py"))
        .arg(&ctl.addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["code"], "INVALID_ARGUMENT", "{l}");
        assert!(l["details"].as_str().unwrap().contains("malformed"), "{l}");
    }
    assert!(
        lines[1]["details"]
            .as_str()
            .unwrap()
            .contains("ClearOverrideRequest"),
        "{}",
        lines[1]
    );
    // Nothing was written: the audit log holds no override record.
    let out = Command::new(bin("pivotctl"))
        .args(["--controller", &url(&ctl.addr), "audit", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("override"));
}

fn pivotctl(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("pivotctl"))
        .arg("--controller")
        .arg(url(addr))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn pivotctl_overrides_demand_response_and_policy_are_stored_and_audited() {
    let ctl = start_dev_controller(&[]);
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // An override on a device nobody declared is refused, naming it, and nothing is stored.
    let unknown = pivotctl(
        &ctl.addr,
        &["override", "set", "miner/10.0.0.7:4028", "--sleep"],
    );
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("no device or host `miner/10.0.0.7:4028`"),
        "{err}"
    );
    // The site-wide miners pin (what `pivotctl curtail` sets) is known without any agent.
    ok(pivotctl(
        &ctl.addr,
        &[
            "override",
            "set",
            "miners",
            "--sleep",
            "--expires-in",
            "2h",
            "--reason",
            "fan swap",
        ],
    ));
    let list = ok(pivotctl(&ctl.addr, &["override", "list", "--json"]));
    let row: serde_json::Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert_eq!(row["target"], "miners");
    assert_eq!(row["pin"], "sleep");
    assert_eq!(row["reason"], "fan swap");
    ok(pivotctl(&ctl.addr, &["override", "clear", "miners"]));
    let again = pivotctl(&ctl.addr, &["override", "clear", "miners"]);
    assert!(
        !again.status.success(),
        "clearing twice must say there was nothing to clear"
    );

    ok(pivotctl(
        &ctl.addr,
        &[
            "dr",
            "start",
            "--target-kw",
            "1500",
            "--within",
            "10m",
            "--duration",
            "2h",
            "--event-id",
            "ercot-4cp-1",
        ],
    ));
    let status: serde_json::Value =
        serde_json::from_str(&ok(pivotctl(&ctl.addr, &["status", "--json"]))).unwrap();
    assert_eq!(status["demand_response"]["event_id"], "ercot-4cp-1");
    assert_eq!(status["demand_response"]["target_power_w"], 1_500_000.0);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n[economic]\nmin_margin = 1\n").unwrap();
    let out = pivotctl(&ctl.addr, &["policy", "validate", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("min_margin"));
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "name = \"night-curtail\"\n[[schedule]]\nname = \"4cp\"\ntime_zone = \"America/Chicago\"\nstart = \"15:00\"\nend = \"17:30\"\ncurtail_mining = true\n").unwrap();
    assert!(
        ok(pivotctl(
            &ctl.addr,
            &["policy", "set", good.to_str().unwrap()]
        ))
        .contains("revision 1")
    );
    let out = pivotctl(
        &ctl.addr,
        &[
            "policy",
            "set",
            good.to_str().unwrap(),
            "--expected-revision",
            "7",
        ],
    );
    assert!(!out.status.success(), "a stale revision must be refused");

    let audit = ok(pivotctl(&ctl.addr, &["audit", "--json", "--limit", "50"]));
    let kinds: Vec<String> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["policy", "demand_response", "override", "override"]);
}

#[test]
fn the_example_configuration_and_policy_are_accepted() {
    let root = workspace_root();
    // The example names a real site's paths; here they point into a temporary directory with
    // certificates made for the test, so check-config proves everything it would on a site.
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    for name in ["controller.pem", "ca.pem"] {
        std::fs::write(dir.path().join(name), cert.pem()).unwrap();
    }
    std::fs::write(dir.path().join("controller.key"), key.serialize_pem()).unwrap();
    let example =
        std::fs::read_to_string(root.join("deploy/config/controller.example.toml")).unwrap();
    let local = example
        .replace("/etc/pivot/", &format!("{}/", dir.path().display()))
        .replace("/var/lib/pivot/", &format!("{}/", dir.path().display()));
    let config = dir.path().join("controller.toml");
    std::fs::write(&config, local).unwrap();
    let out = Command::new(bin("pivot-controller"))
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A key that is not there is refused, naming it.
    std::fs::remove_file(dir.path().join("controller.key")).unwrap();
    let out = Command::new(bin("pivot-controller"))
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen.tls.key_file"));

    let ctl = start_dev_controller(&[]);
    let policy = root.join("deploy/config/policy.example.toml");
    let out = pivotctl(&ctl.addr, &["policy", "validate", policy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pivotctl status | head -1`: the reader goes away before pivotctl has written everything.
/// pivotctl ends as a process killed by SIGPIPE would (141), quietly, instead of panicking.
#[test]
fn pivotctl_into_a_closed_pipe_exits_quietly() {
    let ctl = start_dev_controller(&[]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(bin("pivotctl"))
        .args(["--controller", &format!("http://{}", ctl.addr), "status"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
