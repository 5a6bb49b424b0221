//! Attacks on a live site, end to end (issue 11): the real `pivot-controller serve` under mutual
//! TLS with a SQLite file, one honest `pivot-agent` (host `rack-1`) driving two pivot-sim miners,
//! and hostile agents as small gRPC clients of the test, each with its own certificate. Every
//! attack is refused with a clear error, written to the audit log, and leaves what the site says
//! of the honest agent as it was.

use std::collections::BTreeMap;
use std::time::Duration;

use pivot_e2e::{Running, bin, start_and_wait};
use pivot_proto::v1;
use pivot_proto::v1::agent_message::Msg as Up;
use pivot_sim::miner::{Bind, Dialect, MinerSpec, SimMiner, Timing, spawn};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::tls::Pki;
use pivot_e2e::free_port;

const WAIT: Duration = Duration::from_secs(30);

/// The devices one host may declare, and the power (`[agents]` of the controller).
const MAX_DEVICES: usize = 300;
const MAX_HOST_POWER_W: f64 = 600_000.0;

struct Site {
    pki: Pki,
    port: u16,
    _controller: Running,
    _agent: Running,
    _miners: Vec<SimMiner>,
}

/// What the site says of the honest agent: status counts and power, and rack-1's devices.
#[derive(Debug, Clone, PartialEq)]
struct Honest {
    agents_connected: u32,
    miners_total: u32,
    miners_mining: u32,
    miners_unreachable: u32,
    gpus_total: u32,
    committed_power_w: f64,
    measured_power_w: f64,
    /// rack-1's devices: id → (host, kind, reading present).
    devices: BTreeMap<String, (String, i32, bool)>,
}

/// A hostile (or merely scripted) agent session.
struct FakeAgent {
    tx: mpsc::Sender<v1::AgentMessage>,
    down: tonic::Streaming<v1::ControllerMessage>,
}

impl FakeAgent {
    async fn send(&self, msg: Up) {
        self.tx
            .send(v1::AgentMessage { msg: Some(msg) })
            .await
            .unwrap();
    }

