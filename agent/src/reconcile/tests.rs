//! The reconciler's examples: each safety rule and each hole of issue 8, on the real loop with
//! paused tokio time, a clock per test, and a store that can be made to fail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pivot_proto::model::{Intent, IntentPhase, MinerState, MinerTarget, Target};
use pivot_proto::v1;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::testing::{FakeMiner, MemStore, TestClock, miner_showing};
use super::*;
use crate::config::Fallback;
use crate::miner::MinerError;

const SLEEP: Target = Target::Miner(MinerTarget::Sleep);
const RUN: Target = Target::Miner(MinerTarget::Run {
    power_target_w: None,
});

fn limits() -> Limits {
    super::testing::miner_limits(3000.0, 100.0)
}

/// A reconciler for one miner "m1" driven by `actuator`, its clock trusted.
fn reconciler(
    store: Arc<dyn IntentStore>,
    limits: Limits,
    actuator: Arc<dyn Actuator>,
    pacing: Duration,
    fallback: Fallback,
    clock: &TestClock,
) -> Arc<Reconciler> {
    let device = Device {
        limits,
        actuator,
        pacing,
        deadline: Duration::from_secs(300),
        repeatable: false,
    };
    reconciler_of(device, store, fallback, clock)
}

/// A reconciler for `device` as "m1".
fn reconciler_of(
    device: Device,
    store: Arc<dyn IntentStore>,
    fallback: Fallback,
    clock: &TestClock,
) -> Arc<Reconciler> {
    let devices = BTreeMap::from([("m1".to_owned(), device)]);
    let settings = Settings {
        confirm_timeout: Duration::from_secs(60),
        fallback,
        max_clock_skew: Duration::from_secs(5),
    };
    let r = Reconciler::new(devices, store, settings, clock.wall()).unwrap();
    r.note_controller_time(clock.now());
    r
}

/// A reconciler for one miner driven by `actuator`: default limits, 10 s pacing, hold.
fn driven_by(actuator: Arc<dyn Actuator>) -> (TestClock, Arc<Reconciler>) {
    let clock = TestClock::new();
    let r = reconciler(
        Arc::new(MemStore::default()),
        limits(),
        actuator,
        Duration::from_secs(10),
        Fallback::Hold,
        &clock,
    );
    (clock, r)
}

struct Setup {
    clock: TestClock,
    store: Arc<MemStore>,
    miner: Arc<FakeMiner>,
    r: Arc<Reconciler>,
}

fn setup(fallback: Fallback) -> Setup {
    let clock = TestClock::new();
    let store = Arc::new(MemStore::default());
    let miner = Arc::new(FakeMiner::default());
    let r = reconciler(
        store.clone(),
        limits(),
        miner.clone(),
        Duration::from_secs(10),
        fallback,
        &clock,
    );
    Setup {
        clock,
        store,
        miner,
        r,
    }
}

fn intent(generation: u64, target: Target, lease_s: i64, clock: &TestClock) -> v1::Intent {
    Intent {
        device_id: "m1".into(),
        generation,
        lease_expires_at: clock.now() + chrono::Duration::seconds(lease_s),
        target,
        reason: "test".into(),
        phase: 2,
        plan_id: "plan-7".into(),
    }
    .to_proto()
}

