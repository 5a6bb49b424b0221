//! The library's live state: init reference count, the state file it follows, and what only
//! exists in memory (energy counters, power ramps).
//!
//! Every NVML call re-reads the state file, so a test (or another process: the CLI, pynvml) that
//! changes it is seen at the next call; a file that cannot be read keeps the last good state.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::codes::{self, NvmlReturn};
use crate::state::{FakeState, Gpu};

/// A power-limit change still settling: the reported draw stays at `from_w` until `until`.
#[derive(Debug, Clone, Copy)]
struct Ramp {
    from_w: f64,
    until: Instant,
}

#[derive(Debug)]
pub struct Runtime {
    refcount: u32,
    path: PathBuf,
    pub state: FakeState,
    energy_mj: Vec<f64>,
    ramps: Vec<Option<Ramp>>,
    last_tick: Instant,
}

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Runtime>> {
    // A poisoned lock only means an earlier call panicked (and was caught); the data is still
    // consistent enough for a simulator, and refusing every later call would help no one.
    RUNTIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `nvmlInit*`: load the state file and count one more user, or fail as the state's faults say.
pub fn init(path: Result<PathBuf, String>) -> NvmlReturn {
    let path = match path {
        Ok(path) => path,
        Err(message) => {
            eprintln!("pivot-fake-nvml: {message}");
            return codes::ERROR_UNKNOWN;
        }
    };
    let state = match FakeState::load(&path) {
        Ok(state) => state,
        Err(message) => {
            eprintln!("pivot-fake-nvml: {message}");
            return codes::ERROR_UNKNOWN;
        }
    };
    if state.faults.driver_not_loaded {
        return codes::ERROR_DRIVER_NOT_LOADED;
    }
    if state.faults.init_no_permission {
        return codes::ERROR_NO_PERMISSION;
    }
    let mut guard = lock();
    match guard.as_mut() {
        Some(rt) if rt.path == path => {
            rt.refcount = rt.refcount.saturating_add(1);
            rt.tick();
            rt.state = state;
        }
        _ => {
            let count = state.count as usize;
            *guard = Some(Runtime {
                refcount: 1,
                path,
                state,
                energy_mj: vec![0.0; count],
                ramps: vec![None; count],
                last_tick: Instant::now(),
            });
        }
    }
    codes::SUCCESS
}

/// `nvmlShutdown`.
pub fn shutdown() -> NvmlReturn {
    let mut guard = lock();
    match guard.as_mut() {
        Some(rt) if rt.refcount > 0 => {
            rt.refcount -= 1;
            codes::SUCCESS
        }
        _ => codes::ERROR_UNINITIALIZED,
    }
}

/// Runs `f` on the initialised runtime, after bringing it up to date with the file and the clock.
pub fn with<T>(f: impl FnOnce(&mut Runtime) -> Result<T, NvmlReturn>) -> Result<T, NvmlReturn> {
    let mut guard = lock();
    let rt = match guard.as_mut() {
        Some(rt) if rt.refcount > 0 => rt,
        _ => return Err(codes::ERROR_UNINITIALIZED),
    };
    rt.refresh();
    f(rt)
}

impl Runtime {
    fn refresh(&mut self) {
        // Integrate energy with the draw as it was up to now, then take in the file's changes.
        self.tick();
        if let Ok(state) = FakeState::load(&self.path) {
            self.state = state;
        }
        let count = self.state.count as usize;
        self.energy_mj.resize(count, 0.0);
        self.ramps.resize(count, None);
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let dt_s = now.saturating_duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        for index in 0..self.state.count {
            let draw = self.draw_w_at(index, now);
            if let Some(energy) = self.energy_mj.get_mut(index as usize) {
                *energy += draw * dt_s * 1000.0;
            }
        }
    }

    /// The GPU at `index`: `INVALID_ARGUMENT` when there is none, `GPU_IS_LOST` when it fell off.
    pub fn gpu(&self, index: u32) -> Result<Gpu, NvmlReturn> {
        let gpu = self.state.gpu(index).ok_or(codes::ERROR_INVALID_ARGUMENT)?;
        if self.state.is_lost(index) {
            return Err(codes::ERROR_GPU_IS_LOST);
        }
        Ok(gpu)
    }

    /// The draw NVML reports now, in watts.
    pub fn draw_w(&self, index: u32) -> f64 {
        self.draw_w_at(index, Instant::now())
    }

    fn draw_w_at(&self, index: u32, now: Instant) -> f64 {
        let steady = self.state.gpu(index).map_or(0.0, |g| g.steady_draw_w());
        match self.ramps.get(index as usize).copied().flatten() {
            Some(ramp) if now < ramp.until => ramp.from_w,
            _ => steady,
        }
    }

    pub fn energy_mj(&self, index: u32) -> u64 {
        self.energy_mj
            .get(index as usize)
            .map_or(0, |e| e.round() as u64)
    }

    /// `nvmlDeviceSetPowerManagementLimit`: check, record in the file, start the ramp.
    pub fn set_limit_mw(&mut self, index: u32, milliwatts: u32) -> Result<(), NvmlReturn> {
        self.gpu(index)?;
        if self.state.faults.not_root {
            return Err(codes::ERROR_NO_PERMISSION);
        }
        let watts = f64::from(milliwatts) / 1000.0;
        let (min_mw, max_mw) = self.limit_constraints_mw();
        if milliwatts < min_mw || milliwatts > max_mw {
            return Err(codes::ERROR_INVALID_ARGUMENT);
        }
        let before = self.draw_w(index);
        // Under the file's write lock, on the file as it is now (not the copy read at the top of
        // this call): a load the site wrote meanwhile stays.
        let next =
            FakeState::update(&self.path, |s| s.set_limit_w(index, watts)).map_err(|message| {
                eprintln!("pivot-fake-nvml: {message}");
                codes::ERROR_UNKNOWN
            })?;
        self.state = next;
        if self.state.power_lag_ms > 0
            && let Some(slot) = self.ramps.get_mut(index as usize)
        {
            let lag = std::time::Duration::from_millis(self.state.power_lag_ms);
            *slot = Some(Ramp {
                from_w: before,
                until: Instant::now() + lag,
            });
        }
        Ok(())
    }

    pub fn limit_constraints_mw(&self) -> (u32, u32) {
        (
            to_mw(self.state.power_limit_min_w),
            to_mw(self.state.power_limit_max_w),
        )
    }
}

/// Watts to NVML's milliwatts, saturating instead of wrapping on absurd values.
pub fn to_mw(watts: f64) -> u32 {
    let mw = (watts * 1000.0).round();
    if mw.is_nan() || mw <= 0.0 {
        0
    } else if mw >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        mw as u32
    }
}
