//! Setting GPU power caps the careful way: validate, apply, read back, confirm on the draw,
//! persist — and re-apply the persisted caps when the agent starts.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{CapStore, GpuError, GpuManager, gpu_label, mw_to_watts, watts_to_mw};

/// How a new cap is confirmed on the measured draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfirmPolicy {
    /// How long the draw may take to fall under the cap. NVML's power reading is a ~1 s average,
    /// so a real GPU needs one to three seconds.
    pub window: Duration,
    /// How often the draw is read meanwhile.
    pub interval: Duration,
    /// The draw counts as under the cap up to `cap + max(tolerance_w, cap × tolerance_fraction)`:
    /// power sensors are ±5 W or so, and the control loop hovers around the limit.
    pub tolerance_w: f64,
    pub tolerance_fraction: f64,
}

impl Default for ConfirmPolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3),
            interval: Duration::from_millis(250),
            tolerance_w: 5.0,
            tolerance_fraction: 0.02,
        }
    }
}

impl ConfirmPolicy {
    fn allowed_draw_w(&self, cap_w: f64) -> f64 {
        cap_w + self.tolerance_w.max(cap_w * self.tolerance_fraction)
    }
}

/// What a cap change did, with the timings operators and the hardware notes need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapReport {
    pub index: u32,
    pub uuid: String,
    pub requested_w: f64,
    pub previous_limit_w: f64,
    /// The management limit read back.
    pub limit_w: f64,
    /// What the GPU enforces: lower than requested when another limit (a BMC) is lower.
    pub enforced_w: f64,
    /// From the set call to the read-back of the enforced limit.
    pub enforced_after_ms: u64,
    /// The last draw measured.
    pub draw_w: f64,
    /// From the set call to the first draw reading under the cap.
    pub draw_confirmed_after_ms: u64,
    /// Whether the cap was recorded for re-apply at start.
    pub persisted: bool,
}

/// What re-applying one persisted cap came to.
#[derive(Debug)]
pub enum ReapplyOutcome {
    Applied(CapReport),
    /// The GPU already holds this cap (the driver was not reloaded).
    AlreadyInPlace {
        watts: f64,
    },
    /// The persisted cap is above the GPU's current limit. Raising power needs the controller's
    /// lease (DESIGN.md, safety invariant 4), so it is left for the controller's next intent.
    WouldRaise {
        persisted_w: f64,
        current_w: f64,
    },
    /// No GPU with this UUID on this host now.
    GpuAbsent,
    Failed(GpuError),
}

/// One persisted cap and what became of it.
#[derive(Debug)]
pub struct Reapplied {
    pub uuid: String,
    pub watts: f64,
    pub outcome: ReapplyOutcome,
}

impl std::fmt::Display for Reapplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Reapplied {
            uuid,
            watts,
            outcome,
        } = self;
        match outcome {
            ReapplyOutcome::Applied(r) => write!(
                f,
                "{uuid}: re-applied {watts} W on GPU {} (enforced {} W, draw {:.1} W)",
                r.index, r.enforced_w, r.draw_w
            ),
            ReapplyOutcome::AlreadyInPlace { .. } => {
                write!(f, "{uuid}: {watts} W already in place")
            }
            ReapplyOutcome::WouldRaise { current_w, .. } => write!(
                f,
                "{uuid}: not re-applied: {watts} W is above the current {current_w} W limit; \
                 raising power waits for the controller's lease"
            ),
            ReapplyOutcome::GpuAbsent => write!(f, "{uuid}: not on this host; cap {watts} W kept"),
            ReapplyOutcome::Failed(e) => write!(f, "{uuid}: re-applying {watts} W failed: {e}"),
        }
    }
}

/// Sets power caps on a host's GPUs.
pub struct PowerCapper<'a> {
    gpus: &'a dyn GpuManager,
    policy: ConfirmPolicy,
    store: Option<CapStore>,
}

impl std::fmt::Debug for PowerCapper<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerCapper")
            .field("policy", &self.policy)
            .field("store", &self.store)
            .finish()
    }
}

