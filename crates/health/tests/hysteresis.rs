//! Thresholds, hysteresis, rates, timeouts and the task's lifetime, with a scripted probe under
//! paused time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilient_redis_config::HealthConfig;
use resilient_redis_health::{HealthError, HealthMonitor, Monitor, Probe, ProbeError};

/// Answers from a script: `true` = up, `false` = down, `None` = never answers.
struct Scripted(Mutex<VecDeque<Option<bool>>>);

impl Scripted {
    fn new(script: &[Option<bool>]) -> Arc<Self> {
        Arc::new(Self(Mutex::new(script.iter().copied().collect())))
    }
}

#[async_trait::async_trait]
impl Probe for Scripted {
    async fn probe(&self) -> Result<(), ProbeError> {
        let next = self.0.lock().unwrap().pop_front().unwrap_or(Some(true));
        match next {
            Some(true) => Ok(()),
            Some(false) => Err(ProbeError("connection refused".into())),
            None => std::future::pending().await,
        }
    }
}

fn config() -> HealthConfig {
    let mut c = HealthConfig::default();
    c.check_interval = Duration::from_secs(1);
    c.timeout = Duration::from_millis(200);
    c.failure_threshold = 3;
    c.success_threshold = 2;
    c.window = 4;
    c
}

const UP: Option<bool> = Some(true);
const DOWN: Option<bool> = Some(false);

#[tokio::test(start_paused = true)]
async fn turns_unhealthy_only_after_the_failure_threshold() {
    let m = Monitor::new(
        Scripted::new(&[DOWN, DOWN, UP, DOWN, DOWN, DOWN]),
        &config(),
    )
    .unwrap();
    let verdicts: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(m.check_now().await.healthy);
        }
        v
    };
    // Two failures, a success breaks the run, then three failures in a row.
    assert_eq!(verdicts, [true, true, true, true, true, false]);
    let s = m.status();
    assert_eq!(s.consecutive_failures, 3);
    assert_eq!(s.error.as_deref(), Some("connection refused"));
}

#[tokio::test(start_paused = true)]
async fn recovers_only_after_the_success_threshold() {
    let m = Monitor::new(
        Scripted::new(&[DOWN, DOWN, DOWN, UP, DOWN, UP, UP]),
        &config(),
    )
    .unwrap();
    let mut verdicts = Vec::new();
    for _ in 0..7 {
        verdicts.push(m.check_now().await.healthy);
    }
    assert_eq!(verdicts, [true, true, false, false, false, false, true]);
    assert_eq!(m.status().consecutive_successes, 2);
}

#[tokio::test(start_paused = true)]
async fn rates_cover_the_rolling_window_only() {
    let m = Monitor::new(Scripted::new(&[DOWN, DOWN, UP, UP, UP, UP]), &config()).unwrap();
    for _ in 0..4 {
        m.check_now().await;
    }
    let s = m.status();
    assert_eq!((s.failure_rate, s.success_rate), (0.5, 0.5));
    m.check_now().await;
    m.check_now().await;
    let s = m.status();
    assert_eq!(
        (s.failure_rate, s.success_rate),
        (0.0, 1.0),
        "the two failures left the window"
    );
    assert_eq!(s.checks, 6);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_answers_fails_at_its_timeout() {
    let m = Monitor::new(Scripted::new(&[None]), &config()).unwrap();
    let s = m.check_now().await;
    assert_eq!(s.response_time, Some(Duration::from_millis(200)));
    assert!(
        s.error
            .as_deref()
            .is_some_and(|e| e.contains("probe timeout")),
        "{s:?}"
    );
    assert_eq!(s.consecutive_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn the_schedule_probes_every_interval_and_subscribers_see_each_result() {
    let m = Monitor::new(Scripted::new(&[DOWN, DOWN, DOWN, UP, UP]), &config()).unwrap();
    let mut rx = m.subscribe();
    m.start().unwrap();
    assert!(matches!(m.start(), Err(HealthError::AlreadyRunning)));
    let unhealthy = rx.wait_for(|s| !s.healthy).await.unwrap().clone();
    assert_eq!(unhealthy.checks, 3);
    let healthy = rx
        .wait_for(|s| s.healthy && s.checks > 3)
        .await
        .unwrap()
        .clone();
    assert_eq!(healthy.checks, 5);
    // The first probe runs at once, then one per second: five probes took four seconds.
    m.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stop_ends_the_task_and_probing_stops() {
    let probe = Scripted::new(&[]);
    let m = Monitor::new(Arc::clone(&probe) as Arc<dyn Probe>, &config()).unwrap();
    m.start().unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    m.stop().await;
    let checks = m.status().checks;
    assert_eq!(checks, 3, "probes at 0 s, 1 s and 2 s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(m.status().checks, checks, "no probe after stop");
    // The task held the only other reference to the probe: it is gone.
    assert_eq!(Arc::strong_count(&probe), 2, "the monitor and this test");
    drop(m);
    assert_eq!(Arc::strong_count(&probe), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_monitor_can_start_again() {
    let m = Monitor::new(Scripted::new(&[]), &config()).unwrap();
    m.start().unwrap();
    m.stop().await;
    m.start().expect("start after stop");
    m.stop().await;
}

#[test]
fn an_invalid_config_is_refused() {
    let mut c = config();
    c.failure_threshold = 0;
    assert!(matches!(
        Monitor::new(Scripted::new(&[]), &c),
        Err(HealthError::Config(_))
    ));
}
