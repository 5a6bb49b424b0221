//! `Market`: owns the sources, refreshes each on its own interval (concurrently, each refresh
//! under a timeout), checks every reading the same way (plausible, not stale, not from the
//! future), keeps the last good value per input, and hands out snapshots.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::ai::FirmContract;
use super::checks::{Plausible, PlausibleRanges};
use super::config::Timing;
use super::error::{Origin, SourceError, SourceErrorKind};
use super::reading::{AiDemand, AiValue, EnergyPrice, Hashprice, Input, Reading};
use super::snapshot::{Health, InputSnapshot, MarketSnapshot};
use super::source::MarketSource;

/// A source with its timing.
pub struct Sourced<V> {
    pub source: Box<dyn MarketSource<V>>,
    pub timing: Timing,
}

impl<V> Sourced<V> {
    pub fn new(source: impl MarketSource<V> + 'static, timing: Timing) -> Self {
        Self {
            source: Box::new(source),
            timing,
        }
    }
}

/// Everything a `Market` is made of. `MarketParts::from_config` builds it from `[market]`;
/// a caller may swap one source first (a workload manager's AI demand).
pub struct MarketParts {
    pub hashprice: Sourced<Hashprice>,
    pub energy: Sourced<EnergyPrice>,
    pub ai_value: Sourced<AiValue>,
    pub ai_demand: Sourced<AiDemand>,
    pub firm_contracts: Vec<FirmContract>,
    pub checks: PlausibleRanges,
}

/// How far ahead of the controller's clock a reading may claim to be (clock skew between
/// hosts) before it is refused; within it, the reading counts as taken now.
pub const FUTURE_SKEW: Duration = Duration::from_secs(300);

/// Longest wait before retrying a source whose refresh failed.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

struct Slot<V> {
    input: Input,
    source: Box<dyn MarketSource<V>>,
    timing: Timing,
    next_due: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
struct InputState<V> {
    origin: Origin,
    max_age: Duration,
    last_good: Option<Reading<V>>,
    last_attempt: Option<DateTime<Utc>>,
    last_error: Option<SourceError>,
    /// Refusals since the last accepted reading (the first of a kind is logged as a warning,
    /// the repeats at debug: a feed down for hours is one line, not one per refresh).
    refused_in_a_row: u64,
}

impl<V: Clone> InputState<V> {
    fn new(origin: Origin, timing: Timing) -> Self {
        Self {
            origin,
            max_age: Duration::from_secs(timing.max_age_s),
            last_good: None,
            last_attempt: None,
            last_error: None,
            refused_in_a_row: 0,
        }
    }

    fn snapshot(&self, input: Input, now: DateTime<Utc>) -> InputSnapshot<V> {
        let age = self
            .last_good
            .as_ref()
            .map(|r| (now - r.at).to_std().unwrap_or(Duration::ZERO));
        let in_force = age.is_some_and(|a| a <= self.max_age);
        let health = match (&self.last_error, &self.last_good) {
            (Some(e), _) => Health::Failed(e.clone()),
            (None, None) => Health::Pending,
            (None, Some(_)) if in_force => Health::Fresh,
            (None, Some(_)) => Health::Stale,
        };
        InputSnapshot {
            input,
            origin: self.origin.clone(),
            value: self.last_good.clone().filter(|_| in_force),
            last_good: self.last_good.clone(),
            age,
            max_age: self.max_age,
            health,
            last_attempt: self.last_attempt,
        }
    }