/// A cap accepted by validation, not yet applied.
struct Planned {
    index: u32,
    uuid: String,
    milliwatts: u32,
    previous_limit_w: f64,
}

/// A cap applied and read back, waiting for the draw to confirm it.
struct Applied {
    report: CapReport,
    set_at: Instant,
    confirmed: bool,
}

impl<'a> PowerCapper<'a> {
    /// Caps without persistence (a one-off operator command).
    pub fn new(gpus: &'a dyn GpuManager, policy: ConfirmPolicy) -> Self {
        Self {
            gpus,
            policy,
            store: None,
        }
    }

    /// Records every cap set in `store`, for [`PowerCapper::reapply`] at the next start.
    pub fn with_store(mut self, store: CapStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Sets GPU `index`'s cap to `watts`; see [`PowerCapper::set_many`].
    pub async fn set(&self, index: u32, watts: f64) -> Result<CapReport, GpuError> {
        let mut results = self.set_many(&[index], watts).await?;
        results.pop().unwrap_or_else(|| {
            Err(GpuError::NoSuchGpu {
                selector: format!("with index {index}"),
            })
        })
    }

    /// Sets the cap of each GPU in `indices` to `watts`.
    ///
    /// Every GPU is checked first: if `watts` is outside any one's constraints, the error comes
    /// back and no GPU is changed. Then each cap is applied and read back (the enforced limit),
    /// recorded in the store, and confirmed on the measured draw within the policy's window.
    ///
    /// # Errors
    /// The outer error: validation failed, nothing changed. The inner ones: per GPU, in order.
    pub async fn set_many(
        &self,
        indices: &[u32],
        watts: f64,
    ) -> Result<Vec<Result<CapReport, GpuError>>, GpuError> {
        let plan = self.validate(indices, watts)?;
        Ok(self.apply(plan, self.store.as_ref()).await)
    }

    fn validate(&self, indices: &[u32], watts: f64) -> Result<Vec<Planned>, GpuError> {
        indices
            .iter()
            .map(|&index| {
                let identity = self.gpus.identity(index)?;
                let limits = self.gpus.power_limits(index)?;
                let out_of_range = || GpuError::CapOutOfRange {
                    gpu: format!("{} ({})", gpu_label(index), identity.uuid),
                    requested_w: watts,
                    min_w: limits.min_w,
                    max_w: limits.max_w,
                };
                let milliwatts = watts_to_mw(watts).ok_or_else(out_of_range)?;
                let (min_mw, max_mw) = (watts_to_mw(limits.min_w), watts_to_mw(limits.max_w));
                if min_mw.is_none_or(|min| milliwatts < min)
                    || max_mw.is_none_or(|max| milliwatts > max)
                {
                    return Err(out_of_range());
                }
                Ok(Planned {
                    index,
                    uuid: identity.uuid,
                    milliwatts,
                    previous_limit_w: limits.limit_w,
                })
            })
            .collect()
    }

    async fn apply(
        &self,
        plan: Vec<Planned>,
        store: Option<&CapStore>,
    ) -> Vec<Result<CapReport, GpuError>> {
        let mut pending: Vec<Result<Applied, GpuError>> =
            plan.into_iter().map(|p| self.apply_one(p, store)).collect();
        self.confirm(&mut pending).await;
        pending
            .into_iter()
            .map(|applied| {
                let applied = applied?;
                let r = applied.report;
                if applied.confirmed {
                    Ok(r)
                } else {
                    tracing::warn!(
                        gpu = r.index, uuid = %r.uuid, draw_w = r.draw_w, cap_w = r.enforced_w,
                        "GPU draw still above its new cap after the confirm window; cap left applied"
                    );
                    Err(GpuError::DrawAboveCap {
                        gpu: format!("{} ({})", gpu_label(r.index), r.uuid),
                        draw_w: r.draw_w,
                        cap_w: r.enforced_w,
                        window_ms: self.policy.window.as_millis(),
                    })
                }
            })
            .collect()
    }

    fn apply_one(&self, planned: Planned, store: Option<&CapStore>) -> Result<Applied, GpuError> {
        let Planned {
            index,
            uuid,
            milliwatts,
            previous_limit_w,
        } = planned;
        let requested_w = mw_to_watts(milliwatts);
        // Recorded before it is set: a cap that cannot be recorded is not applied (the agent
        // re-applies what it recorded, so it must have recorded everything it applied).
        let persisted = match store {
            Some(store) => {
                store.record(&uuid, index, requested_w)?;
                true
            }
            None => false,
        };
        let set_at = Instant::now();
        self.gpus.set_power_limit_mw(index, milliwatts)?;
        let limits = self.gpus.power_limits(index)?;
        let enforced_after_ms = elapsed_ms(set_at);
        // The management limit must be ours; the enforced one may be lower (another limit holder)
        // but never higher.
        if watts_to_mw(limits.limit_w) != Some(milliwatts)
            || watts_to_mw(limits.enforced_w).is_none_or(|e| e > milliwatts)
        {
            return Err(GpuError::CapNotTaken {
                gpu: format!("{} ({uuid})", gpu_label(index)),
                requested_w,
                limit_w: limits.limit_w,
                enforced_w: limits.enforced_w,
            });
        }
        if limits.enforced_w < requested_w {
            tracing::info!(
                gpu = index, %uuid, requested_w, enforced_w = limits.enforced_w,
                "Another limit holder keeps this GPU below the requested cap"
            );
        }
        tracing::info!(
            gpu = index, %uuid, requested_w, previous_limit_w, enforced_w = limits.enforced_w,
            enforced_after_ms, "GPU power cap applied"
        );
        Ok(Applied {
            report: CapReport {
                index,
                uuid,
                requested_w,
                previous_limit_w,
                limit_w: limits.limit_w,
                enforced_w: limits.enforced_w,
                enforced_after_ms,
                draw_w: f64::NAN,
                draw_confirmed_after_ms: 0,
                persisted,
            },
            set_at,
            confirmed: false,
        })
    }

    /// Reads the draw of every applied cap until each is under its cap or the window is over.
    async fn confirm(&self, pending: &mut [Result<Applied, GpuError>]) {
        let deadline = Instant::now() + self.policy.window;
        loop {
            for slot in pending.iter_mut() {
                let Ok(applied) = slot else { continue };
                if applied.confirmed {
                    continue;
                }
                let index = applied.report.index;
                match self.gpus.power_draw_w(index) {
                    Ok(draw) => {
                        applied.report.draw_w = draw;
                        if draw <= self.policy.allowed_draw_w(applied.report.enforced_w) {
                            applied.confirmed = true;
                            applied.report.draw_confirmed_after_ms = elapsed_ms(applied.set_at);
                        }
                    }
                    Err(e) => *slot = Err(e),
                }
            }
            let waiting = pending
                .iter()
                .any(|s| s.as_ref().is_ok_and(|a| !a.confirmed));
            if !waiting || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(self.policy.interval.min(deadline - Instant::now())).await;
        }
    }

    /// Re-applies every persisted cap (at agent start: NVML forgot them on reboot or reload).
    ///
    /// Only caps that lower a GPU's current limit, or hold it, are applied: see
    /// [`ReapplyOutcome::WouldRaise`].
    ///
    /// # Errors
    /// Only when the store cannot be read; each GPU's result is in its [`Reapplied`].
    pub async fn reapply(&self) -> Result<Vec<Reapplied>, GpuError> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let mut done = Vec::new();
        for (uuid, cap) in store.load()? {
            let outcome = self.reapply_one(&uuid, cap.watts).await;
            match &outcome {
                ReapplyOutcome::Failed(e) => {
                    tracing::warn!(%uuid, watts = cap.watts, error = %e, "Persisted GPU cap not re-applied");
                }
                _ => {
                    tracing::info!(%uuid, watts = cap.watts, outcome = ?outcome, "Persisted GPU cap checked")
                }
            }
            done.push(Reapplied {
                uuid,
                watts: cap.watts,
                outcome,
            });
        }
        Ok(done)
    }

