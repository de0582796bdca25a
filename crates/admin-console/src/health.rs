//! The overview's health: the compliance layer's decisions per second, and whether the peers
//! the gateway depends on (Redis, the KDC) can be reached.
//!
//! Decisions are counted by the compliance metrics (`seg_compliance_decisions_total`); the
//! console reads that count once a second and shows the rate over the last
//! [`RATE_WINDOW`]. Reachability is asked of [probes](Probe) the gateway gives the console
//! ([`Console::with_reachability`](crate::Console::with_reachability)), each time the overview
//! is shown, all at once and for at most [`PROBE_TIMEOUT`] each.
//!
//! ```
//! use admin_console::health::{Reachability, probe};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let redis_up = probe(|| async { Reachability::Reachable("answered the last command".into()) });
//! assert!(matches!(redis_up().await, Reachability::Reachable(_)));
//! # }
//! ```

use compliance_policy::metrics::ComplianceMetrics;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// The span the decision rate is averaged over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// How often the decision count is read.
pub const RATE_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// How long the overview waits for one reachability probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a peer can be reached, with what the probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// It answered: how (e.g. `kdc.example:88 accepted a connection`).
    Reachable(String),
    /// It did not: why (e.g. `connection refused`).
    Unreachable(String),
}

/// A reachability check: called each time the overview is shown.
pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Reachability> + Send>> + Send + Sync + 'static>;

/// `check` as a [`Probe`].
pub fn probe<F, Fut>(check: F) -> Probe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reachability> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

/// Asks `probe`, for at most [`PROBE_TIMEOUT`].
pub(crate) async fn ask(probe: &Probe) -> Reachability {
    match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
        Ok(reachability) => reachability,
        Err(_) => Reachability::Unreachable(format!(
            "no answer within {}",
            humantime::format_duration(PROBE_TIMEOUT)
        )),
    }
}

/// Decisions per second over the last [`RATE_WINDOW`], from samples of the decision count.
pub(crate) struct DecisionRate {
    metrics: ComplianceMetrics,
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl DecisionRate {
    /// The rate of `metrics`' decisions, not sampled yet.
    pub(crate) fn of(metrics: &ComplianceMetrics) -> Arc<Self> {
        Arc::new(DecisionRate {
            metrics: metrics.clone(),
            samples: Mutex::new(VecDeque::new()),
        })
    }

    /// Reads the count now; forgets the samples older than the window (but the newest of them,
    /// the start of the window).
    pub(crate) fn sample(&self) {
        let count = self.metrics.decisions_total();
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, count));
        while samples.len() > 2
            && samples
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Decisions per second since the oldest sample of the window (sampling now first);
    /// `None` until the samples span a second.
    pub(crate) fn per_second(&self) -> Option<f64> {
        self.sample();
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (first_at, first) = *samples.front()?;
        let (last_at, last) = *samples.back()?;
        let span = last_at.duration_since(first_at);
        (span >= RATE_SAMPLE_INTERVAL)
            .then(|| last.saturating_sub(first) as f64 / span.as_secs_f64())
    }

    /// Samples `rate` every [`RATE_SAMPLE_INTERVAL`] on the current Tokio runtime, until it is
    /// dropped (the console with it); nothing outside a runtime.
    pub(crate) fn keep_sampling(rate: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rate: Weak<Self> = Arc::downgrade(rate);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(RATE_SAMPLE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match rate.upgrade() {
                    Some(rate) => rate.sample(),
                    None => return,
                }
            }
        });
    }
}

impl fmt::Debug for DecisionRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecisionRate")
            .field("samples", &self.samples.lock().map_or(0, |s| s.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_is_averaged_over_the_window() {
        let metrics = ComplianceMetrics::new();
        let rate = DecisionRate::of(&metrics);
        assert_eq!(rate.per_second(), None, "one sample spans no time");
        // Nothing was decided for two seconds.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(rate.per_second(), Some(0.0));
        // Old samples leave the window: after it, only what happened within it counts.
        tokio::time::advance(RATE_WINDOW * 2).await;
        rate.sample();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(rate.per_second(), Some(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn asking_a_probe_that_hangs_is_unreachable_after_the_timeout() {
        let hangs = probe(std::future::pending::<Reachability>);
        let answer = ask(&hangs).await;
        assert_eq!(
            answer,
            Reachability::Unreachable("no answer within 2s".into())
        );
    }
}