    fn record(
        &mut self,
        input: Input,
        now: DateTime<Utc>,
        result: Result<Reading<V>, SourceError>,
    ) {
        self.last_attempt = Some(now);
        match result {
            Ok(r) => {
                if self.refused_in_a_row > 0 {
                    info!(input = %input, source = %r.source, refused = self.refused_in_a_row, "Market reading accepted again");
                } else {
                    debug!(input = %input, source = %r.source, at = %r.at, "Market reading accepted");
                }
                self.last_good = Some(r);
                self.last_error = None;
                self.refused_in_a_row = 0;
            }
            Err(e) => {
                let repeat = self.last_error.as_ref().is_some_and(|last| {
                    std::mem::discriminant(&last.kind) == std::mem::discriminant(&e.kind)
                });
                if repeat {
                    debug!(input = %input, source = %e.origin.name, error = %e.kind, refused = self.refused_in_a_row + 1, "Market reading refused again");
                } else {
                    warn!(
                        input = %input,
                        source = %e.origin.name,
                        location = %e.origin.location,
                        error = %e.kind,
                        "Market reading refused; the last good value stays in force until it is older than max_age_s (repeats of this error are logged at debug)"
                    );
                }
                self.refused_in_a_row += 1;
                self.last_error = Some(e);
            }
        }
    }
}

struct State {
    hashprice: InputState<Hashprice>,
    energy: InputState<EnergyPrice>,
    ai_value: InputState<AiValue>,
    ai_demand: InputState<AiDemand>,
}

struct Shared {
    state: Mutex<State>,
    firm_contracts: Arc<[FirmContract]>,
    updates: watch::Sender<u64>,
}

/// The market inputs: sources, their refresh schedule, and the last good values.
pub struct Market {
    hashprice: Slot<Hashprice>,
    energy: Slot<EnergyPrice>,
    ai_value: Slot<AiValue>,
    ai_demand: Slot<AiDemand>,
    checks: PlausibleRanges,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Market")
            .field("hashprice", self.hashprice.source.origin())
            .field("energy", self.energy.source.origin())
            .field("ai_value", self.ai_value.source.origin())
            .field("ai_demand", self.ai_demand.source.origin())
            .finish_non_exhaustive()
    }
}

/// A cheap, cloneable handle for reading snapshots while the market refreshes elsewhere.
#[derive(Clone)]
pub struct MarketView {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MarketView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketView").finish_non_exhaustive()
    }
}

impl MarketView {
    /// The market at `now`: what is in force, how old, how healthy.
    pub fn snapshot(&self, now: DateTime<Utc>) -> MarketSnapshot {
        // A poisoned lock only means a refresh panicked mid-record; the state is still whole.
        let s = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        MarketSnapshot {
            at: now,
            hashprice: s.hashprice.snapshot(Input::Hashprice, now),
            energy: s.energy.snapshot(Input::Energy, now),
            ai_value: s.ai_value.snapshot(Input::AiValue, now),
            ai_demand: s.ai_demand.snapshot(Input::AiDemand, now),
            firm_contracts: Arc::clone(&self.shared.firm_contracts),
        }
    }

    /// Ticks once per refresh that recorded anything (for re-planning at once on a market
    /// change).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.updates.subscribe()
    }
}

fn slot<V>(input: Input, s: Sourced<V>) -> Slot<V> {
    Slot {
        input,
        source: s.source,
        timing: s.timing,
        next_due: None,
    }
}