    async fn reapply_one(&self, uuid: &str, watts: f64) -> ReapplyOutcome {
        let index = match self.gpus.index_of_uuid(uuid) {
            Ok(index) => index,
            Err(GpuError::NoSuchGpu { .. }) => return ReapplyOutcome::GpuAbsent,
            Err(e) => return ReapplyOutcome::Failed(e),
        };
        let limits = match self.gpus.power_limits(index) {
            Ok(limits) => limits,
            Err(e) => return ReapplyOutcome::Failed(e),
        };
        let (Some(persisted_mw), Some(current_mw)) =
            (watts_to_mw(watts), watts_to_mw(limits.limit_w))
        else {
            return ReapplyOutcome::Failed(GpuError::CapOutOfRange {
                gpu: format!("{} ({uuid})", gpu_label(index)),
                requested_w: watts,
                min_w: limits.min_w,
                max_w: limits.max_w,
            });
        };
        if persisted_mw == current_mw {
            return ReapplyOutcome::AlreadyInPlace { watts };
        }
        if persisted_mw > current_mw {
            return ReapplyOutcome::WouldRaise {
                persisted_w: watts,
                current_w: limits.limit_w,
            };
        }
        let plan = match self.validate(&[index], watts) {
            Ok(plan) => plan,
            Err(e) => return ReapplyOutcome::Failed(e),
        };
        // Already recorded: re-applying must not rewrite when it was set.
        match self.apply(plan, None).await.pop() {
            Some(Ok(report)) => ReapplyOutcome::Applied(CapReport {
                persisted: true,
                ..report
            }),
            Some(Err(e)) => ReapplyOutcome::Failed(e),
            None => ReapplyOutcome::GpuAbsent,
        }
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{SimGpu, SimGpus};

    fn fast() -> ConfirmPolicy {
        ConfirmPolicy {
            window: Duration::from_secs(3),
            interval: Duration::from_millis(250),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cap_is_applied_read_back_and_confirmed() {
        let gpus = SimGpus::new(vec![SimGpu::h100(0, 650.0)]);
        let report = PowerCapper::new(&gpus, fast()).set(0, 300.0).await.unwrap();
        assert_eq!(report.requested_w, 300.0);
        assert_eq!(report.previous_limit_w, 700.0);
        assert_eq!(report.enforced_w, 300.0);
        assert_eq!(report.draw_w, 300.0);
        assert!(!report.persisted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_draw_is_waited_for() {
        let mut gpu = SimGpu::h100(0, 650.0);
        gpu.lagging_reads = 3;
        let gpus = SimGpus::new(vec![gpu]);
        let report = PowerCapper::new(&gpus, fast()).set(0, 300.0).await.unwrap();
        assert_eq!(
            report.draw_confirmed_after_ms, 750,
            "three readings at 250 ms intervals"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_draw_that_never_falls_is_reported_and_the_cap_stays() {
        let mut gpu = SimGpu::h100(0, 650.0);
        gpu.lagging_reads = 1000;
        let gpus = SimGpus::new(vec![gpu]);
        let err = PowerCapper::new(&gpus, fast())
            .set(0, 300.0)
            .await
            .unwrap_err();
        assert!(
            matches!(err, GpuError::DrawAboveCap { draw_w, .. } if draw_w == 650.0),
            "{err}"
        );
        assert!(err.to_string().contains("the cap stays applied"), "{err}");
        assert_eq!(gpus.get(0).unwrap().limit_mw, 300_000);
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_range_on_one_gpu_changes_none() {
        let mut small = SimGpu::h100(1, 650.0);
        small.min_mw = 400_000;
        let gpus = SimGpus::new(vec![SimGpu::h100(0, 650.0), small]);
        let err = PowerCapper::new(&gpus, fast())
            .set_many(&[0, 1], 300.0)
            .await
            .unwrap_err();
        assert!(
            matches!(err, GpuError::CapOutOfRange { min_w, .. } if min_w == 400.0),
            "{err}"
        );
        assert!(err.to_string().contains("nothing was changed"));
        assert_eq!(gpus.get(0).unwrap().limit_mw, 700_000);
        assert_eq!(gpus.get(1).unwrap().limit_mw, 700_000);
    }

    #[tokio::test(start_paused = true)]
    async fn nonsense_watts_are_out_of_range() {
        let gpus = SimGpus::new(vec![SimGpu::h100(0, 650.0)]);
        let capper = PowerCapper::new(&gpus, fast());
        for watts in [f64::NAN, -5.0, f64::INFINITY, 0.0, 700.001] {
            assert!(
                matches!(
                    capper.set(0, watts).await,
                    Err(GpuError::CapOutOfRange { .. })
                ),
                "{watts}"
            );
        }
        assert_eq!(gpus.get(0).unwrap().limit_mw, 700_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_external_limit_is_accepted_and_reported() {
        let mut gpu = SimGpu::h100(0, 650.0);
        gpu.external_limit_mw = Some(250_000);
        let gpus = SimGpus::new(vec![gpu]);
        let report = PowerCapper::new(&gpus, fast()).set(0, 400.0).await.unwrap();
        assert_eq!(
            (report.limit_w, report.enforced_w, report.draw_w),
            (400.0, 250.0, 250.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_permission_names_the_gpu_and_the_fix() {
        let mut gpu = SimGpu::h100(0, 650.0);
        gpu.read_only = true;
        let gpus = SimGpus::new(vec![gpu]);
        let err = PowerCapper::new(&gpus, fast())
            .set(0, 300.0)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no permission to set the power limit on GPU 0: NVML needs root for this; run pivot-agent as root"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn persisted_caps_are_reapplied_after_a_reboot_but_never_raised() {
        let dir = tempfile::tempdir().unwrap();
        let gpus = SimGpus::new(vec![
            SimGpu::h100(0, 650.0),
            SimGpu::h100(1, 650.0),
            SimGpu::h100(2, 650.0),
        ]);
        let capper = PowerCapper::new(&gpus, fast()).with_store(CapStore::in_dir(dir.path()));
        capper.set(0, 300.0).await.unwrap();
        capper.set(1, 500.0).await.unwrap();
        capper.set(2, 450.0).await.unwrap();
        CapStore::in_dir(dir.path())
            .record("GPU-gone", 7, 300.0)
            .unwrap();

        // Reboot: GPU 0 back to its default; GPU 1 keeps its cap; GPU 2 was lowered by hand.
        gpus.modify(0, |g| g.limit_mw = g.default_mw);
        gpus.modify(2, |g| g.limit_mw = 400_000);
        let done = capper.reapply().await.unwrap();
        let outcome = |uuid: &str| &done.iter().find(|r| r.uuid == uuid).unwrap().outcome;
        assert!(
            matches!(outcome(&gpus.get(0).unwrap().uuid), ReapplyOutcome::Applied(r) if r.enforced_w == 300.0)
        );
        assert!(matches!(
            outcome(&gpus.get(1).unwrap().uuid),
            ReapplyOutcome::AlreadyInPlace { .. }
        ));
        assert!(matches!(
            outcome(&gpus.get(2).unwrap().uuid),
            ReapplyOutcome::WouldRaise { .. }
        ));
        assert!(matches!(outcome("GPU-gone"), ReapplyOutcome::GpuAbsent));
        assert_eq!(gpus.get(0).unwrap().limit_mw, 300_000);
        assert_eq!(gpus.get(2).unwrap().limit_mw, 400_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_gpu_fails_alone() {
        let gpus = SimGpus::new(vec![SimGpu::h100(0, 650.0), SimGpu::h100(1, 650.0)]);
        let capper = PowerCapper::new(&gpus, fast());
        gpus.modify(1, |g| g.lost = true);
        let err = capper.set_many(&[0, 1], 300.0).await.unwrap_err();
        assert!(err.is_gpu_lost(), "{err}");
        assert!(err.to_string().starts_with("GPU 1 is lost"), "{err}");
        assert_eq!(
            gpus.get(0).unwrap().limit_mw,
            700_000,
            "validation failed: nothing changed"
        );
    }
}