    /// The status that ended the session from the controller's side, skipping its messages.
    async fn ended(&mut self) -> Option<tonic::Status> {
        let wait = async {
            loop {
                match self.down.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(s) => return Some(s),
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("the controller never ended the session")
    }

    /// The intents the controller sends (lease renewals skipped) until every one of `ids` has
    /// one; the newest for each.
    async fn intents_for(&mut self, ids: &[&str]) -> BTreeMap<String, v1::Intent> {
        let mut got = BTreeMap::new();
        let wait = async {
            while !ids.iter().all(|id| got.contains_key(*id)) {
                match self.down.message().await {
                    Ok(Some(v1::ControllerMessage {
                        msg: Some(v1::controller_message::Msg::Intents(b)),
                    })) => {
                        for i in b.intents {
                            got.insert(i.device_id.clone(), i);
                        }
                    }
                    Ok(Some(_)) => {}
                    other => panic!("the session ended: {other:?}"),
                }
            }
        };
        let done = tokio::time::timeout(WAIT, wait).await;
        assert!(done.is_ok(), "no intents for all of {ids:?}: {got:#?}");
        got
    }

    /// Closes the session from the agent's side and waits until the controller let go of it.
    async fn close(mut self) {
        drop(self.tx);
        let _ = tokio::time::timeout(WAIT, async {
            while let Ok(Some(_)) = self.down.message().await {}
        })
        .await;
    }
}

fn miner_inv(id: &str, nameplate_w: u32) -> v1::MinerInventory {
    v1::MinerInventory {
        device_id: id.into(),
        addr: "10.9.9.9:4028".into(),
        dialect: v1::MinerDialect::Braiins as i32,
        model: "Antminer S9".into(),
        nameplate_power_w: Some(nameplate_w),
        // 300 J/TH at 3 kW: never worth waking at the site's energy price, so the planner
        // leaves these miners where the test puts them.
        nameplate_hashrate_ths: Some(f64::from(nameplate_w) / 300.0),
        capabilities: Some(v1::MinerCapabilities {
            can_sleep: true,
            power_target: true,
            power_target_min_w: Some(nameplate_w / 2),
            power_target_max_w: Some(nameplate_w),
            power_target_steps_w: vec![],
        }),
        ..Default::default()
    }
}

fn gpu_inv(id: &str) -> v1::GpuInventory {
    v1::GpuInventory {
        device_id: id.into(),
        uuid: format!("GPU-{id}"),
        name: "NVIDIA H100 80GB HBM3".into(),
        power_cap_min_w: 200,
        power_cap_max_w: 700,
        power_cap_default_w: 700,
        ..Default::default()
    }
}

fn hello(host: &str, miners: Vec<v1::MinerInventory>, gpus: Vec<v1::GpuInventory>) -> v1::Hello {
    v1::Hello {
        host_id: host.into(),
        agent_version: "0.1.0".into(),
        // No base draw of its own: the host counts at its devices alone.
        host: Some(v1::HostInventory {
            base_power_w: Some(0),
            ..Default::default()
        }),
        miners,
        gpus,
        held_intents: vec![],
    }
}

fn reading(id: &str, state: v1::MinerState, power_w: f64, hashrate_ths: f64) -> v1::MinerReading {
    v1::MinerReading {
        device_id: id.into(),
        reachable: true,
        state: state as i32,
        power_w: Some(power_w),
        hashrate_ths: Some(hashrate_ths),
        ..Default::default()
    }
}

fn telemetry(miners: Vec<v1::MinerReading>, gpus: Vec<v1::GpuReading>) -> Up {
    Up::Telemetry(v1::TelemetrySnapshot {
        taken_at: None,
        miners,
        gpus,
        host: None,
    })
}

impl Site {
    /// Starts the controller and the honest agent, and waits until the agent's two miners are
    /// mining and reported.
    async fn start() -> Site {
        let pki = Pki::new();
        for cn in ["admin", "viewer"] {
            pki.issue(cn, cn, vec![]);
        }
        let port = free_port();
        let d = pki.dir.path();
        std::fs::write(
            d.join("controller.toml"),
            format!(
                r#"[site]
id = "attacked"
cap_w = 1000000
[listen]
grpc = "127.0.0.1:{port}"
[listen.tls]
cert_file = "{server}"
key_file = "{server_key}"
client_ca_file = "{ca}"
[store]
path = "{db}"
[agents]
telemetry_interval_s = 1
max_devices_per_host = {MAX_DEVICES}
max_host_power_w = {MAX_HOST_POWER_W}
[engine]
replan_s = 2
[[auth.certificates]]
cn = "ops"
role = "operator"
[[auth.certificates]]
cn = "admin"
role = "admin"
[[auth.certificates]]
cn = "viewer"
role = "viewer"
"#,
                server = pki.path("server.pem"),
                server_key = pki.path("server.key"),
                ca = pki.path("ca.pem"),
                db = pki.path("pivot.db"),
            ),
        )
        .unwrap();
        let controller = start_and_wait(
            "pivot-controller",
            &["serve", "--config", &pki.path("controller.toml")],
            "pivot-controller listening on ",
            WAIT,
        );
        let mut miners = Vec::new();
        for dialect in [Dialect::Antminer, Dialect::WhatsminerV2] {
            miners.push(
                spawn(
                    MinerSpec::new(dialect).timing(Timing::fast()),
                    Bind::localhost(),
                )
                .await
                .unwrap(),
            );
        }
        let mut agent = format!(
            "host_id = \"rack-1\"\nstate_dir = \"{}\"\n\
             [controller]\nurl = \"https://localhost:{port}\"\nreconnect_max_s = 1\n\
             [controller.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             [poll]\nminer_interval_s = 0.5\ntimeout_ms = 1000\nsettle_s = 10\nconfirm_s = 20\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            pki.path("agent-state"),
            pki.path("ca.pem"),
            pki.path("agent.pem"),
            pki.path("agent.key"),
        );
        for m in &miners {
            let addr = match m.http_addr() {
                Some(h) => format!("{},http={}", m.api_addr(), h.port()),
                None => m.api_addr().to_string(),
            };
            agent.push_str(&format!(
                "[[miners]]\naddr = \"{addr}\"\ndialect = \"{}\"\n",
                m.dialect().name()
            ));
        }
        std::fs::write(d.join("agent.toml"), agent).unwrap();
        let agent = start_and_wait(
            "pivot-agent",
            &["run", "--config", &pki.path("agent.toml")],
            "pivot-agent metrics on ",
            WAIT,
        );
        let site = Site {
            pki,
            port,
            _controller: controller,
            _agent: agent,
            _miners: miners,
        };
        site.until("the honest agent's miners reported mining", |h| {
            h.agents_connected == 1 && h.miners_mining == 2 && h.devices.len() == 3
        })
        .await;
        site
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// A TLS channel presenting the certificate `<cert>.pem` (issued on first use, with the
    /// file name as common name).
    async fn channel(&self, cert: &str) -> Channel {
        if !self.pki.dir.path().join(format!("{cert}.pem")).exists() {
            self.pki.issue(cert, cert, vec![]);
        }
        let read = |name: String| std::fs::read(self.pki.path(&name)).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
            .identity(Identity::from_pem(
                read(format!("{cert}.pem")),
                read(format!("{cert}.key")),
            ))
            .domain_name("localhost");
        Channel::from_shared(self.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn fleet(&self) -> v1::fleet_service_client::FleetServiceClient<Channel> {
        v1::fleet_service_client::FleetServiceClient::new(self.channel("admin").await)
    }

    /// Opens an agent session with certificate `cert`: the welcome, or the refusal.
    async fn agent(&self, cert: &str, hello: v1::Hello) -> Result<FakeAgent, tonic::Status> {
        let mut client =
            v1::agent_service_client::AgentServiceClient::new(self.channel(cert).await);
        let (tx, rx) = mpsc::channel(16);
        tx.send(v1::AgentMessage {
            msg: Some(Up::Hello(hello)),
        })
        .await
        .unwrap();
        let mut down = client.session(ReceiverStream::new(rx)).await?.into_inner();
        match down.message().await? {
            Some(v1::ControllerMessage {
                msg: Some(v1::controller_message::Msg::Welcome(_)),
            }) => Ok(FakeAgent { tx, down }),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    async fn status(&self) -> v1::SiteStatus {
        self.fleet()
            .await
            .get_site_status(v1::GetSiteStatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    async fn devices(&self, host: &str) -> Vec<v1::Device> {
        self.fleet()
            .await
            .list_devices(v1::ListDevicesRequest {
                kind: 0,
                host_id: host.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .devices
    }

    async fn honest(&self) -> Honest {
        let s = self.status().await;
        Honest {
            agents_connected: s.agents_connected,
            miners_total: s.miners_total,
            miners_mining: s.miners_mining,
            miners_unreachable: s.miners_unreachable,
            gpus_total: s.gpus_total,
            committed_power_w: s.committed_power_w,
            measured_power_w: s.measured_power_w,
            devices: self
                .devices("rack-1")
                .await
                .into_iter()
                .map(|d| {
                    (
                        d.device_id,
                        (d.host_id, d.kind, d.reading.is_some() || d.kind == 3),
                    )
                })
                .collect(),
        }
    }

    /// Waits until `ok` holds of what the site says; fails with it otherwise.
    async fn until(&self, what: &str, ok: impl Fn(&Honest) -> bool) -> Honest {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let h = self.honest().await;
            if ok(&h) {
                return h;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out: {what}; the site says {h:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The site says of the honest agent what it said `before`, now and a telemetry round
    /// later (an attack must not change it late either).
    async fn unchanged(&self, before: &Honest, after: &str) {
        for _ in 0..2 {
            assert_eq!(&self.honest().await, before, "after {after}");
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
    }

    /// Audit records, newest first.
    async fn audit(&self, subject: &str, kind: &str) -> Vec<v1::AuditRecord> {
        self.fleet()
            .await
            .list_audit(v1::ListAuditRequest {
                limit: 1000,
                before_id: 0,
                subject: subject.into(),
                kind: kind.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .records
    }

    /// Waits for an audit record about `subject` whose reason contains `words`.
    async fn audited(&self, subject: &str, words: &str) -> v1::AuditRecord {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(r) = self
                .audit(subject, "")
                .await
                .into_iter()
                .find(|r| r.reason.contains(words))
            {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no audit record about {subject} saying `{words}`: {:#?}",
                self.audit(subject, "").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// pivotctl with the certificate `cert`.
    fn pivotctl(&self, cert: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin("pivotctl"))
            .args(["--controller", &self.url()])
            .args(["--ca-file", &self.pki.path("ca.pem")])
            .args(["--cert-file", &self.pki.path(&format!("{cert}.pem"))])
            .args(["--key-file", &self.pki.path(&format!("{cert}.key"))])
            .args(args)
            .output()
            .unwrap()
    }
}

fn refused(r: Result<FakeAgent, tonic::Status>, code: tonic::Code, words: &[&str]) {
    let e = match r {
        Ok(_) => panic!("the session was accepted; expected {code:?} saying {words:?}"),
        Err(e) => e,
    };
    assert_eq!(e.code(), code, "{}", e.message());
    for w in words {
        assert!(e.message().contains(w), "`{w}` not in: {}", e.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_agents_cannot_take_over_hosts_or_devices_nor_push_the_site_past_its_cap() {
    let site = Site::start().await;
    let before = site.honest().await;
    let rack1_miner = before
        .devices
        .keys()
        .find(|d| d.starts_with("miner/"))
        .unwrap()
        .clone();

    // The wrong-host certificate: rack-9's certificate says it is rack-1, with rack-1's devices.
    refused(
        site.agent(
            "intruder",
            hello("rack-1", vec![miner_inv(&rack1_miner, 100)], vec![]),
        )
        .await,
        tonic::Code::PermissionDenied,
        &["cert:rack-9", "`rack-1`"],
    );
    let r = site
        .audited("host/rack-1", "may not speak for host `rack-1`")
        .await;
    assert_eq!(r.actor, "cert:rack-9");
    site.unchanged(&before, "the wrong-host certificate").await;
    // The honest agent's session was never touched: one connection in the audit log, no end.
    let rack1: Vec<String> = site
        .audit("host/rack-1", "agent")
        .await
        .into_iter()
        .map(|r| r.reason)
        .filter(|r| r.contains("connected") || r.contains("ended"))
        .collect();
    assert_eq!(rack1, ["agent connected"], "{rack1:?}");

    // The duplicate device: rack-4 (a real agent certificate) claims rack-1's miner.
    refused(
        site.agent(
            "rack-4",
            hello("rack-4", vec![miner_inv(&rack1_miner, 3000)], vec![]),
        )
        .await,
        tonic::Code::AlreadyExists,
        &[&rack1_miner, "`rack-1`", "`rack-4`"],
    );
    let r = site
        .audited("host/rack-4", "belongs to host `rack-1`")
        .await;
    assert_eq!(r.actor, "cert:rack-4");
    site.unchanged(&before, "the duplicate device").await;

    // The hijack by an identity allowed to be the host (its agent restarted elsewhere, or its
    // key was copied): the new session supersedes the old one, which is closed; whatever the
    // old one does afterwards changes nothing.
    let rack2 = || hello("rack-2", vec![miner_inv("miner/rack-2-a", 3000)], vec![]);
    let mut first = site.agent("rack-2", rack2()).await.unwrap();
    first
        .send(telemetry(
            vec![reading(
                "miner/rack-2-a",
                v1::MinerState::Sleeping,
                40.0,
                0.0,
            )],
            vec![],
        ))
        .await;
    site.until("rack-2 counted asleep", |h| {
        h.agents_connected == 2 && h.measured_power_w == before.measured_power_w + 40.0
    })
    .await;
    let second = site.agent("rack-2", rack2()).await.unwrap();
    let end = first
        .ended()
        .await
        .expect("the superseded session was not closed");
    assert_eq!(end.code(), tonic::Code::Aborted, "{}", end.message());
    assert!(end.message().contains("superseded"), "{}", end.message());
    second
        .send(telemetry(
            vec![reading(
                "miner/rack-2-a",
                v1::MinerState::Sleeping,
                50.0,
                0.0,
            )],
            vec![],
        ))
        .await;
    // The old session speaks again (a 2.5 kW reading) and leaves: neither is believed.
    first
        .send(telemetry(
            vec![reading(
                "miner/rack-2-a",
                v1::MinerState::Mining,
                2500.0,
                90.0,
            )],
            vec![],
        ))
        .await;
    first.close().await;
    site.audited("host/rack-2", "superseded session").await;
    let h = site
        .until("rack-2's new session believed", |h| {
            h.measured_power_w == before.measured_power_w + 50.0
        })
        .await;
    assert_eq!(
        h.agents_connected, 2,
        "the old session's end disconnected the host"
    );
    assert_eq!(h.miners_total, 3);
    // A host that stays connected but goes silent counts at its maximum once its reading is
    // stale (three telemetry intervals), not at its last word.
    site.until("silent rack-2 counted at its nameplate", |h| {
        h.agents_connected == 2 && h.committed_power_w == before.committed_power_w + 3000.0
    })
    .await;
    second.close().await;
    site.until("rack-2 gone and still counted at its nameplate", |h| {
        h.agents_connected == 1 && h.committed_power_w == before.committed_power_w + 3000.0
    })
    .await;
    let out = site.pivotctl("ops", &["hosts", "forget", "rack-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    site.until("rack-2 forgotten", |h| h == &before).await;

    // The 300-miner flood, above the power allowance (300 × 3 kW = 900 kW > 600 kW) and above
    // the device allowance (301 miners): refused at hello, audited, nothing counted.
    let flood = |n: usize, w: u32| {
        hello(
            "flood",
            (0..n)
                .map(|i| miner_inv(&format!("miner/flood-{i}"), w))
                .collect(),
            vec![],
        )
    };
    refused(
        site.agent("flood", flood(300, 3000)).await,
        tonic::Code::ResourceExhausted,
        &["`flood`", "900000 W", "agents.max_host_power_w"],
    );
    site.audited("host/flood", "900000 W").await;
    refused(
        site.agent("flood", flood(MAX_DEVICES + 1, 100)).await,
        tonic::Code::ResourceExhausted,
        &["301 devices", "agents.max_devices_per_host"],
    );
    site.audited("host/flood", "301 devices").await;
    site.unchanged(&before, "the refused floods").await;

    // Within the allowance (300 × 1.5 kW = 450 kW), for two seconds, then silence: every one of
    // its miners counts at its maximum until an operator forgets the host.
    let session = site.agent("flood", flood(300, 1500)).await.unwrap();
    let flooded = before.committed_power_w + 450_000.0;
    site.until("the flood counted at its maximum", |h| {
        h.miners_total == 302 && h.committed_power_w == flooded
    })
    .await;
    let out = site.pivotctl("ops", &["hosts", "forget", "flood"]);
    assert!(!out.status.success(), "a connected host was forgotten");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is connected"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    session.close().await;
    site.until("the silent flood still counted", |h| {
        h.agents_connected == 1 && h.miners_unreachable == 300 && h.committed_power_w == flooded
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        site.status().await.committed_power_w,
        flooded,
        "the flood stopped counting by itself"
    );
    // A viewer may not forget it; an operator may, and the audit says who.
    let out = site.pivotctl("viewer", &["hosts", "forget", "flood"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("role `viewer`"));
    let out = site.pivotctl(
        "ops",
        &["hosts", "forget", "flood", "--reason", "flood from a test"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("300 devices"));
    let r = site
        .audited("host/flood", "forgotten with its 300 devices")
        .await;
    assert_eq!(r.actor, "cert:ops");
    site.until("the flood forgotten", |h| h == &before).await;
    site.unchanged(&before, "the flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_readings_are_refused_audited_and_the_device_counts_at_its_maximum() {
    let site = Site::start().await;
    let before = site.honest().await;
    let ids = [
        "miner/r3-a",
        "miner/r3-b",
        "miner/r3-c",
        "miner/r3-d",
        "miner/r3-e",
    ];
    let agent = site
        .agent(
            "rack-3",
            hello(
                "rack-3",
                ids.iter().map(|id| miner_inv(id, 3000)).collect(),
                vec![gpu_inv("gpu/r3-0")],
            ),
        )
        .await
        .unwrap();
    let gpu = |temperature_c: f64| v1::GpuReading {
        device_id: "gpu/r3-0".into(),
        power_w: Some(150.0),
        temperature_c: Some(temperature_c),
        enforced_power_limit_w: Some(300.0),
        power_cap_w: Some(300.0),
        ..Default::default()
    };
    let asleep = |id: &str| reading(id, v1::MinerState::Sleeping, 40.0, 0.0);
    agent
        .send(telemetry(
            ids.iter().map(|id| asleep(id)).collect(),
            vec![gpu(60.0)],
        ))
        .await;
    // Five miners asleep at 40 W, the GPU capped at 300 W.
    let sane = before.committed_power_w + 5.0 * 40.0 + 300.0;
    site.until("rack-3's sane readings believed", |h| {
        h.agents_connected == 2 && h.committed_power_w == sane
    })
    .await;

    // 1e30 W, −5,000 W, −100 TH/s, a board at 200 °C, a GPU at 200 °C; and a "sleeping" miner
    // drawing nearly its nameplate (believed, flagged).
    let mut hot_board = asleep(ids[3]);
    hot_board.boards = vec![v1::BoardReading {
        index: 0,
        temperature_c: Some(200.0),
        hashrate_ths: Some(0.0),
    }];
    let absurd = telemetry(
        vec![
            reading(ids[0], v1::MinerState::Mining, 1e30, 5.0),
            reading(ids[1], v1::MinerState::Mining, -5000.0, 5.0),
            reading(ids[2], v1::MinerState::Mining, 2900.0, -100.0),
            hot_board,
            reading(ids[4], v1::MinerState::Sleeping, 2900.0, 0.0),
        ],
        vec![gpu(200.0)],
    );
    // Sent again and again, as a broken agent would (and so that no reading goes stale).
    let tx = agent.tx.clone();
    let repeat = tokio::spawn(async move {
        loop {
            let msg = v1::AgentMessage {
                msg: Some(absurd.clone()),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    for (subject, words) in [
        (ids[0], "power W 1000000000000000000000000000000 is outside"),
        (ids[1], "power W -5000 is outside"),
        (ids[2], "hashrate TH/s -100 is outside"),
        (ids[3], "temperature 200 °C is outside"),
        ("gpu/r3-0", "temperature 200 °C is outside"),
    ] {
        let r = site.audited(subject, words).await;
        assert!(
            r.reason
                .starts_with("reading refused, device counts as unseen"),
            "{}",
            r.reason
        );
        assert_eq!(r.actor, "cert:rack-3");
    }
    site.audited(ids[4], "flagged: reports sleeping but draws 2900 W")
        .await;
    // Four miners and the GPU unseen, at their maximum (never at 1e30 W nor below zero); the
    // flagged miner at what it draws.
    let counted = before.committed_power_w + 4.0 * 3000.0 + 2900.0 + 700.0;
    let h = site
        .until("the refused devices counted at their maximum", |h| {
            h.committed_power_w == counted
        })
        .await;
    assert_eq!(h.devices, before.devices);
    let devices = site.devices("rack-3").await;
    for d in devices
        .iter()
        .filter(|d| d.kind != v1::DeviceKind::Host as i32)
    {
        let believed = d.reading.is_some();
        assert_eq!(
            believed,
            d.device_id == ids[4],
            "{}: {:?}",
            d.device_id,
            d.reading
        );
    }
    // The same nonsense again and again: refused each time, audited once a quarter hour.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for id in ids.iter().take(4).chain(std::iter::once(&"gpu/r3-0")) {
        let records = site.audit(id, "telemetry").await;
        assert_eq!(records.len(), 1, "{records:#?}");
    }
    assert_eq!(site.status().await.committed_power_w, counted);
    // Then silence: the flagged miner's reading goes stale and it too counts at its maximum.
    repeat.abort();
    site.until("silent rack-3 counted at its maximum", |h| {
        h.committed_power_w == before.committed_power_w + 5.0 * 3000.0 + 700.0
    })
    .await;

    agent.close().await;
    let out = site.pivotctl("ops", &["hosts", "forget", "rack-3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    site.until("rack-3 forgotten", |h| h == &before).await;
}

/// An agent whose session stays up while its readings stop (its polls further apart than the
/// controller believes a reading, or its poller hung): its miners count at their maximum, and a
/// curtail still sends them to sleep, since a sleep only lowers power and needs no proof. Before,
/// such miners were moved by no plan, so `pivotctl curtail` left them mining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curtail_sleeps_miners_whose_readings_went_stale_while_their_agent_is_connected() {
    let site = Site::start().await;
    let before = site.honest().await;
    let ids = ["miner/r4-a", "miner/r4-b"];
    let mut agent = site
        .agent(
            "rack-4",
            hello(
                "rack-4",
                // 15 J/TH: worth mining, so nothing but the curtail moves them.
                ids.iter()
                    .map(|id| v1::MinerInventory {
                        nameplate_hashrate_ths: Some(200.0),
                        ..miner_inv(id, 3000)
                    })
                    .collect(),
                vec![],
            ),
        )
        .await
        .unwrap();
    let mining = |id: &str| reading(id, v1::MinerState::Mining, 2900.0, 195.0);
    agent
        .send(telemetry(ids.iter().map(|id| mining(id)).collect(), vec![]))
        .await;
    site.until("rack-4's miners mining", |h| {
        h.agents_connected == 2 && h.miners_mining == before.miners_mining + 2
    })
    .await;
    // Then silence, the session kept: past three telemetry intervals (the controller's
    // `stale_after`, 3 s here) the readings are not believed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let out = site.pivotctl(
        "ops",
        &["curtail", "host/rack-4", "--reason", "stale readings"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = agent.intents_for(&ids).await;
    for id in ids {
        let target = sent.get(id).and_then(|i| i.target);
        assert_eq!(
            target,
            Some(v1::intent::Target::Miner(v1::MinerTarget {
                mode: v1::MinerMode::Sleep as i32,
                power_target_w: None,
            })),
            "{id}: {:?}",
            sent.get(id)
        );
        assert_eq!(sent[id].reason, "operator override", "{id}");
    }
    agent.close().await;
}

/// pivotctl failed with a clear message containing `words`, and did not panic.
fn fails(out: std::process::Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!err.contains("panicked"), "{err}");
    for w in words {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
}

fn succeeds(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(pivot_proto::model::timestamp_to_proto(t))
}

/// What pivotctl prints must be one line per row, with nothing a terminal would act on.
fn printable_lines(text: &str, rows: usize, what: &str) {
    assert_eq!(text.lines().count(), rows, "{what}: forged lines?\n{text}");
    for bad in ['\u{1b}', '\0', '\r', '\u{202e}', '\u{2028}'] {
        assert!(!text.contains(bad), "{what}: {bad:?} printed raw:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_careless_requests_get_clear_errors_store_nothing_and_forge_no_lines() {
    let site = Site::start().await;
    let _rack5 = site
        .agent(
            "rack-5",
            hello(
                "rack-5",
                vec![miner_inv("miner/r5-a", 3000)],
                vec![gpu_inv("gpu/r5-0")],
            ),
        )
        .await
        .unwrap();
    let before = site.honest().await;
    let mut ops = v1::fleet_service_client::FleetServiceClient::new(site.channel("ops").await);
    let now = chrono::Utc::now();

    // The panics the issue found, each now a clear error, and the controller still answers.
    fails(
        site.pivotctl(
            "ops",
            &[
                "dr",
                "start",
                "--target-kw",
                "1",
                "--duration",
                "99999999999d",
            ],
        ),
        &["longer than ten years"],
    );
    fails(
        site.pivotctl(
            "ops",
            &[
                "override",
                "set",
                "miners",
                "--sleep",
                "--expires-in",
                "99999999999d",
            ],
        ),
        &["longer than ten years"],
    );
    let dr = |f: &dyn Fn(&mut v1::DemandResponseRequest)| {
        let mut r = v1::DemandResponseRequest {
            target_power_w: 1000.0,
            deadline: ts(now + chrono::Duration::minutes(10)),
            duration: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            event_id: String::new(),
            actor: "test".into(),
        };
        f(&mut r);
        r
    };
    let long = |s: i64| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    for (req, field) in [
        (
            dr(&|r| r.duration = long(99_999_999_999 * 86_400)),
            "duration",
        ),
        (dr(&|r| r.duration = long(i64::MAX)), "duration"),
        (dr(&|r| r.duration = long(-5)), "duration"),
        (dr(&|r| r.duration = long(0)), "duration"),
        (
            dr(&|r| {
                r.deadline = Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                })
            }),
            "deadline",
        ),
        (
            dr(&|r| r.deadline = ts(now - chrono::Duration::days(1))),
            "deadline",
        ),
        (dr(&|r| r.target_power_w = f64::NAN), "target_power_w"),
        (dr(&|r| r.event_id = "ev\n  1 forged".into()), "event_id"),
    ] {
        let e = ops.demand_response(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    let listed = succeeds(site.pivotctl("viewer", &["dr", "status", "--json"]));
    assert_eq!(listed.trim(), "[]", "a refused event was stored");

    // A far-future expiry is refused at the edge and every later `override list` still reads.
    let sleep_miners = |expires_at, reason: &str, actor: &str| v1::SetOverrideRequest {
        r#override: Some(v1::Override {
            target: "miners".into(),
            pin: Some(v1::r#override::Pin::Miner(v1::MinerTarget {
                mode: v1::MinerMode::Sleep as i32,
                power_target_w: None,
            })),
            expires_at,
            reason: reason.into(),
            actor: actor.into(),
            created_at: None,
        }),
    };
    for far in [
        Some(prost_types::Timestamp {
            seconds: 253_402_300_799,
            nanos: 0,
        }),
        Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        }),
        ts(now + chrono::Duration::days(11 * 366)),
        ts(now - chrono::Duration::seconds(5)),
    ] {
        let e = ops
            .set_override(sleep_miners(far, "", ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().contains("override.expires_at"),
            "{}",
            e.message()
        );
    }
    ops.set_override(sleep_miners(
        ts(now + chrono::Duration::days(9 * 365)),
        "",
        "",
    ))
    .await
    .unwrap();
    let list = succeeds(site.pivotctl("viewer", &["override", "list"]));
    assert!(
        list.starts_with("miners") && list.contains("sleep"),
        "{list}"
    );
    succeeds(site.pivotctl("ops", &["override", "clear", "miners"]));

    // Values out of the device's range, unknown devices, pins of the wrong kind: refused, named.
    for (args, words) in [
        (
            &["miner/r5-a", "--power-target-w", "4294967295"][..],
            &["4294967295 W is outside miner `miner/r5-a`'s range 1500-3000 W"][..],
        ),
        (
            &["gpu/r5-0", "--gpu-cap-w", "4294967295"],
            &["4294967295 W is outside GPU `gpu/r5-0`'s range 200-700 W"],
        ),
        (
            &["host/rack-5", "--gpu-cap-w", "4294967295"],
            &["outside GPU `gpu/r5-0`"],
        ),
        (
            &["miner/nope", "--sleep"],
            &["no device or host `miner/nope`"],
        ),
        (&["host/nope", "--drain"], &["no host `nope`"]),
        (&["gpu/r5-0", "--sleep"], &["`gpu/r5-0` is a GPU"]),
        (
            &["miner/r5-a", "--gpu-cap-w", "300"],
            &["`miner/r5-a` is a miner"],
        ),
        (&["host/rack-5", "--power-target-w", "2000"], &["per miner"]),
        (&["miners", "--gpu-cap-w", "300"], &["only a miner pin"]),
    ] {
        let mut a = vec!["override", "set"];
        a.extend_from_slice(args);
        fails(site.pivotctl("ops", &a), words);
    }
    let list = succeeds(site.pivotctl("viewer", &["override", "list", "--json"]));
    assert_eq!(list, "", "a refused override was stored");

    // The spoofed actor: the audit names the certificate; what the client typed is a note.
    let spoof = "admin\n    99 2026-01-01T00:00:00+00:00 override miners cert:admin all clear";
    ops.set_override(sleep_miners(None, "fan swap", spoof))
        .await
        .unwrap();
    let out = std::process::Command::new(bin("pivotctl"))
        .env("USER", "root")
        .args([
            "--controller",
            &site.url(),
            "--ca-file",
            &site.pki.path("ca.pem"),
        ])
        .args([
            "--cert-file",
            &site.pki.path("ops.pem"),
            "--key-file",
            &site.pki.path("ops.key"),
        ])
        .args(["resume"])
        .output()
        .unwrap();
    succeeds(out);
    let records = site.audit("miners", "override").await;
    assert_eq!(records.len(), 4, "{records:#?}");
    for r in &records {
        assert_eq!(r.actor, "cert:ops", "{r:?}");
    }
    let detail: serde_json::Value = serde_json::from_str(&records[1].detail_json).unwrap();
    assert_eq!(detail["client_actor"], spoof);
    let detail: serde_json::Value = serde_json::from_str(&records[0].detail_json).unwrap();
    assert_eq!(detail["client_actor"], "pivotctl:root");

    // Ids with newlines, NUL or escapes are refused; free text (reasons) is kept as written and
    // printed escaped: nothing forges a line in `pivotctl audit`, `devices` or `override list`.
    let forged = "fan swap\n    98 2026-01-01T00:00:00+00:00 override miners cert:admin all clear\
                  \u{1b}[2J\u{1b}[31m\0\r\u{202e}\u{2028}";
    for (host, miner, field) in [
        ("rack-6\n    97 forged", "miner/r6-a", "hello.host_id"),
        ("rack-6", "miner/\u{1b}[2Jr6\0", "hello.miners[0].device_id"),
    ] {
        refused(
            site.agent("rack-6", hello(host, vec![miner_inv(miner, 3000)], vec![]))
                .await,
            tonic::Code::InvalidArgument,
            &[field],
        );
    }
    ops.set_override(v1::SetOverrideRequest {
        r#override: Some(v1::Override {
            target: "miner/r5-a".into(),
            pin: Some(v1::r#override::Pin::Miner(v1::MinerTarget {
                mode: v1::MinerMode::Sleep as i32,
                power_target_w: None,
            })),
            expires_at: None,
            reason: forged.into(),
            actor: forged.into(),
            created_at: None,
        }),
    })
    .await
    .unwrap();
    let stored = site.audit("miner/r5-a", "override").await;
    assert_eq!(
        stored[0].reason, forged,
        "the reason was not kept as written"
    );
    let n = site.audit("", "").await.len().min(200);
    let text = succeeds(site.pivotctl("viewer", &["audit", "--limit", "200"]));
    printable_lines(&text, n, "pivotctl audit");
    assert!(text.contains("fan swap\\n    98"), "{text}");
    let text = succeeds(site.pivotctl("viewer", &["override", "list"]));
    printable_lines(&text, 1, "pivotctl override list");
    let devices = site.devices("").await.len();
    let text = succeeds(site.pivotctl("viewer", &["devices"]));
    printable_lines(&text, devices + 1, "pivotctl devices");

    // The oversized policy: refused before anything is stored (4 MB by the transport, 100 KiB
    // by the controller, which audits the attempt); `policy get` shows the one in force.
    let dir = site.pki.dir.path();
    std::fs::write(dir.join("before.toml"), "name = \"before\"\n").unwrap();
    succeeds(site.pivotctl("admin", &["policy", "set", &site.pki.path("before.toml")]));
    for (kb, words) in [(4096, "too large"), (100, "at most 65536")] {
        let file = dir.join(format!("big-{kb}.toml"));
        std::fs::write(
            &file,
            format!("name = \"big\"\n# {}\n", "x".repeat(kb * 1024)),
        )
        .unwrap();
        fails(
            site.pivotctl("admin", &["policy", "set", file.to_str().unwrap()]),
            &[words],
        );
    }
    let got = succeeds(site.pivotctl("viewer", &["policy", "get"]));
    assert!(got.starts_with("# policy `before`, revision 1\n"), "{got}");
    let policy = site.audit("", "policy").await;
    let reasons: Vec<&str> = policy.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("policy refused:") && reasons[0].contains("65536"),
        "{reasons:?}"
    );
    assert_eq!(policy[0].actor, "cert:admin");
    assert!(reasons[1].contains("revision 1"), "{reasons:?}");
    // A policy whose name would forge `policy get`'s header line is printed escaped.
    std::fs::write(
        dir.join("evil.toml"),
        "name = \"evil`, revision 1\\n# policy `before\\u001b[2J\"\n",
    )
    .unwrap();
    succeeds(site.pivotctl("admin", &["policy", "set", &site.pki.path("evil.toml")]));
    let got = succeeds(site.pivotctl("viewer", &["policy", "get"]));
    let header = got.lines().next().unwrap();
    assert!(
        header.ends_with("revision 2") && header.contains("\\n"),
        "{got}"
    );
    assert!(!got.contains('\u{1b}'), "{got}");

    // Through all of it the honest agent's devices stayed as they were.
    let after = site.honest().await;
    assert_eq!(after.devices, before.devices);
    assert_eq!(after.agents_connected, before.agents_connected);
}