impl Market {
    pub fn new(parts: MarketParts) -> Self {
        let state = State {
            hashprice: InputState::new(
                parts.hashprice.source.origin().clone(),
                parts.hashprice.timing,
            ),
            energy: InputState::new(parts.energy.source.origin().clone(), parts.energy.timing),
            ai_value: InputState::new(
                parts.ai_value.source.origin().clone(),
                parts.ai_value.timing,
            ),
            ai_demand: InputState::new(
                parts.ai_demand.source.origin().clone(),
                parts.ai_demand.timing,
            ),
        };
        let (updates, _) = watch::channel(0);
        Self {
            hashprice: slot(Input::Hashprice, parts.hashprice),
            energy: slot(Input::Energy, parts.energy),
            ai_value: slot(Input::AiValue, parts.ai_value),
            ai_demand: slot(Input::AiDemand, parts.ai_demand),
            checks: parts.checks,
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                firm_contracts: parts.firm_contracts.into(),
                updates,
            }),
        }
    }

    pub fn view(&self) -> MarketView {
        MarketView {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn snapshot(&self, now: DateTime<Utc>) -> MarketSnapshot {
        self.view().snapshot(now)
    }

    /// Refreshes the inputs that are due at `now`, concurrently; returns how many were read.
    pub async fn refresh_due(&mut self, now: DateTime<Utc>) -> usize {
        self.refresh(now, false).await
    }

    /// Refreshes every input now, due or not.
    pub async fn refresh_all(&mut self, now: DateTime<Utc>) -> usize {
        self.refresh(now, true).await
    }

    /// When the next input is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        [
            self.hashprice.next_due,
            self.energy.next_due,
            self.ai_value.next_due,
            self.ai_demand.next_due,
        ]
        .into_iter()
        .min()
        .flatten()
    }

    /// Refreshes forever, each input on its own interval; `clock` gives the controller's time.
    /// Sleeps with tokio's timer, so a test with paused time runs it instantly.
    pub async fn run(mut self, clock: impl Fn() -> DateTime<Utc> + Send) {
        loop {
            self.refresh_due(clock()).await;
            let wait = self
                .next_due()
                .and_then(|due| (due - clock()).to_std().ok())
                .unwrap_or(Duration::ZERO);
            // Never spin: a source whose clock runs ahead could make every input due at once.
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        }
    }

    async fn refresh(&mut self, now: DateTime<Utc>, force: bool) -> usize {
        let Market {
            hashprice,
            energy,
            ai_value,
            ai_demand,
            checks,
            shared,
        } = self;
        let (h, e, a, d) = tokio::join!(
            refresh_slot(hashprice, checks, now, force),
            refresh_slot(energy, checks, now, force),
            refresh_slot(ai_value, checks, now, force),
            refresh_slot(ai_demand, checks, now, force),
        );
        let mut n = 0;
        {
            let mut s = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(r) = h {
                s.hashprice.record(Input::Hashprice, now, r);
                n += 1;
            }
            if let Some(r) = e {
                s.energy.record(Input::Energy, now, r);
                n += 1;
            }
            if let Some(r) = a {
                s.ai_value.record(Input::AiValue, now, r);
                n += 1;
            }
            if let Some(r) = d {
                s.ai_demand.record(Input::AiDemand, now, r);
                n += 1;
            }
        }
        if n > 0 {
            shared.updates.send_modify(|v| *v = v.wrapping_add(1));
        }
        n
    }
}

/// Reads one slot if it is due: fetch under the timeout, then the checks every reading passes.
async fn refresh_slot<V: Plausible>(
    slot: &mut Slot<V>,
    checks: &PlausibleRanges,
    now: DateTime<Utc>,
    force: bool,
) -> Option<Result<Reading<V>, SourceError>> {
    if !force && slot.next_due.is_some_and(|due| due > now) {
        return None;
    }
    let timeout = Duration::from_secs(slot.timing.timeout_s);
    let max_age = Duration::from_secs(slot.timing.max_age_s);
    let origin = slot.source.origin().clone();
    let result = match tokio::time::timeout(timeout, slot.source.fetch(now)).await {
        Ok(r) => r,
        Err(_) => Err(SourceError::new(
            &origin,
            SourceErrorKind::Timeout { after: timeout },
        )),
    }
    .and_then(|r| accept(r, checks, now, max_age).map_err(|kind| SourceError::new(&origin, kind)));
    let again = if result.is_ok() {
        Duration::from_secs(slot.timing.refresh_s)
    } else {
        Duration::from_secs(slot.timing.refresh_s).min(RETRY_AFTER_FAILURE)
    };
    slot.next_due = chrono::Duration::from_std(again)
        .ok()
        .and_then(|d| now.checked_add_signed(d));
    debug!(input = %slot.input, next = ?slot.next_due, "Market source refreshed");
    Some(result)
}

