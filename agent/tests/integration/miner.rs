//! Miner drivers against pivot-sim's emulated miners (fast timing profile), per dialect:
//! detect, identify, read, sleep, wake, power target, every fault, and "success but nothing
//! changed" caught by read-back.

use std::time::Duration;

use pivot_agent::miner::cgminer::{CgClient, parse};
use pivot_agent::miner::detect::detect;
use pivot_agent::miner::dialects::wm_crypto::V2Token;
use pivot_agent::miner::http::HttpClient;
use pivot_agent::miner::{
    Credentials, DriverContext, DriverOptions, MinerAddr, MinerDriver, MinerError, Timeouts,
    driver_for,
};
use pivot_proto::model::{MinerDialect, MinerState};
use pivot_sim::miner::{
    Bind, Dialect, Fault, HashUnit, JsonQuirk, MinerSpec, RunState, SimMiner, Timing, spawn,
};

fn options() -> DriverOptions {
    DriverOptions {
        timeouts: Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_millis(1500),
        },
        settle: Duration::from_secs(4),
        poll_interval: Duration::from_millis(50),
        slow_request: Duration::from_secs(5),
    }
}

fn ours(d: Dialect) -> MinerDialect {
    d.name().parse().unwrap()
}

fn addr_of(m: &SimMiner) -> MinerAddr {
    let mut a = MinerAddr::new("127.0.0.1").with_port(m.api_addr().port());
    if let Some(h) = m.http_addr() {
        a = a.with_http_port(h.port());
    }
    a
}

async fn start(spec: MinerSpec) -> (SimMiner, Box<dyn MinerDriver>) {
    start_timed(spec.timing(Timing::fast())).await
}

/// [`start`] with the spec's own timing.
async fn start_timed(spec: MinerSpec) -> (SimMiner, Box<dyn MinerDriver>) {
    let d = spec.dialect;
    let m = spawn(spec, Bind::localhost()).await.unwrap();
    let ctx = DriverContext::new(options(), Credentials::default_for(ours(d)));
    let driver = driver_for(ours(d), addr_of(&m), ctx, None);
    (m, driver)
}

async fn lifecycle(dialect: Dialect) {
    let (m, drv) = start(MinerSpec::new(dialect)).await;
    let addr = addr_of(&m);

    let found = detect(
        &addr,
        &HttpClient::new(options().timeouts),
        options().timeouts,
    )
    .await
    .unwrap();
    assert_eq!(found, ours(dialect), "detected dialect");

    let id = drv.identify().await.unwrap();
    assert_eq!(id.dialect, ours(dialect));
    assert!(
        id.model.is_some(),
        "{dialect}: identify names the model: {id:?}"
    );

    // Wait out the first ramp, then read.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = drv.read().await.unwrap();
    assert!(r.reachable);
    assert_eq!(r.state, MinerState::Mining, "{dialect}: {r:?}");
    // The poll names the model too (`miner probe` showed "-" for LuxOS and Whatsminer v2, and
    // the Bitaxe's board revision "601").
    let want = match dialect {
        Dialect::Antminer => "Antminer S19j Pro",
        Dialect::Braiins | Dialect::Luxos => "Antminer S21",
        Dialect::WhatsminerV2 => "M50S_VH50",
        Dialect::WhatsminerV3 => "M60S_VK30",
        Dialect::Bitaxe => "Bitaxe Gamma",
    };
    assert_eq!(r.model.as_deref(), Some(want), "{dialect}: {r:?}");
    assert_eq!(id.model.as_deref(), Some(want), "{dialect}: {id:?}");
    assert!(
        r.hashrate_ths.unwrap_or(0.0) > 0.0,
        "{dialect}: hashrate: {r:?}"
    );

    let slept = drv.sleep().await.unwrap();
    assert_eq!(slept.state, MinerState::Sleeping);
    assert!(
        m.handle().snapshot().sleep_requested,
        "{dialect}: the emulated hardware sleeps"
    );

    let woke = drv.wake().await.unwrap();
    assert!(
        matches!(woke.state, MinerState::Mining | MinerState::Ramping),
        "{woke:?}"
    );
    assert!(!m.handle().snapshot().sleep_requested);

    if dialect.has_power_target() {
        let (min, max) = m.handle().model().power_target_range_w();
        let want = min + (max - min) / 3;
        match drv.set_power_target(want).await {
            Ok(r) => assert!(r.power_target_w.is_some_and(|w| w <= want), "{r:?}"),
            Err(e) => panic!("{dialect}: power target {want}: {e}"),
        }
    } else {
        let e = drv.set_power_target(1000).await.unwrap_err();
        assert!(matches!(e, MinerError::Unsupported { .. }), "{e}");
    }
}

