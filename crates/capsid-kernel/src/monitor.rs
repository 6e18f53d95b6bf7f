//! The kernel's monitors: the health monitor reloads failed capsules with doubling backoff up
//! to an attempt cap (publishing `health.failed` each time it finds one failed, and
//! `health.gave-up` at the cap); the idle monitor (opt-in) unloads capsules no call has used
//! for `idle_timeout_ms`, and the kernel loads them again at their next call; in dev mode
//! the watcher reloads a capsule whose files really changed (see `watch`).
//!
//! Native capsules are left to their own supervisor, which restarts the program itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use capsid_capsule::{CapsuleState, RestartCause};
use capsid_core::CapsuleId;
use capsid_core::limits::HEALTH_CHECK_EVERY;
use tokio::task::JoinHandle;

use crate::kernel::Kernel;

/// Topic published each time the monitor finds a capsule failed.
pub const HEALTH_FAILED_TOPIC: &str = "health.failed";
/// Topic published when the monitor stops retrying a capsule.
pub const HEALTH_GAVE_UP_TOPIC: &str = capsid_audit::action::HEALTH_GAVE_UP;

/// Starts the monitors the config asks for.
pub(crate) fn start(kernel: &Kernel) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if kernel.config().health.enabled {
        tasks.push(tokio::spawn(health(kernel.clone())));
    }
    if let Some(ms) = kernel.config().idle_timeout_ms {
        tasks.push(tokio::spawn(idle(
            kernel.clone(),
            Duration::from_millis(ms),
        )));
    }
    if kernel.config().dev && kernel.config().hot_reload {
        match crate::watch::start(kernel) {
            Ok(task) => tasks.push(task),
            Err(e) => tracing::warn!(error = %e, "hot reload is off: cannot watch the capsules"),
        }
    }
    tasks
}

/// One failed capsule's retry state.
struct Retry {
    attempts: u32,
    next: Instant,
    reported: bool,
    ready_since: Option<Instant>,
    gave_up: bool,
}

async fn health(kernel: Kernel) {
    let cfg = kernel.config().health.clone();
    let initial = Duration::from_millis(cfg.restart_initial_ms);
    let max = Duration::from_millis(cfg.restart_max_ms);
    let mut retries: HashMap<CapsuleId, Retry> = HashMap::new();
    let mut tick = tokio::time::interval(HEALTH_CHECK_EVERY.min(initial));
    loop {
        tick.tick().await;
        if kernel.is_closing() {
            return;
        }
        let now = Instant::now();
        let infos = kernel.capsules();
        retries.retain(|name, _| infos.iter().any(|i| &i.name == name));
        for info in infos.into_iter().filter(|i| i.native.is_none()) {
            match &info.state {
                CapsuleState::Ready => {
                    // Healthy for a full maximum backoff: the count starts again. Ready after
                    // the monitor gave up (an operator reloaded it): watched again.
                    if let Some(r) = retries.get_mut(&info.name) {
                        if r.gave_up {
                            retries.remove(&info.name);
                            continue;
                        }
                        let since = *r.ready_since.get_or_insert(now);
                        if now.duration_since(since) >= max {
                            retries.remove(&info.name);
                        }
                    }
                }
                CapsuleState::Failed(reason) => {
                    let r = retries.entry(info.name.clone()).or_insert(Retry {
                        attempts: 0,
                        next: now + initial,
                        reported: false,
                        ready_since: None,
                        gave_up: false,
                    });
                    r.ready_since = None;
                    if r.gave_up {
                        continue;
                    }
                    if !r.reported {
                        r.reported = true;
                        publish(&kernel, HEALTH_FAILED_TOPIC, &info.name, reason, r.attempts);
                    }
                    if now < r.next {
                        continue;
                    }
                    if r.attempts >= cfg.max_attempts {
                        r.gave_up = true;
                        tracing::error!(capsule = %info.name, reason, "giving up reloading");
                        publish(
                            &kernel,
                            HEALTH_GAVE_UP_TOPIC,
                            &info.name,
                            reason,
                            r.attempts,
                        );
                        let details = serde_json::json!({
                            "reason": reason, "attempts": r.attempts,
                        });
                        let resource = format!("capsule://{}", info.name);
                        if let Err(e) = kernel
                            .note(capsid_audit::action::HEALTH_GAVE_UP, &resource, details)
                            .await
                        {
                            tracing::error!(capsule = %info.name, error = %e, "cannot record giving up");
                        }
                        continue;
                    }
                    r.attempts += 1;
                    r.reported = false;
                    let wait = initial
                        .saturating_mul(2u32.saturating_pow(r.attempts))
                        .min(max);
                    r.next = now + wait;
                    tracing::info!(capsule = %info.name, attempt = r.attempts, "reloading a failed capsule");
                    if let Err(e) = kernel
                        .reload_because(&info.name, RestartCause::Recovery)
                        .await
                    {
                        tracing::warn!(capsule = %info.name, error = %e, "reload failed");
                    }
                }
                CapsuleState::Loading | CapsuleState::Unloading => {}
            }
        }
    }
}

fn publish(kernel: &Kernel, topic: &str, capsule: &CapsuleId, reason: &str, attempts: u32) {
    let payload = serde_json::json!({
        "capsule": capsule.as_str(), "reason": reason, "attempts": attempts,
    });
    let _ = kernel
        .bus()
        .publish(topic, payload.to_string().into_bytes(), None);
}

/// Unloads ready capsules that no call has used for `timeout` (never one with a call in
/// flight, never a native one), recording each.
async fn idle(kernel: Kernel, timeout: Duration) {
    let mut tick = tokio::time::interval(HEALTH_CHECK_EVERY.min(timeout));
    loop {
        tick.tick().await;
        if kernel.is_closing() {
            return;
        }
        for info in kernel.capsules() {
            if info.state != CapsuleState::Ready || info.native.is_some() {
                continue;
            }
            let Ok(capsule) = kernel.registry().get(&info.name) else {
                continue;
            };
            if capsule.idle_for().is_some_and(|idle| idle >= timeout) {
                drop(capsule);
                kernel.unload_idle(&info.name).await;
            }
        }
    }
}