/// The checks every reading passes, whatever its source: not from the future (beyond clock
/// skew), within the plausible ranges, not older than `max_age`.
pub fn accept<V: Plausible>(
    mut r: Reading<V>,
    checks: &PlausibleRanges,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Result<Reading<V>, SourceErrorKind> {
    let ahead = (r.at - now).to_std().unwrap_or(Duration::ZERO);
    if ahead > FUTURE_SKEW {
        return Err(SourceErrorKind::Future { at: r.at, now });
    }
    r.at = r.at.min(now);
    r.value.check(checks)?;
    let age = (now - r.at).to_std().unwrap_or(Duration::ZERO);
    if age > max_age {
        return Err(SourceErrorKind::Stale {
            at: r.at,
            age,
            max_age,
        });
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use proptest::prelude::*;

    use super::*;
    use crate::market::reading::GpuWant;
    use crate::market::source::Fixed;

    /// What a scripted source does on its next call.
    #[derive(Debug, Clone)]
    enum Step {
        /// A reading `age_s` seconds old (negative: from the future).
        Price {
            usd_per_mwh: f64,
            age_s: i64,
        },
        Fail(SourceErrorKind),
        Hang,
    }

    /// A source that plays a script and fails the test on any call beyond it.
    struct Scripted {
        origin: Origin,
        steps: Arc<Mutex<VecDeque<Step>>>,
        calls: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl MarketSource<EnergyPrice> for Scripted {
        fn origin(&self) -> &Origin {
            &self.origin
        }

        async fn fetch(&mut self, now: DateTime<Utc>) -> Result<Reading<EnergyPrice>, SourceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let step = self.steps.lock().unwrap().pop_front();
            match step.expect("the market called the source more often than the script allows") {
                Step::Price { usd_per_mwh, age_s } => Ok(Reading {
                    value: EnergyPrice { usd_per_mwh },
                    at: now - chrono::Duration::seconds(age_s),
                    source: "scripted".into(),
                }),
                Step::Fail(kind) => Err(SourceError::new(&self.origin, kind)),
                Step::Hang => std::future::pending().await,
            }
        }
    }

    struct Rig {
        market: Market,
        steps: Arc<Mutex<VecDeque<Step>>>,
        calls: Arc<AtomicUsize>,
    }

    const ENERGY: Timing = Timing {
        refresh_s: 60,
        max_age_s: 1_800,
        timeout_s: 5,
    };
    const SLOW: Timing = Timing {
        refresh_s: 300,
        max_age_s: 3_600,
        timeout_s: 5,
    };

    fn rig(script: Vec<Step>) -> Rig {
        let steps = Arc::new(Mutex::new(VecDeque::from(script)));
        let calls = Arc::new(AtomicUsize::new(0));
        let energy = Scripted {
            origin: Origin::new("scripted", "http://prices.test/rt.csv"),
            steps: Arc::clone(&steps),
            calls: Arc::clone(&calls),
        };
        let market = Market::new(MarketParts {
            hashprice: Sourced::new(Fixed::new(Hashprice::only(45.0)), SLOW),
            energy: Sourced::new(energy, ENERGY),
            ai_value: Sourced::new(
                Fixed::new(AiValue {
                    usd_per_gpu_hour: 2.0,
                }),
                SLOW,
            ),
            ai_demand: Sourced::new(Fixed::new(AiDemand::wanted(GpuWant::Gpus(8))), SLOW),
            firm_contracts: Vec::new(),
            checks: PlausibleRanges::default(),
        });
        Rig {
            market,
            steps,
            calls,
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    fn http_500() -> SourceErrorKind {
        SourceErrorKind::Status {
            request: "GET /rt.csv".into(),
            status: 500,
            hint: String::new(),
            excerpt: "oops".into(),
        }
    }

    #[tokio::test]
    async fn the_last_good_value_stays_until_it_ages_out_then_the_planner_is_told_why() {
        let mut r = rig(vec![
            Step::Price {
                usd_per_mwh: 31.5,
                age_s: 0,
            },
            Step::Fail(http_500()),
            Step::Fail(http_500()),
        ]);
        assert_eq!(r.market.refresh_due(t0()).await, 4);
        let s = r.market.snapshot(t0());
        assert_eq!(s.energy.health, Health::Fresh);
        let inputs = s.planner_inputs().unwrap();
        assert_eq!(inputs.energy_usd_per_mwh, 31.5);
        assert_eq!(inputs.ai_gpu_demand, GpuWant::Gpus(8));

        // The refresh fails: the value stays in force, and health says so.
        r.market.refresh_due(t0() + secs(60)).await;
        let s = r.market.snapshot(t0() + secs(60));
        assert!(matches!(s.energy.health, Health::Failed(_)));
        assert_eq!(s.planner_inputs().unwrap().energy_usd_per_mwh, 31.5);

        // Past max_age the value is gone and every reason is given.
        let late = t0() + secs(1_801);
        r.market.refresh_due(late).await;
        let s = r.market.snapshot(late);
        assert!(s.energy.value.is_none());
        assert_eq!(s.energy.last_good.as_ref().unwrap().value.usd_per_mwh, 31.5);
        let reasons = s.planner_inputs().unwrap_err();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        let why = &reasons[0];
        for want in [
            "energy price",
            "30m 1s old",
            "max_age_s",
            "HTTP 500",
            "http://prices.test/rt.csv",
        ] {
            assert!(why.contains(want), "{want}: {why}");
        }
        assert_eq!(s.economics().energy_price_usd_per_mwh, None);
        assert_eq!(s.economics().hashprice_usd_per_ph_day, Some(45.0));
        assert_eq!(r.calls.load(Ordering::SeqCst), 3);
        assert!(r.steps.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn implausible_stale_and_future_readings_are_refused_and_negative_prices_accepted() {
        let mut r = rig(vec![
            Step::Price {
                usd_per_mwh: -42.0,
                age_s: 10,
            },
            Step::Price {
                usd_per_mwh: 1e9,
                age_s: 0,
            },
            Step::Price {
                usd_per_mwh: f64::NAN,
                age_s: 0,
            },
            Step::Price {
                usd_per_mwh: 50.0,
                age_s: 7_200,
            },
            Step::Price {
                usd_per_mwh: 50.0,
                age_s: -3_600,
            },
            Step::Price {
                usd_per_mwh: 60.0,
                age_s: -60,
            },
        ]);
        let mut now = t0();
        r.market.refresh_all(now).await;
        assert_eq!(
            r.market
                .snapshot(now)
                .planner_inputs()
                .unwrap()
                .energy_usd_per_mwh,
            -42.0
        );
        let mut errors = Vec::new();
        for _ in 0..4 {
            now += secs(60);
            r.market.refresh_due(now).await;
            let s = r.market.snapshot(now);
            // The refused reading never replaces the good one.
            assert_eq!(s.energy.value.as_ref().unwrap().value.usd_per_mwh, -42.0);
            match s.energy.health {
                Health::Failed(e) => errors.push(e.kind),
                h => panic!("{h:?}"),
            }
        }
        assert!(matches!(&errors[0], SourceErrorKind::Implausible { value, .. } if *value == 1e9));
        assert!(matches!(&errors[1], SourceErrorKind::Implausible { .. }));
        assert!(matches!(&errors[2], SourceErrorKind::Stale { .. }));
        assert!(matches!(&errors[3], SourceErrorKind::Future { .. }));
        // A minute ahead is clock skew: accepted, and counted as taken now.
        now += secs(60);
        r.market.refresh_due(now).await;
        let s = r.market.snapshot(now);
        assert_eq!(s.energy.value.as_ref().unwrap().at, now);
        assert_eq!(s.energy.health, Health::Fresh);
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_hangs_times_out_and_is_retried_sooner() {
        let mut r = rig(vec![
            Step::Hang,
            Step::Price {
                usd_per_mwh: 20.0,
                age_s: 0,
            },
        ]);
        r.market.refresh_all(t0()).await;
        let s = r.market.snapshot(t0());
        match &s.energy.health {
            Health::Failed(e) => {
                assert_eq!(
                    e.kind,
                    SourceErrorKind::Timeout {
                        after: Duration::from_secs(5)
                    }
                );
            }
            h => panic!("{h:?}"),
        }
        assert!(s.planner_inputs().unwrap_err()[0].contains("no good reading yet"));
        // Energy refreshes every 60 s anyway; a failed slow input retries after 60 s, not 300.
        assert_eq!(r.market.energy.next_due, Some(t0() + secs(60)));
        assert_eq!(r.market.refresh_due(t0() + secs(60)).await, 1);
        assert_eq!(
            r.market.snapshot(t0() + secs(60)).energy.health,
            Health::Fresh
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_run_loop_reads_each_input_on_its_own_interval() {
        let script = (0..11)
            .map(|i| Step::Price {
                usd_per_mwh: f64::from(i),
                age_s: 0,
            })
            .collect();
        let r = rig(script);
        let view = r.market.view();
        let mut ticks = view.subscribe();
        let start = tokio::time::Instant::now();
        let clock = move || t0() + chrono::Duration::from_std(start.elapsed()).unwrap();
        let task = tokio::spawn(r.market.run(clock));
        tokio::time::sleep(Duration::from_secs(630)).await;
        task.abort();
        // t = 0, 60, ..., 600: eleven energy reads, the last value in force.
        assert_eq!(r.calls.load(Ordering::SeqCst), 11);
        let s = view.snapshot(t0() + secs(630));
        assert_eq!(s.energy.value.unwrap().value.usd_per_mwh, 10.0);
        assert!(ticks.has_changed().unwrap());
        assert!(*ticks.borrow_and_update() >= 11);
    }

    proptest! {
        /// Whatever a source says and whenever it is asked, the snapshot offers only values
        /// that passed the checks and are no older than max_age, and it offers one whenever
        /// such a reading was accepted within max_age.
        #[test]
        fn the_snapshot_offers_only_checked_values_within_their_age(
            script in proptest::collection::vec(
                prop_oneof![
                    (-2_000.0f64..12_000.0, -600i64..4_000).prop_map(|(p, a)| Step::Price { usd_per_mwh: p, age_s: a }),
                    Just(Step::Price { usd_per_mwh: f64::INFINITY, age_s: 0 }),
                    Just(Step::Fail(http_500())),
                ],
                1..30,
            ),
            gaps in proptest::collection::vec(1i64..1_000, 30),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let n = script.len();
            let mut r = rig(script.clone());
            let ranges = PlausibleRanges::default();
            let mut now = t0();
            let mut last_ok: Option<(f64, DateTime<Utc>)> = None;
            for (i, step) in script.iter().enumerate().take(n) {
                rt.block_on(r.market.refresh_all(now));
                if let Step::Price { usd_per_mwh, age_s } = step {
                    let at = (now - secs(*age_s)).min(now);
                    let good = ranges.energy_usd_per_mwh.contains(*usd_per_mwh)
                        && *age_s >= -300
                        && *age_s <= 1_800;
                    if good {
                        last_ok = Some((*usd_per_mwh, at));
                    }
                }
                let s = r.market.snapshot(now + secs(gaps[i] / 2));
                let check_at = now + secs(gaps[i] / 2);
                match (&s.energy.value, last_ok) {
                    (Some(v), Some((p, at))) => {
                        prop_assert_eq!(v.value.usd_per_mwh, p);
                        prop_assert_eq!(v.at, at);
                        prop_assert!(ranges.energy_usd_per_mwh.contains(v.value.usd_per_mwh));
                        prop_assert!(check_at - v.at <= secs(1_800));
                    }
                    (None, Some((_, at))) => prop_assert!(check_at - at > secs(1_800)),
                    (None, None) => {}
                    (Some(v), None) => prop_assert!(false, "offered {:?} that was never accepted", v),
                }
                now += secs(gaps[i]);
            }
        }
    }
}

#[cfg(test)]
mod log_tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A feed down for many refreshes is one warning, not one per refresh (the replayed trace's
    /// end once printed one per input per refresh to pivot-site's terminal); a new kind of
    /// error warns again, and the recovery says how many were refused.
    #[test]
    fn a_source_failing_over_and_over_warns_once_and_says_when_it_is_back() {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer({
                let b = buf.clone();
                move || b.clone()
            })
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let origin = Origin::new("trace", "site.csv");
        let no_value = |t: u32| {
            Err(SourceError::new(
                &origin,
                SourceErrorKind::NoValue {
                    detail: format!("trace time {t} is outside the trace"),
                },
            ))
        };
        let timing = Timing {
            refresh_s: 1,
            max_age_s: 60,
            timeout_s: 5,
        };
        let mut st = InputState::<Hashprice>::new(origin.clone(), timing);
        let now = Utc::now();
        tracing::subscriber::with_default(sub, || {
            for t in 0..5 {
                st.record(Input::Hashprice, now, no_value(t));
            }
            st.record(
                Input::Hashprice,
                now,
                Err(SourceError::new(
                    &origin,
                    SourceErrorKind::Connect {
                        request: "GET /".into(),
                        detail: "refused".into(),
                    },
                )),
            );
            st.record(
                Input::Hashprice,
                now,
                Ok(Reading {
                    value: Hashprice::only(45.0),
                    at: now,
                    source: "trace".into(),
                }),
            );
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 2, "{text}");
        assert!(warnings[0].contains("outside the trace"), "{text}");
        assert!(warnings[1].contains("cannot connect"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.contains("accepted again") && l.contains("refused=6")),
            "{text}"
        );
    }
}