/// A Braiins OS miner paused while its hashboards still wind down reads as ramping, not asleep
/// at its mining draw; once they have stopped, asleep.
#[tokio::test]
async fn braiins_paused_but_still_hashing_reads_ramping() {
    let timing = Timing {
        ramp_down: Duration::from_secs(3),
        ..Timing::fast()
    };
    let (m, drv) = start_timed(MinerSpec::new(Dialect::Braiins).timing(timing)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(drv.read().await.unwrap().state, MinerState::Mining);
    m.handle().sleep();
    let winding = drv.read().await.unwrap();
    assert_eq!(winding.state, MinerState::Ramping, "{winding:?}");
    assert!(winding.power_w.unwrap_or(0.0) > 1000.0, "{winding:?}");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let asleep = drv.read().await.unwrap();
    assert_eq!(asleep.state, MinerState::Sleeping, "{asleep:?}");
}

#[tokio::test]
async fn antminer_lifecycle() {
    lifecycle(Dialect::Antminer).await;
}

#[tokio::test]
async fn braiins_lifecycle() {
    lifecycle(Dialect::Braiins).await;
}

#[tokio::test]
async fn luxos_lifecycle() {
    lifecycle(Dialect::Luxos).await;
}

#[tokio::test]
async fn whatsminer_v2_lifecycle() {
    lifecycle(Dialect::WhatsminerV2).await;
}

#[tokio::test]
async fn whatsminer_v3_lifecycle() {
    lifecycle(Dialect::WhatsminerV3).await;
}

#[tokio::test]
async fn bitaxe_lifecycle() {
    lifecycle(Dialect::Bitaxe).await;
}

#[tokio::test]
async fn antminer_wake_restores_the_mode_it_slept_in() {
    let (m, drv) = start(MinerSpec::new(Dialect::Antminer)).await;
    let before = m.handle().snapshot().work_mode;
    drv.sleep().await.unwrap();
    drv.wake().await.unwrap();
    assert_eq!(m.handle().snapshot().work_mode, before);
}

/// A stock Antminer asleep before the agent first saw it: the agent does not guess the work
/// mode to wake it into (the mode sets its draw), and says how to give one; with one configured
/// it wakes into that mode.
#[tokio::test]
async fn antminer_asleep_before_the_agent_saw_it_wakes_only_into_a_configured_mode() {
    let (m, drv) = start(MinerSpec::new(Dialect::Antminer).sleeping()).await;
    assert_eq!(m.handle().snapshot().state, RunState::Sleeping);
    let e = drv.wake().await.unwrap_err();
    assert!(matches!(e, MinerError::WakeModeUnknown { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains(&addr_of(&m).to_string()), "{text}");
    assert!(text.contains("antminer_wake_mode"), "{text}");
    assert_eq!(m.handle().snapshot().state, RunState::Sleeping);

    let ctx = DriverContext::new(options(), Credentials::default_for(MinerDialect::Antminer));
    let drv = driver_for(MinerDialect::Antminer, addr_of(&m), ctx, Some(3));
    let r = drv.wake().await.unwrap();
    assert!(
        matches!(r.state, MinerState::Mining | MinerState::Ramping),
        "{r:?}"
    );
    assert_eq!(m.handle().snapshot().work_mode, 3);
}

/// What went through a [`counting_proxy`].
#[derive(Clone, Default)]
struct Counts {
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Counts {
    fn now(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.connections.load(SeqCst), self.requests.load(SeqCst))
    }
}

/// A TCP forwarder in front of `to` that counts the connections it is handed and the HTTP/1.1
/// requests sent over them (request lines on their way to the miner).
async fn counting_proxy(to: std::net::SocketAddr) -> (u16, Counts) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = Counts::default();
    let seen = counts.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            seen.connections.fetch_add(1, SeqCst);
            let requests = seen.requests.clone();
            tokio::spawn(async move {
                let Ok(out) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let (mut from_agent, mut to_agent) = inbound.into_split();
                let (mut from_miner, mut to_miner) = out.into_split();
                let up = async move {
                    let marker = b" HTTP/1.1\r\n";
                    let mut tail: Vec<u8> = Vec::new();
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = from_agent.read(&mut buf).await {
                        if n == 0 || to_miner.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        // Request lines, also one split across two reads.
                        tail.extend_from_slice(&buf[..n]);
                        let found = tail.windows(marker.len()).filter(|w| w == marker).count();
                        requests.fetch_add(found, SeqCst);
                        let keep = tail.len().min(marker.len() - 1);
                        tail.drain(..tail.len() - keep);
                    }
                    let _ = to_miner.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut from_miner, &mut to_agent).await;
                    let _ = to_agent.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, counts)
}

#[tokio::test]
async fn antminer_answers_the_digest_challenge_it_knows_at_once_and_a_stale_one_again() {
    let timing = Timing {
        digest_nonce_ttl: Duration::from_secs(1),
        ..Timing::fast()
    };
    let m = spawn(
        MinerSpec::new(Dialect::Antminer).timing(timing),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let (port, counts) = counting_proxy(m.http_addr().unwrap()).await;
    let addr = MinerAddr::new("127.0.0.1")
        .with_port(m.api_addr().port())
        .with_http_port(port);
    let ctx = DriverContext::new(options(), Credentials::default_for(MinerDialect::Antminer));
    let drv = driver_for(MinerDialect::Antminer, addr, ctx, None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let slept = drv.sleep().await.unwrap();
    assert_eq!(slept.state, MinerState::Sleeping);
    // The config read (challenged, then answered), the config write and the read-back's
    // config read: 4 requests, where answering a fresh challenge each time took 6; all on the
    // one connection the call keeps, where each took its own before.
    assert_eq!(counts.now(), (1, 4));
    // A sleeping Antminer's read asks the config for its mode. The nonce is now older than
    // the server takes: it answers stale, and the call answers the new challenge once (on a
    // connection of its own: no call holds one now)...
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(drv.read().await.unwrap().state, MinerState::Sleeping);
    assert_eq!(counts.now(), (3, 6));
    // ...which the next call answers at once.
    assert_eq!(drv.read().await.unwrap().state, MinerState::Sleeping);
    assert_eq!(counts.now(), (4, 7));
    let woke = drv.wake().await.unwrap();
    assert!(
        matches!(woke.state, MinerState::Mining | MinerState::Ramping),
        "{woke:?}"
    );
    assert!(!m.handle().snapshot().sleep_requested);
}

#[tokio::test]
async fn a_rest_miner_sleep_and_wake_are_one_connection_each_with_their_read_backs() {
    for dialect in [Dialect::Braiins, Dialect::Bitaxe] {
        let d = ours(dialect);
        let m = spawn(
            MinerSpec::new(dialect).timing(Timing::fast()),
            Bind::localhost(),
        )
        .await
        .unwrap();
        let web = m.http_addr().unwrap_or(m.api_addr());
        let (port, counts) = counting_proxy(web).await;
        let addr = if dialect == Dialect::Bitaxe {
            MinerAddr::new("127.0.0.1").with_port(port)
        } else {
            MinerAddr::new("127.0.0.1")
                .with_port(m.api_addr().port())
                .with_http_port(port)
        };
        let ctx = DriverContext::new(options(), Credentials::default_for(d));
        let drv = driver_for(d, addr, ctx, None);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(drv.sleep().await.unwrap().state, MinerState::Sleeping);
        let (connections, requests) = counts.now();
        // Braiins: the login, the pause and the read-backs of five GETs each; Bitaxe: the
        // pause and its reads of one GET. The command and each read were a connection each.
        assert_eq!(connections, 1, "{dialect}: {requests} requests");
        let (sent, per_read) = if dialect == Dialect::Braiins {
            (2, 5)
        } else {
            (1, 1)
        };
        assert!(
            requests > sent && (requests - sent) % per_read == 0,
            "{dialect}: {requests} requests"
        );
        let woke = drv.wake().await.unwrap();
        assert!(
            matches!(woke.state, MinerState::Mining | MinerState::Ramping),
            "{dialect}: {woke:?}"
        );
        assert_eq!(counts.now().0, 2, "{dialect}");
        // A poll holds nothing after it: the next one is a connection of its own.
        drv.read().await.unwrap();
        drv.read().await.unwrap();
        assert_eq!(counts.now().0, 4, "{dialect}");
    }
}

#[tokio::test]
async fn antminer_m000_that_changes_nothing_is_caught_by_read_back() {
    let (_m, drv) =
        start(MinerSpec::new(Dialect::Antminer).faults(vec![Fault::AntminerNoop])).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let e = drv.sleep().await.unwrap_err();
    assert!(matches!(e, MinerError::NotApplied { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("127.0.0.1") && text.contains("M000"),
        "{text}"
    );
}

async fn every_dialect_fault(fault: Fault, check: impl Fn(Dialect, MinerError)) {
    for d in Dialect::ALL {
        let (_m, drv) = start(MinerSpec::new(d).faults(vec![fault])).await;
        let e = drv.read().await.unwrap_err();
        assert!(
            e.to_string().contains("127.0.0.1"),
            "{d}: error names the address: {e}"
        );
        check(d, e);
    }
}

#[tokio::test]
async fn hung_miner_times_out_with_its_address() {
    every_dialect_fault(Fault::Hang, |d, e| {
        assert!(matches!(e, MinerError::Timeout { .. }), "{d}: {e}");
    })
    .await;
}

/// A curtail whose login, token or config read goes unanswered has sent nothing that changes
/// the miner, and says so (the reconciler then tries again before the dialect's pacing); one
/// whose command itself went unanswered may have been carried out, and does not.
#[tokio::test]
async fn a_control_call_that_failed_before_its_command_says_it_sent_nothing() {
    let calls = Dialect::ALL.into_iter().map(|d| async move {
        let (m, drv) = start(MinerSpec::new(d).faults(vec![Fault::Hang])).await;
        let e = drv.sleep().await.unwrap_err();
        (d, m, e)
    });
    for (d, m, e) in futures::future::join_all(calls).await {
        assert!(e.is_unreachable(), "{d}: {e}");
        let before_command = !matches!(d, Dialect::Bitaxe);
        assert_eq!(
            e.sent_nothing(),
            before_command,
            "{d}: the first step of a sleep is {}: {e}",
            if before_command {
                "a login, token or read"
            } else {
                "the command"
            }
        );
        if before_command {
            assert!(e.to_string().contains("no command was sent"), "{d}: {e}");
        }
        assert!(
            !m.handle().snapshot().sleep_requested,
            "{d}: nothing changed"
        );
    }
    // Nothing listening: the command's own connection is refused, so it was never sent.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let ctx = DriverContext::new(options(), Credentials::default_for(MinerDialect::Bitaxe));
    let drv = driver_for(
        MinerDialect::Bitaxe,
        MinerAddr::new("127.0.0.1")
            .with_port(port)
            .with_http_port(port),
        ctx,
        None,
    );
    let e = drv.sleep().await.unwrap_err();
    assert!(e.sent_nothing(), "{e}");
}

#[tokio::test]
async fn miner_that_closes_without_reply() {
    every_dialect_fault(Fault::CloseWithoutReply, |d, e| {
        assert!(
            e.is_unreachable() || matches!(e, MinerError::Other { .. }),
            "{d}: {e}"
        );
    })
    .await;
}

#[tokio::test]
async fn json_quirks_still_read() {
    let quirks = [
        JsonQuirk::TrailingComma,
        JsonQuirk::MissingComma,
        JsonQuirk::LeadingComma,
        JsonQuirk::RawNewline,
        JsonQuirk::MissingCommaTemp,
        JsonQuirk::InfNan,
        JsonQuirk::GarbageBeforeId,
        JsonQuirk::NumbersAsStrings,
        JsonQuirk::HashrateUnit(HashUnit::Mhs),
        JsonQuirk::HashrateUnit(HashUnit::Ghs),
        JsonQuirk::HashrateUnit(HashUnit::Ths),
        JsonQuirk::NonUtf8,
    ];
    for d in [Dialect::Antminer, Dialect::Luxos, Dialect::WhatsminerV2] {
        for q in quirks {
            let (_m, drv) = start(MinerSpec::new(d).faults(vec![Fault::Quirk(q)])).await;
            tokio::time::sleep(Duration::from_millis(350)).await;
            let r = drv
                .read()
                .await
                .unwrap_or_else(|e| panic!("{d} {q:?}: {e}"));
            assert!(r.hashrate_ths.unwrap_or(0.0) > 0.0, "{d} {q:?}: {r:?}");
        }
        for q in [JsonQuirk::Truncated] {
            let (_m, drv) = start(MinerSpec::new(d).faults(vec![Fault::Quirk(q)])).await;
            // A truncated reply reads what survived, or fails with a typed error: never panics.
            let _ = drv.read().await;
        }
        let (_m, drv) = start(MinerSpec::new(d).faults(vec![Fault::NoNul])).await;
        tokio::time::sleep(Duration::from_millis(350)).await;
        drv.read()
            .await
            .unwrap_or_else(|e| panic!("{d} no-nul: {e}"));
    }
}

#[tokio::test]
async fn status_errors_are_typed() {
    for d in [Dialect::Antminer, Dialect::Luxos, Dialect::WhatsminerV2] {
        let (_m, drv) = start(MinerSpec::new(d).faults(vec![Fault::StatusError(14)])).await;
        let e = drv.read().await.unwrap_err();
        assert!(matches!(e, MinerError::Status { code: 14, .. }), "{d}: {e}");
        let (_m, drv) = start(MinerSpec::new(d).faults(vec![Fault::StatusError(45)])).await;
        let e = drv.read().await.unwrap_err();
        assert!(
            matches!(
                e,
                MinerError::AuthRejected { .. } | MinerError::Status { code: 45, .. }
            ),
            "{d}: {e}"
        );
    }
}

#[tokio::test]
async fn wrong_credentials_are_rejected_by_name() {
    for d in [
        Dialect::Antminer,
        Dialect::Braiins,
        Dialect::WhatsminerV2,
        Dialect::WhatsminerV3,
    ] {
        let (_m, drv) = start(MinerSpec::new(d).credentials("root", "not-the-default")).await;
        let e = drv.sleep().await.unwrap_err();
        assert!(
            matches!(e.inner(), MinerError::AuthRejected { .. }),
            "{d}: {e}"
        );
        assert!(!e.sent_nothing(), "{d}: a refused login is an answer: {e}");
        assert!(!e.to_string().contains("not-the-default"));
    }
}

#[tokio::test]
async fn luxos_session_faults() {
    let (_m, drv) =
        start(MinerSpec::new(Dialect::Luxos).faults(vec![Fault::LuxosSessionBusy])).await;
    let e = drv.sleep().await.unwrap_err();
    assert!(matches!(e.inner(), MinerError::AuthRejected { .. }), "{e}");
    assert!(e.to_string().contains("402"), "{e}");
    assert!(!e.sent_nothing(), "a refused logon is an answer: {e}");
    // Every session expires before use: one fresh logon, then a typed error naming the miner.
    let (m, drv) =
        start(MinerSpec::new(Dialect::Luxos).faults(vec![Fault::LuxosSessionExpired])).await;
    let e = drv.sleep().await.unwrap_err();
    assert!(
        matches!(
            e.inner(),
            MinerError::Status { .. } | MinerError::AuthRejected { .. }
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("127.0.0.1") && text.to_ascii_lowercase().contains("session"),
        "{text}"
    );
    assert!(!m.handle().snapshot().sleep_requested, "nothing changed");
}

#[tokio::test]
async fn luxos_session_that_expired_while_idle_gets_a_fresh_logon() {
    let timing = Timing {
        session_idle: Duration::from_millis(250),
        ..Timing::fast()
    };
    let (m, drv) = start_timed(MinerSpec::new(Dialect::Luxos).timing(timing)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    drv.sleep().await.unwrap();
    // The driver's cached session id is now stale: the miner dropped it after 250 ms idle.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let woke = drv.wake().await.unwrap();
    assert!(
        matches!(woke.state, MinerState::Mining | MinerState::Ramping),
        "{woke:?}"
    );
    assert!(!m.handle().snapshot().sleep_requested);
}

#[tokio::test]
async fn wrong_credentials_fault_for_each_dialect_with_auth() {
    // The miner holds other credentials than the client's (`wrong-credentials`): the write is
    // refused by name, nothing changes, and no secret appears in the error.
    for d in [
        Dialect::Antminer,
        Dialect::Braiins,
        Dialect::WhatsminerV2,
        Dialect::WhatsminerV3,
    ] {
        let (m, drv) = start(MinerSpec::new(d).faults(vec![Fault::WrongCredentials])).await;
        let e = drv.sleep().await.unwrap_err();
        assert!(
            matches!(e.inner(), MinerError::AuthRejected { .. }),
            "{d}: {e}"
        );
        assert!(!e.sent_nothing(), "{d}: a refused login is an answer: {e}");
        let text = e.to_string();
        assert!(text.contains("127.0.0.1"), "{d}: {text}");
        let (_, password) = MinerSpec::new(d).login();
        assert!(
            !text.contains(&format!(":{password}")) && !text.contains(&format!("\"{password}\"")),
            "{d}: {text}"
        );
        assert!(
            !m.handle().snapshot().sleep_requested,
            "{d}: nothing changed"
        );
    }
}

#[tokio::test]
async fn antminer_noop_on_wake_is_caught_by_read_back() {
    let (m, drv) = start(MinerSpec::new(Dialect::Antminer)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    drv.sleep().await.unwrap();
    m.handle().set_faults(vec![Fault::AntminerNoop]);
    let e = drv.wake().await.unwrap_err();
    assert!(matches!(e, MinerError::NotApplied { .. }), "{e}");
    assert!(e.to_string().contains("M000"), "{e}");
    assert!(m.handle().snapshot().sleep_requested, "still asleep");
}

#[tokio::test]
async fn braiins_4028_quirks_read_through_the_tolerant_parser() {
    // Braiins reads over REST, but its 4028 API (what detection and other tools use) sends the
    // same malformed JSON; the cgminer client must read it over a real socket.
    let (m, _drv) = start(MinerSpec::new(Dialect::Braiins)).await;
    let cg = CgClient::new(addr_of(&m), m.api_addr().port(), options().timeouts);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for q in [
        JsonQuirk::TrailingComma,
        JsonQuirk::MissingComma,
        JsonQuirk::LeadingComma,
        JsonQuirk::RawNewline,
        JsonQuirk::MissingCommaTemp,
        JsonQuirk::InfNan,
        JsonQuirk::GarbageBeforeId,
        JsonQuirk::NumbersAsStrings,
        JsonQuirk::HashrateUnit(HashUnit::Mhs),
        JsonQuirk::HashrateUnit(HashUnit::Ghs),
        JsonQuirk::HashrateUnit(HashUnit::Ths),
        JsonQuirk::NonUtf8,
    ] {
        m.handle().set_faults(vec![Fault::Quirk(q)]);
        let replies = cg
            .multi(&["summary", "pools"])
            .await
            .unwrap_or_else(|e| panic!("{q:?}: {e}"));
        let ths = replies
            .get("summary")
            .and_then(|s| s.pointer("/SUMMARY/0"))
            .and_then(parse::hashrate_ths);
        assert!(ths.is_some_and(|t| t > 100.0), "{q:?}: {replies:?}");
    }
    m.handle()
        .set_faults(vec![Fault::Quirk(JsonQuirk::Truncated)]);
    let _ = cg.command("summary", None).await;
    m.handle().set_faults(vec![Fault::NoNul]);
    cg.command("summary", None).await.unwrap();
}

/// One encrypted Whatsminer v2 write by hand: `get_token`, md5crypt key and sign, AES-256-ECB
/// request, encrypted answer decrypted with the same key.
async fn v2_write(cg: &CgClient, password: &str, cmd: serde_json::Value) -> serde_json::Value {
    let t = cg.command("get_token", None).await.unwrap();
    let msg = &t["Msg"];
    let token = V2Token::derive(
        password,
        msg["time"].as_str().unwrap(),
        msg["salt"].as_str().unwrap(),
        msg["newsalt"].as_str().unwrap(),
    );
    let mut plain = cmd;
    plain["token"] = serde_json::json!(token.sign);
    let payload = serde_json::json!({"enc": 1, "data": token.encrypt(&plain.to_string())});
    let raw = cg.raw(payload.to_string().as_bytes(), "enc").await.unwrap();
    match raw.get("enc").and_then(serde_json::Value::as_str) {
        Some(b64) => parse::parse_reply(&token.decrypt(b64).unwrap()).unwrap(),
        None => raw,
    }
}

#[tokio::test]
async fn whatsminer_v2_encrypted_write_round_trip() {
    let (m, _drv) = start(MinerSpec::new(Dialect::WhatsminerV2)).await;
    let cg = CgClient::new(addr_of(&m), m.api_addr().port(), options().timeouts);
    let r = v2_write(
        &cg,
        "admin",
        serde_json::json!({"cmd": "power_off", "respbefore": "true"}),
    )
    .await;
    assert_eq!(r["STATUS"], "S", "{r}");
    assert!(m.handle().snapshot().sleep_requested);
    let r = v2_write(&cg, "admin", serde_json::json!({"cmd": "power_on"})).await;
    assert_eq!(r["STATUS"], "S", "{r}");
    assert!(!m.handle().snapshot().sleep_requested);
    // A key from the wrong password does not decrypt on the miner: plain 135.
    let r = v2_write(&cg, "wrong", serde_json::json!({"cmd": "power_off"})).await;
    assert_eq!(
        (r["STATUS"].as_str(), r["Code"].as_u64()),
        (Some("E"), Some(135)),
        "{r}"
    );
    for code in [135, 136] {
        m.handle().set_faults(vec![Fault::WhatsminerToken(code)]);
        let r = v2_write(&cg, "admin", serde_json::json!({"cmd": "power_off"})).await;
        assert_eq!(r["Code"].as_u64(), Some(u64::from(code)), "{r}");
    }
    assert!(
        !m.handle().snapshot().sleep_requested,
        "refused writes change nothing"
    );
}

#[tokio::test]
async fn whatsminer_token_errors_retry_once_then_fail_typed() {
    for code in [135, 136] {
        for d in [Dialect::WhatsminerV2, Dialect::WhatsminerV3] {
            let (_m, drv) =
                start(MinerSpec::new(d).faults(vec![Fault::WhatsminerToken(code)])).await;
            let e = drv.sleep().await.unwrap_err();
            assert!(
                matches!(
                    e,
                    MinerError::AuthRejected { .. } | MinerError::Status { .. }
                ),
                "{d} {code}: {e}"
            );
        }
    }
}

#[tokio::test]
async fn a_truncated_or_empty_reply_reads_unknown_never_a_guessed_state() {
    // Truncation cuts the hashrate out of these dialects' poll: the state must not be guessed
    // (it read "faulted" on the Antminer, "ramping" on LuxOS) and the miner counts as down.
    for d in [Dialect::Antminer, Dialect::Luxos] {
        let (_m, drv) =
            start(MinerSpec::new(d).faults(vec![Fault::Quirk(JsonQuirk::Truncated)])).await;
        tokio::time::sleep(Duration::from_millis(350)).await;
        let r = pivot_agent::miner::poll(drv.as_ref()).await;
        assert_eq!(r.state, MinerState::Unknown, "{d}: {r:?}");
        assert_eq!(r.error_kind, Some("incomplete"), "{d}: {r:?}");
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("no hashrate")),
            "{r:?}"
        );
    }
    // Something that answers 4028 with JSON that is no miner's reply.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"{\"hello\":\"world\",\"id\":1}\0").await;
        }
    });
    let ctx = DriverContext::new(options(), Credentials::default_for(MinerDialect::Luxos));
    let drv = driver_for(
        MinerDialect::Luxos,
        MinerAddr::new("127.0.0.1")
            .with_port(port)
            .with_http_port(port),
        ctx,
        None,
    );
    let r = pivot_agent::miner::poll(drv.as_ref()).await;
    assert_eq!(r.state, MinerState::Unknown, "{r:?}");
    assert!(
        r.error.is_some(),
        "garbage must not read as a healthy miner: {r:?}"
    );
}