fn phases(r: &Reconciler) -> Vec<(u64, IntentPhase)> {
    r.reports
        .drain()
        .into_iter()
        .map(|s| (s.generation, IntentPhase::from_proto(s.phase, "p").unwrap()))
        .collect()
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Observes `observed`, taken a moment after everything so far.
async fn observe_now(r: &Arc<Reconciler>, observed: Observed) {
    tokio::time::advance(Duration::from_millis(1)).await;
    r.observe(
        "m1",
        Observation {
            taken_at: Instant::now(),
            observed,
        },
    );
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn sleep_is_applied_confirmed_and_resends_are_harmless() {
    let s = setup(Fallback::Hold);
    s.r.receive(&[intent(1, SLEEP, 300, &s.clock)], None);
    settle().await;
    // The call's own read-back shows the miner asleep: one report, confirmed (no `Applied` at
    // the same instant before it).
    assert_eq!(
        phases(&s.r),
        [(1, IntentPhase::Pending), (1, IntentPhase::Confirmed)]
    );
    s.r.receive(&[intent(1, SLEEP, 300, &s.clock)], None);
    settle().await;
    assert_eq!(phases(&s.r), [(1, IntentPhase::Confirmed)]);
    assert_eq!(s.miner.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn statuses_echo_the_plan_and_its_phase() {
    let s = setup(Fallback::Hold);
    s.r.receive(&[intent(1, SLEEP, 300, &s.clock)], None);
    settle().await;
    let reports = s.r.reports.drain();
    assert_eq!(reports.len(), 2);
    assert!(
        reports
            .iter()
            .all(|st| st.plan_id == "plan-7" && st.plan_phase == 2 && !st.retrying)
    );
}

#[tokio::test(start_paused = true)]
async fn a_rebooted_miner_is_curtailed_again_once_its_pacing_allows() {
    let s = setup(Fallback::Hold);
    s.r.receive(&[intent(1, SLEEP, 300, &s.clock)], None);
    settle().await;
    tokio::time::advance(Duration::from_secs(11)).await;
    *s.miner.asleep.lock().unwrap() = false; // a reboot lost the sleep
    observe_now(&s.r, s.miner.observed()).await;
    assert_eq!(s.miner.calls.load(Ordering::SeqCst), 2);
    assert!(*s.miner.asleep.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_sleep_is_confirmed_only_once_the_draw_falls() {
    /// Says "sleeping" at once, but the draw falls only later.
    struct SlowToFall;
    #[async_trait]
    impl Actuator for SlowToFall {
        async fn apply(&self, _: &Target, _: &RaiseGuard) -> Result<Observed, ApplyError> {
            Ok(asleep_drawing(2900.0))
        }
    }
    fn asleep_drawing(w: f64) -> Observed {
        Observed::Miner {
            reachable: true,
            state: MinerState::Sleeping,
            power_w: Some(w),
            hashrate_ths: Some(0.0),
            power_target_w: None,
        }
    }
    let clock = TestClock::new();
    let mut unknown_nameplate = limits();
    if let Limits::Miner {
        nameplate_power_w,
        nameplate_hashrate_ths,
        ..
    } = &mut unknown_nameplate
    {
        *nameplate_power_w = None;
        *nameplate_hashrate_ths = None;
    }
    let r = reconciler(
        Arc::new(MemStore::default()),
        unknown_nameplate,
        Arc::new(SlowToFall),
        Duration::from_secs(10),
        Fallback::Hold,
        &clock,
    );
    observe_now(&r, miner_showing(false)).await;
    r.receive(&[intent(1, SLEEP, 300, &clock)], None);
    settle().await;
    assert_eq!(
        phases(&r),
        [(1, IntentPhase::Pending), (1, IntentPhase::Applied)]
    );
    observe_now(&r, asleep_drawing(30.0)).await;
    assert_eq!(phases(&r), [(1, IntentPhase::Confirmed)]);
}

/// Fails every call with a transient error, counting them.
struct Flaky(AtomicUsize);

#[async_trait]
impl Actuator for Flaky {
    async fn apply(&self, _: &Target, _: &RaiseGuard) -> Result<Observed, ApplyError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(MinerError::Http {
            addr: "10.0.0.1".into(),
            request: "POST /cgi-bin/set_miner_conf.cgi".into(),
            status: 500,
            snippet: String::new(),
        }
        .into())
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_only_after_pacing() {
    let clock = TestClock::new();
    let flaky = Arc::new(Flaky(AtomicUsize::new(0)));
    let r = reconciler(
        Arc::new(MemStore::default()),
        limits(),
        flaky.clone(),
        Duration::from_secs(120),
        Fallback::Hold,
        &clock,
    );
    r.receive(&[intent(1, SLEEP, 300, &clock)], None);
    settle().await;
    let last = r.reports.drain().pop().unwrap();
    assert_eq!(last.phase, v1::IntentPhase::Failed as i32);
    assert!(last.retrying, "{last:?}");
    r.reconcile();
    settle().await;
    assert_eq!(flaky.0.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(121)).await;
    r.reconcile();
    settle().await;
    assert_eq!(flaky.0.load(Ordering::SeqCst), 2);
}

/// Fails every call as a miner does whose login times out (nothing sent), or, with `sent`,
/// whose command's reply never came (the command may have been carried out).
struct Unanswered {
    calls: AtomicUsize,
    sent: bool,
}

#[async_trait]
impl Actuator for Unanswered {
    async fn apply(&self, _: &Target, _: &RaiseGuard) -> Result<Observed, ApplyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let timeout = |during: &str| MinerError::Timeout {
            addr: "10.0.0.1".into(),
            during: during.into(),
            after: Duration::from_secs(3),
        };
        Err(if self.sent {
            timeout("waiting for the reply to `curtail`")
        } else {
            timeout("waiting for the reply to `logon`").before_command()
        }
        .into())
    }
}

/// The seconds after the first failure at which a device paced at 120 s, whose commands are
/// `repeatable` or not, is tried again, over `horizon_s` seconds of reconciling once a second.
async fn retry_times(sent: bool, repeatable: bool, horizon_s: u64) -> Vec<u64> {
    let clock = TestClock::new();
    let actuator = Arc::new(Unanswered {
        calls: AtomicUsize::new(0),
        sent,
    });
    let device = Device {
        limits: limits(),
        actuator: actuator.clone(),
        pacing: Duration::from_secs(120),
        deadline: Duration::from_secs(300),
        repeatable,
    };
    let r = reconciler_of(
        device,
        Arc::new(MemStore::default()),
        Fallback::Hold,
        &clock,
    );
    r.receive(&[intent(1, SLEEP, 3600, &clock)], None);
    settle().await;
    let mut seen = actuator.calls.load(Ordering::SeqCst);
    assert_eq!(seen, 1);
    let mut at = Vec::new();
    for s in 1..=horizon_s {
        tokio::time::advance(Duration::from_secs(1)).await;
        r.reconcile();
        settle().await;
        let now = actuator.calls.load(Ordering::SeqCst);
        if now > seen {
            at.push(s);
            seen = now;
        }
    }
    let last = r.reports.drain().pop().unwrap();
    assert_eq!(last.phase, v1::IntentPhase::Failed as i32);
    assert!(last.retrying, "{last:?}");
    at
}

#[tokio::test(start_paused = true)]
async fn a_call_that_sent_nothing_is_retried_sooner_than_the_pacing_backing_off() {
    // 2 s, then 4, 8, 16, 32, 64, then the pacing's 120 s between tries.
    let backing_off = [2, 6, 14, 30, 62, 126, 246, 366];
    assert_eq!(retry_times(false, false, 400).await, backing_off);
    // A reply that never came: the command may be running on the miner, the pacing holds.
    assert_eq!(retry_times(true, false, 400).await, [120, 240, 360]);
}

#[tokio::test(start_paused = true)]
async fn a_repeatable_command_whose_reply_was_lost_is_retried_as_soon_as_one_never_sent() {
    // A Braiins pause whose reply timed out: sending it again changes nothing if the first was
    // carried out, so it backs off from 2 s as a call that sent nothing does.
    let backing_off = [2, 6, 14, 30, 62, 126, 246, 366];
    assert_eq!(retry_times(true, true, 400).await, backing_off);
    assert_eq!(retry_times(false, true, 400).await, backing_off);
}

#[tokio::test(start_paused = true)]
async fn hole6_a_permanent_error_fails_its_generation_once() {
    struct Unsupported(AtomicUsize);
    #[async_trait]
    impl Actuator for Unsupported {
        async fn apply(&self, _: &Target, _: &RaiseGuard) -> Result<Observed, ApplyError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(MinerError::Unsupported {
                addr: "10.0.0.1".into(),
                dialect: pivot_proto::model::MinerDialect::Antminer,
                what: "a power target in watts".into(),
            }
            .into())
        }
    }
    let a = Arc::new(Unsupported(AtomicUsize::new(0)));
    let (clock, r) = driven_by(a.clone());
    r.receive(&[intent(1, SLEEP, 300, &clock)], None);
    settle().await;
    let failed = r.reports.drain().pop().unwrap();
    assert_eq!(failed.phase, v1::IntentPhase::Failed as i32);
    assert!(!failed.retrying, "a permanent error is final: {failed:?}");
    assert!(
        failed.detail.contains("does not support"),
        "{}",
        failed.detail
    );
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(30)).await;
        r.reconcile();
        settle().await;
    }
    assert_eq!(
        a.0.load(Ordering::SeqCst),
        1,
        "a permanent error was retried"
    );
    // A new generation is tried.
    r.receive(&[intent(2, SLEEP, 300, &clock)], None);
    settle().await;
    assert_eq!(a.0.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn no_wake_without_a_valid_lease_but_lowering_needs_none() {
    let s = setup(Fallback::Hold);
    s.r.receive(&[intent(1, SLEEP, 300, &s.clock)], None);
    settle().await;
    phases(&s.r);
    s.r.receive(&[intent(2, RUN, -5, &s.clock)], None);
    settle().await;
    assert_eq!(phases(&s.r), [(2, IntentPhase::Rejected)]);
    assert!(*s.miner.asleep.lock().unwrap());
    let s = setup(Fallback::Hold);
    s.r.receive(&[intent(3, SLEEP, -5, &s.clock)], None);
    settle().await;
    assert_eq!(phases(&s.r)[0], (3, IntentPhase::Pending));
    assert!(*s.miner.asleep.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn after_the_lease_expires_hold_never_raises() {
    let s = setup(Fallback::Hold);
    s.r.receive(&[intent(1, RUN, 30, &s.clock)], None);
    settle().await;
    assert!(!*s.miner.asleep.lock().unwrap());
    *s.miner.asleep.lock().unwrap() = true; // something put it to sleep
    s.clock.advance_s(60);
    tokio::time::advance(Duration::from_secs(60)).await;
    observe_now(&s.r, s.miner.observed()).await;
    assert!(
        *s.miner.asleep.lock().unwrap(),
        "hold must not wake a miner without a lease"
    );
    assert_eq!(s.miner.calls.load(Ordering::SeqCst), 1);
    let held = s.r.statuses().pop().unwrap();
    assert!(held.detail.contains("lease expired"), "{}", held.detail);
    // A renewal naming this intent lets it raise power again.
    s.r.renew(&Renewal {
        until: s.clock.now() + chrono::Duration::seconds(600),
        intents: vec![("m1".into(), 1)],
        controller_time: Some(s.clock.now()),
    });
    settle().await;
    assert!(!*s.miner.asleep.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn after_the_lease_expires_curtail_sleeps_and_says_so() {
    let s = setup(Fallback::Curtail);
    s.r.receive(&[intent(1, RUN, 30, &s.clock)], None);
    settle().await;
    assert!(!*s.miner.asleep.lock().unwrap());
    phases(&s.r);
    s.clock.advance_s(60);
    s.r.reconcile();
    settle().await;
    assert!(
        *s.miner.asleep.lock().unwrap(),
        "curtail fallback must sleep the miner"
    );
    // The fallback is on disk, with the reading it acted against.
    let saved = s.store.saved.lock().unwrap()["m1"].clone();
    assert_eq!(saved.fallback, Some(SLEEP));
    assert!(saved.before.is_some());
}

#[tokio::test(start_paused = true)]
async fn hole1_a_ramping_miner_is_not_woken_without_a_lease() {
    let s = setup(Fallback::Hold);
    s.r.receive(&[intent(1, RUN, 30, &s.clock)], None);
    settle().await;
    s.clock.advance_s(60);
    tokio::time::advance(Duration::from_secs(60)).await;
    // Someone puts it to sleep; on its way there the firmware says "ramping".
    observe_now(
        &s.r,
        Observed::Miner {
            reachable: true,
            state: MinerState::Ramping,
            power_w: Some(1500.0),
            hashrate_ths: Some(40.0),
            power_target_w: None,
        },
    )
    .await;
    assert_eq!(
        s.miner.calls.load(Ordering::SeqCst),
        1,
        "woken without a lease"
    );
}

/// Applies after `gate` is notified; counts calls running at once.
#[derive(Default)]
struct Gated {
    gate: Notify,
    running: AtomicUsize,
    max_running: AtomicUsize,
    calls: AtomicUsize,
}

/// Decrements `running` however the call ends (finished or dropped).
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Actuator for Gated {
    async fn apply(&self, target: &Target, _: &RaiseGuard) -> Result<Observed, ApplyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        let _running = Running(&self.running);
        self.max_running.fetch_max(now, Ordering::SeqCst);
        self.gate.notified().await;
        Ok(miner_showing(matches!(
            target,
            Target::Miner(MinerTarget::Sleep)
        )))
    }
}

#[tokio::test(start_paused = true)]
async fn hole2_a_newer_intent_waits_for_the_call_in_flight() {
    let gated = Arc::new(Gated::default());
    let (clock, r) = driven_by(gated.clone());
    observe_now(&r, miner_showing(false)).await;
    // A sleep in flight (lowering: not abandoned), then a newer intent.
    r.receive(&[intent(1, SLEEP, 300, &clock)], None);
    settle().await;
    r.receive(&[intent(2, RUN, 300, &clock)], None);
    settle().await;
    assert_eq!(
        gated.calls.load(Ordering::SeqCst),
        1,
        "the newer intent did not wait"
    );
    gated.gate.notify_one();
    settle().await;
    // The first call ended; the newer intent goes now, alone.
    assert_eq!(gated.calls.load(Ordering::SeqCst), 2);
    gated.gate.notify_one();
    settle().await;
    assert_eq!(
        gated.max_running.load(Ordering::SeqCst),
        1,
        "two driver calls at once"
    );
    let p = phases(&r);
    assert!(
        p.contains(&(2, IntentPhase::Applied)) || p.contains(&(2, IntentPhase::Confirmed)),
        "{p:?}"
    );
    assert!(
        !p.contains(&(1, IntentPhase::Applied)) && !p.contains(&(1, IntentPhase::Confirmed)),
        "superseded generation reported: {p:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn hole2_a_raising_call_is_abandoned_for_a_newer_sleep() {
    let gated = Arc::new(Gated::default());
    let (clock, r) = driven_by(gated.clone());
    observe_now(&r, miner_showing(true)).await;
    r.receive(&[intent(1, RUN, 300, &clock)], None);
    settle().await;
    assert_eq!(gated.running.load(Ordering::SeqCst), 1);
    // A demand-response event: sleep now. The wake is abandoned (its future dropped) before
    // anything else happens; the miner never left its sleep, so the sleep holds already.
    r.receive(&[intent(2, SLEEP, 300, &clock)], None);
    settle().await;
    assert_eq!(
        gated.running.load(Ordering::SeqCst),
        0,
        "the wake was not abandoned"
    );
    assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
    let p = phases(&r);
    assert!(p.contains(&(2, IntentPhase::Confirmed)), "{p:?}");
    assert!(!p.contains(&(1, IntentPhase::Applied)), "{p:?}");
}

#[tokio::test(start_paused = true)]
async fn a_call_past_its_deadline_is_abandoned_and_retried() {
    let gated = Arc::new(Gated::default());
    let (clock, r) = driven_by(gated.clone());
    r.receive(&[intent(1, SLEEP, 3000, &clock)], None);
    settle().await;
    tokio::time::advance(Duration::from_secs(301)).await;
    settle().await;
    let failed = r.reports.drain().pop().unwrap();
    assert_eq!(failed.phase, v1::IntentPhase::Failed as i32);
    assert!(
        failed.retrying && failed.detail.contains("did not finish"),
        "{failed:?}"
    );
    assert_eq!(
        gated.running.load(Ordering::SeqCst),
        0,
        "the hung call was dropped"
    );
    r.reconcile();
    settle().await;
    assert_eq!(
        gated.calls.load(Ordering::SeqCst),
        1,
        "retried inside pacing"
    );
    tokio::time::advance(Duration::from_secs(11)).await;
    r.reconcile();
    settle().await;
    assert_eq!(gated.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn hole3_a_reading_taken_before_the_apply_finished_is_dropped() {
    let s = setup(Fallback::Hold);
    let before_the_call = Instant::now();
    tokio::time::advance(Duration::from_millis(1)).await;
    s.r.receive(&[intent(1, SLEEP, 300, &s.clock)], None);
    settle().await;
    // A sweep read the miner mining before the sleep landed and reports it now.
    s.r.observe(
        "m1",
        Observation {
            taken_at: before_the_call,
            observed: miner_showing(false),
        },
    );
    settle().await;
    assert_eq!(
        s.miner.calls.load(Ordering::SeqCst),
        1,
        "re-applied on a stale reading"
    );
    assert_eq!(s.r.statuses()[0].phase, v1::IntentPhase::Confirmed as i32);
    // A genuinely newer reading of drift waits for the pacing too.
    observe_now(&s.r, miner_showing(false)).await;
    assert_eq!(
        s.miner.calls.load(Ordering::SeqCst),
        1,
        "re-applied inside pacing"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    s.r.reconcile();
    settle().await;
    assert_eq!(s.miner.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn hole7_an_intent_that_cannot_be_saved_is_not_applied() {
    let s = setup(Fallback::Hold);
    s.r.receive(&[intent(1, SLEEP, 300, &s.clock)], None);
    settle().await;
    phases(&s.r);
    s.store.fail.store(true, Ordering::SeqCst);
    s.r.receive(&[intent(2, RUN, 300, &s.clock)], None);
    settle().await;
    let st = s.r.reports.drain();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].phase, v1::IntentPhase::Failed as i32);
    assert!(!st[0].retrying);
    assert!(
        st[0].detail.contains("could not be saved"),
        "{}",
        st[0].detail
    );
    assert!(
        *s.miner.asleep.lock().unwrap(),
        "applied an intent that is not on disk"
    );
    assert_eq!(
        s.r.held_intents()[0].generation,
        1,
        "the intent held before stays"
    );
    // The disk is back: the controller's next send is taken.
    s.store.fail.store(false, Ordering::SeqCst);
    s.r.receive(&[intent(2, RUN, 300, &s.clock)], None);
    settle().await;
    assert!(!*s.miner.asleep.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn hole9_a_renewal_extends_only_what_it_names() {
    let s = setup(Fallback::Hold);
    s.r.receive(&[intent(3, RUN, 30, &s.clock)], None);
    settle().await;
    *s.miner.asleep.lock().unwrap() = true;
    s.clock.advance_s(60);
    tokio::time::advance(Duration::from_secs(60)).await;
    observe_now(&s.r, s.miner.observed()).await;
    let later = s.clock.now() + chrono::Duration::seconds(600);
    // Another controller renews without naming anything, or names a generation not held.
    for named in [
        vec![],
        vec![("m1".to_owned(), 2)],
        vec![("m2".to_owned(), 3)],
    ] {
        s.r.renew(&Renewal {
            until: later,
            intents: named,
            controller_time: Some(s.clock.now()),
        });
        settle().await;
        assert!(
            *s.miner.asleep.lock().unwrap(),
            "a blind renewal woke the miner"
        );
    }
    assert!(s.r.held_intents()[0].lease_expires_at < later);
    s.r.renew(&Renewal {
        until: later,
        intents: vec![("m1".to_owned(), 3)],
        controller_time: Some(s.clock.now()),
    });
    settle().await;
    assert!(!*s.miner.asleep.lock().unwrap());
    assert_eq!(
        s.store.saved.lock().unwrap()["m1"].intent.lease_expires_at,
        later
    );
}

#[tokio::test(start_paused = true)]
async fn hole9_a_clock_off_the_controllers_raises_nothing_but_still_lowers() {
    let s = setup(Fallback::Hold);
    *s.miner.asleep.lock().unwrap() = true;
    observe_now(&s.r, s.miner.observed()).await;
    // The controller's clock is 30 s ahead of ours: a lease cannot be trusted.
    let ahead = s.clock.now() + chrono::Duration::seconds(30);
    s.r.receive(&[intent(1, RUN, 300, &s.clock)], Some(ahead));
    settle().await;
    assert!(*s.miner.asleep.lock().unwrap());
    let st = s.r.statuses().pop().unwrap();
    assert!(
        st.detail.contains("clock") && st.detail.contains("+30"),
        "{}",
        st.detail
    );
    assert!(matches!(s.r.clock_check(), ClockCheck::Beyond { .. }));
    // Lowering is always allowed.
    *s.miner.asleep.lock().unwrap() = false;
    s.r.receive(&[intent(2, SLEEP, 300, &s.clock)], Some(ahead));
    observe_now(&s.r, s.miner.observed()).await;
    assert!(*s.miner.asleep.lock().unwrap());
    // Back within bound: raising resumes.
    s.r.receive(&[intent(3, RUN, 300, &s.clock)], Some(s.clock.now()));
    settle().await;
    assert!(!*s.miner.asleep.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_raises_nothing_before_it_has_seen_the_controllers_clock() {
    let clock = TestClock::new();
    let store = Arc::new(MemStore::default());
    let miner = Arc::new(FakeMiner::default());
    let r = reconciler(
        store.clone(),
        limits(),
        miner.clone(),
        Duration::from_secs(10),
        Fallback::Hold,
        &clock,
    );
    r.receive(&[intent(1, RUN, 300, &clock)], None);
    settle().await;
    r.shutdown();
    drop(r);
    *miner.asleep.lock().unwrap() = true;
    let devices = BTreeMap::from([(
        "m1".to_owned(),
        Device {
            limits: limits(),
            actuator: miner.clone(),
            pacing: Duration::from_secs(10),
            deadline: Duration::from_secs(300),
            repeatable: false,
        },
    )]);
    let settings = Settings {
        confirm_timeout: Duration::from_secs(60),
        fallback: Fallback::Hold,
        max_clock_skew: Duration::from_secs(5),
    };
    let r = Reconciler::new(devices, store, settings, clock.wall()).unwrap();
    observe_now(&r, miner.observed()).await;
    assert!(*miner.asleep.lock().unwrap());
    r.note_controller_time(clock.now());
    settle().await;
    assert!(!*miner.asleep.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn rejects_name_the_reason_and_change_nothing() {
    let s = setup(Fallback::Hold);
    let mut bad = intent(
        1,
        Target::Miner(MinerTarget::Run {
            power_target_w: Some(2000),
        }),
        60,
        &s.clock,
    );
    s.r.receive(std::slice::from_ref(&bad), None);
    bad.device_id = "nope".into();
    s.r.receive(
        &[
            bad,
            intent(1, Target::Gpu { power_cap_w: 300 }, 60, &s.clock),
        ],
        None,
    );
    let mut malformed = intent(2, SLEEP, 60, &s.clock);
    malformed.target = None;
    let huge = intent(u64::MAX, SLEEP, 60, &s.clock);
    s.r.receive(&[malformed, huge], None);
    settle().await;
    let reports = s.r.reports.drain();
    assert_eq!(reports.len(), 5);
    assert!(
        reports
            .iter()
            .all(|s| s.phase == IntentPhase::Rejected.to_proto() as i32)
    );
    let details: Vec<&str> = reports.iter().map(|r| r.detail.as_str()).collect();
    assert!(details[0].contains("power target"), "{details:?}");
    assert!(details[1].contains("no device `nope`"), "{details:?}");
    assert!(details[2].contains("GPU target"), "{details:?}");
    assert!(details[3].contains("intents[0].target"), "{details:?}");
    assert!(details[4].contains("generation"), "{details:?}");
    assert_eq!(s.miner.calls.load(Ordering::SeqCst), 0);
    assert!(s.r.held_intents().is_empty());
    assert_eq!(s.store.saves.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn held_intents_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::new(
        &crate::state::StateDir::open(dir.path()).unwrap(),
    ));
    let clock = TestClock::new();
    let miner = Arc::new(FakeMiner::default());
    let r = reconciler(
        store.clone(),
        limits(),
        miner.clone(),
        Duration::from_secs(10),
        Fallback::Hold,
        &clock,
    );
    r.receive(&[intent(4, SLEEP, 300, &clock)], None);
    settle().await;
    r.shutdown();
    drop(r);
    let r = reconciler(
        store,
        limits(),
        miner.clone(),
        Duration::from_secs(10),
        Fallback::Hold,
        &clock,
    );
    assert_eq!(r.held_intents()[0].generation, 4);
    *miner.asleep.lock().unwrap() = false;
    observe_now(&r, miner.observed()).await;
    assert!(*miner.asleep.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn saved_intents_are_checked_on_load_as_on_receipt() {
    let clock = TestClock::new();
    let store = Arc::new(MemStore::default());
    let good = Intent {
        device_id: "m1".into(),
        generation: 2,
        lease_expires_at: clock.now(),
        target: SLEEP,
        reason: String::new(),
        phase: 0,
        plan_id: String::new(),
    };
    let too_much = Intent {
        device_id: "m2".into(),
        target: Target::Miner(MinerTarget::Run {
            power_target_w: Some(4_000_000_000),
        }),
        ..good.clone()
    };
    let locked_out = Intent {
        device_id: "m3".into(),
        generation: u64::MAX,
        ..good.clone()
    };
    for i in [&good, &too_much, &locked_out] {
        store
            .saved
            .lock()
            .unwrap()
            .insert(i.device_id.clone(), HeldRecord::new(i.clone()));
    }
    let mut targets = limits();
    if let Limits::Miner {
        power_target,
        power_target_min_w,
        power_target_max_w,
        ..
    } = &mut targets
    {
        *power_target = true;
        *power_target_min_w = Some(1500);
        *power_target_max_w = Some(3300);
    }
    let devices: BTreeMap<String, Device> = ["m1", "m2", "m3"]
        .into_iter()
        .map(|id| {
            (
                id.to_owned(),
                Device {
                    limits: targets.clone(),
                    actuator: Arc::new(FakeMiner::default()),
                    pacing: Duration::from_secs(10),
                    deadline: Duration::from_secs(60),
                    repeatable: false,
                },
            )
        })
        .collect();
    let settings = Settings {
        confirm_timeout: Duration::from_secs(60),
        fallback: Fallback::Hold,
        max_clock_skew: Duration::from_secs(5),
    };
    let r = Reconciler::new(devices, store.clone(), settings, clock.wall()).unwrap();
    let held: Vec<String> = r.held_intents().into_iter().map(|i| i.device_id).collect();
    assert_eq!(held, ["m1"]);
    let refused = r.reports.drain();
    assert_eq!(refused.len(), 2);
    for st in &refused {
        assert_eq!(st.phase, v1::IntentPhase::Rejected as i32);
        assert!(st.detail.contains("intents.json"), "{}", st.detail);
    }
    assert!(
        refused[0].detail.contains("4000000000"),
        "{}",
        refused[0].detail
    );
    assert!(
        refused[1].detail.contains("generation"),
        "{}",
        refused[1].detail
    );
    // Dropped from the store too: the next start does not refuse them again.
    assert_eq!(store.saved.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_restored_intent_whose_lease_expired_says_so() {
    let clock = TestClock::new();
    let store = Arc::new(MemStore::default());
    let expired = Intent {
        device_id: "m1".into(),
        generation: 5,
        lease_expires_at: clock.now() - chrono::Duration::seconds(600),
        target: RUN,
        reason: String::new(),
        phase: 0,
        plan_id: String::new(),
    };
    store
        .saved
        .lock()
        .unwrap()
        .insert("m1".into(), HeldRecord::new(expired));
    let miner = Arc::new(FakeMiner::default());
    *miner.asleep.lock().unwrap() = true;
    let r = reconciler(
        store,
        limits(),
        miner.clone(),
        Duration::from_secs(10),
        Fallback::Hold,
        &clock,
    );
    observe_now(&r, miner.observed()).await;
    let st = r.statuses().pop().unwrap();
    assert_eq!(st.phase, v1::IntentPhase::Pending as i32);
    assert!(st.detail.contains("lease expired"), "{}", st.detail);
    assert_eq!(miner.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_wake_is_not_confirmed_by_the_reply_alone() {
    /// Replies "mining" at standby draw right after a wake; ramps only on later reads.
    struct JustWoken;
    #[async_trait]
    impl Actuator for JustWoken {
        async fn apply(&self, _: &Target, _: &RaiseGuard) -> Result<Observed, ApplyError> {
            Ok(Observed::Miner {
                reachable: true,
                state: MinerState::Mining,
                power_w: Some(21.0),
                hashrate_ths: Some(0.3),
                power_target_w: None,
            })
        }
    }
    let clock = TestClock::new();
    let r = reconciler(
        Arc::new(MemStore::default()),
        limits(),
        Arc::new(JustWoken),
        Duration::from_secs(10),
        Fallback::Hold,
        &clock,
    );
    observe_now(&r, miner_showing(true)).await;
    r.receive(&[intent(1, RUN, 300, &clock)], None);
    settle().await;
    assert_eq!(
        phases(&r),
        [(1, IntentPhase::Pending), (1, IntentPhase::Applied)]
    );
    observe_now(&r, miner_showing(false)).await;
    assert_eq!(phases(&r), [(1, IntentPhase::Confirmed)]);
}

#[tokio::test(start_paused = true)]
async fn a_target_failed_for_good_stays_so_after_its_fallback_fails_too_and_a_renewal() {
    // Found by the model-based test: the fallback's permanent failure used to replace the
    // intent's, and a renewal then tried the intent's target again.
    struct NoPermission(AtomicUsize);
    #[async_trait]
    impl Actuator for NoPermission {
        async fn apply(&self, _: &Target, _: &RaiseGuard) -> Result<Observed, ApplyError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(crate::gpu::GpuError::NoPermission {
                gpu: "GPU 0".into(),
                action: "set the power limit",
            }
            .into())
        }
    }
    let clock = TestClock::new();
    let a = Arc::new(NoPermission(AtomicUsize::new(0)));
    let r = reconciler(
        Arc::new(MemStore::default()),
        Limits::Gpu {
            min_cap_w: 100,
            max_cap_w: 700,
        },
        a.clone(),
        Duration::from_secs(5),
        Fallback::Curtail,
        &clock,
    );
    observe_now(
        &r,
        Observed::Gpu {
            limit_w: Some(700.0),
            enforced_cap_w: Some(700.0),
            power_w: Some(650.0),
        },
    )
    .await;
    r.receive(
        &[intent(1, Target::Gpu { power_cap_w: 150 }, 10, &clock)],
        None,
    );
    settle().await;
    clock.advance_s(11);
    r.reconcile();
    settle().await;
    assert_eq!(
        a.0.load(Ordering::SeqCst),
        2,
        "the intent's target, then the fallback's"
    );
    r.renew(&Renewal {
        until: clock.now() + chrono::Duration::seconds(300),
        intents: vec![("m1".into(), 1)],
        controller_time: Some(clock.now()),
    });
    tokio::time::advance(Duration::from_secs(60)).await;
    r.reconcile();
    settle().await;
    assert_eq!(
        a.0.load(Ordering::SeqCst),
        2,
        "tried again after failing for good"
    );
    let st = r.statuses().pop().unwrap();
    assert_eq!(st.phase, v1::IntentPhase::Failed as i32);
    assert!(!st.retrying);
}
