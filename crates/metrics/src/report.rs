//! The performance report: the figures, and advice derived from them.

use std::fmt;

use resilient_redis_config::MetricsConfig;
use serde::Serialize;

use crate::MetricsSnapshot;

/// The thresholds recommendations fire at.
pub mod thresholds {
    /// Pool in use at or above this share: raise `pool.max_size`.
    pub const POOL_UTILISATION: f64 = 0.9;
    /// Timeouts at or above this share of operations.
    pub const TIMEOUT_RATE: f64 = 0.01;
    /// Failures at or above this share of operations.
    pub const ERROR_RATE: f64 = 0.05;
    /// Breaker trips within the retention window (target: fewer than one a day).
    pub const BREAKER_TRIPS: usize = 3;
    /// Operations served by the fallback at or above this share (target: < 0.1 %).
    pub const FALLBACK_SHARE: f64 = 0.001;
}

/// One piece of advice and the figure behind it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Recommendation {
    /// A stable identifier (`pool_saturated`, `timeouts`, ...).
    pub code: &'static str,
    /// What to do, in words.
    pub message: String,
    /// The figure (`pool_utilisation`, `timeout_rate`, ...).
    pub metric: &'static str,
    /// Its value.
    pub value: f64,
    /// The threshold it reached.
    pub threshold: f64,
}

/// The performance report: a summary, the figures and recommendations.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PerformanceReport {
    /// One paragraph.
    pub summary: String,
    /// The figures.
    pub metrics: MetricsSnapshot,
    /// Advice, one per threshold crossed; empty when all is well.
    pub recommendations: Vec<Recommendation>,
    /// When it was made, Unix milliseconds.
    pub generated_at: u64,
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl PerformanceReport {
    /// The report for `snapshot`, with advice by the thresholds in [`thresholds`] and
    /// `metrics.reporting_threshold`.
    #[must_use]
    pub fn from_snapshot(snapshot: MetricsSnapshot, config: &MetricsConfig) -> Self {
        let s = &snapshot;
        let mut advice = Vec::new();
        let mut add = |code, metric, value: f64, threshold: f64, message: String| {
            advice.push(Recommendation {
                code,
                message,
                metric,
                value,
                threshold,
            });
        };
        if s.pool_utilisation >= thresholds::POOL_UTILISATION {
            add(
                "pool_saturated",
                "pool_utilisation",
                s.pool_utilisation,
                thresholds::POOL_UTILISATION,
                format!(
                    "the pool is {:.0} % in use ({} waiting): raise pool.max_size (now {})",
                    s.pool_utilisation * 100.0,
                    s.pool.waiters,
                    s.pool.max_size
                ),
            );
        }
        if s.total_operations > 0 && s.timeout_rate >= thresholds::TIMEOUT_RATE {
            add(
                "timeouts",
                "timeout_rate",
                s.timeout_rate,
                thresholds::TIMEOUT_RATE,
                format!(
                    "{:.1} % of operations timed out: check Redis latency (p99 {:.1} ms) or raise socket_timeout",
                    s.timeout_rate * 100.0,
                    ms(s.p99_response_time)
                ),
            );
        }
        if s.total_operations > 0 && s.error_rate >= thresholds::ERROR_RATE {
            let kinds: Vec<String> = s
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            add(
                "error_rate",
                "error_rate",
                s.error_rate,
                thresholds::ERROR_RATE,
                format!(
                    "{:.1} % of operations failed ({}): investigate the commonest kind",
                    s.error_rate * 100.0,
                    kinds.join(", ")
                ),
            );
        }
        if s.breaker_trips.len() >= thresholds::BREAKER_TRIPS {
            add(
                "breaker_trips",
                "breaker_trips",
                s.breaker_trips.len() as f64,
                thresholds::BREAKER_TRIPS as f64,
                format!(
                    "the circuit breaker opened {} times in the window (at Unix ms {}): investigate Redis availability",
                    s.breaker_trips.len(),
                    s.breaker_trips
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let slow = config.reporting_threshold;
        if s.total_operations > 0 && s.p99_response_time >= slow {
            add(
                "slow_operations",
                "p99_response_time_ms",
                ms(s.p99_response_time),
                ms(slow),
                format!(
                    "p99 latency {:.1} ms is at or above metrics.reporting_threshold ({:.1} ms): {} slow operations",
                    ms(s.p99_response_time),
                    ms(slow),
                    s.slow_operations
                ),
            );
        }
        let fallback_share = if s.total_operations == 0 {
            0.0
        } else {
            s.fallback_operations as f64 / s.total_operations as f64
        };
        if fallback_share >= thresholds::FALLBACK_SHARE {
            add(
                "fallback_share",
                "fallback_share",
                fallback_share,
                thresholds::FALLBACK_SHARE,
                format!(
                    "{:.2} % of operations were served by the fallback store ({} journaled writes pending)",
                    fallback_share * 100.0,
                    s.fallback.pending
                ),
            );
        }
        if s.fallback.dead_letters > 0 {
            add(
                "dead_letters",
                "fallback_dead_letters",
                s.fallback.dead_letters as f64,
                0.0,
                format!(
                    "{} acknowledged writes were refused by Redis at replay and kept as dead letters: \
                     list them with `resilient-redis journal inspect <journal_path>`",
                    s.fallback.dead_letters
                ),
            );
        }
        let summary = format!(
            "{} operations over the last {:.0} s: {:.2} % failed, {} served from fallback; latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            s.total_operations,
            config.retention_period.as_secs_f64(),
            s.error_rate * 100.0,
            s.fallback_operations,
            ms(s.p50_response_time),
            ms(s.p95_response_time),
            ms(s.p99_response_time),
        );
        let generated_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        Self {
            summary,
            metrics: snapshot,
            recommendations: advice,
            generated_at,
        }
    }

    /// The report as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

impl fmt::Display for PerformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.metrics;
        writeln!(f, "{}", self.summary)?;
        writeln!(
            f,
            "  operations  {} ok, {} failed, {} fallback, {} slow",
            s.successful_operations, s.failed_operations, s.fallback_operations, s.slow_operations
        )?;
        writeln!(
            f,
            "  latency     min {:.2} ms, avg {:.2} ms, max {:.2} ms",
            ms(s.min_response_time),
            ms(s.average_response_time),
            ms(s.max_response_time)
        )?;
        if !s.errors_by_kind.is_empty() {
            let kinds: Vec<String> = s
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(f, "  errors      {}", kinds.join(", "))?;
        }
        writeln!(
            f,
            "  pool        {} open: {} shared, {} exclusive in use, {} idle; {} waiting ({:.0} % utilised)",
            s.pool.open,
            s.pool.shared_up,
            s.pool.in_use,
            s.pool.idle,
            s.pool.waiters,
            s.pool_utilisation * 100.0
        )?;
        if let Some(b) = &s.breaker {
            writeln!(
                f,
                "  breaker     {} ({} trips in the window)",
                b.state,
                s.breaker_trips.len()
            )?;
        }
        writeln!(
            f,
            "  fallback    {}, {} pending, {} dead letters",
            if s.fallback.active {
                "active"
            } else {
                "inactive"
            },
            s.fallback.pending,
            s.fallback.dead_letters
        )?;
        if self.recommendations.is_empty() {
            writeln!(f, "recommendations: none")?;
        } else {
            writeln!(f, "recommendations:")?;
            for r in &self.recommendations {
                writeln!(f, "  - {}", r.message)?;
            }
        }
        Ok(())
    }
}
