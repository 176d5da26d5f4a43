//! The audit trail against a real server: an outage told as structured events on the target
//! `resilient_redis::audit` (fallback on and why, the breaker, health, the replay with its
//! counts, fallback off, the close), in order, never with a key or a value.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilient_redis_manager::RedisManager;
use resilient_redis_tests::RedisServer;

/// Audit events (target `resilient_redis::audit`) as field maps, in order.
#[derive(Clone, Default)]
struct Audit(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Audit {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == resilient_redis_manager::audit::TARGET {
            let mut fields = Fields(BTreeMap::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
}

impl Audit {
    fn events(&self) -> Vec<BTreeMap<String, String>> {
        self.0.lock().unwrap().clone()
    }

    /// The events named `name`.
    fn named(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.events()
            .into_iter()
            .filter(|e| e.get("event").map(String::as_str) == Some(name))
            .collect()
    }
}

/// An outage as the audit trail tells it: fallback on (and why), the breaker opening, Redis
/// unhealthy then healthy, the replay with its counts, fallback off, and the close; in that
/// order, with stable field names and never a key or a value.
#[tokio::test(flavor = "current_thread")]
async fn an_outage_is_told_by_the_audit_trail() {
    use tracing_subscriber::layer::SubscriberExt;
    let audit = Audit::default();
    // The only test in this binary: the subscriber is the process's, so every event of every
    // thread reaches it (a thread-scoped one can miss callsites other threads registered).
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(audit.clone()))
        .unwrap();
    let mut server = RedisServer::builder().durable().start();
    let m = RedisManager::builder(common::outage_config(&server.url()))
        .build()
        .await
        .unwrap();
    m.set(b"audit:before", b"secret-value-1", None)
        .await
        .unwrap();
    server.kill();
    // Writes during the outage: answered from memory and journaled.
    for i in 0..20 {
        m.set(format!("audit:k{i}").as_bytes(), b"secret-value-2", None)
            .await
            .unwrap();
    }
    wait_for(|| !audit.named("health").is_empty()).await;
    server.restart();
    wait_for(|| !audit.named("fallback_off").is_empty()).await;
    // Trial calls close the half-open breaker.
    for _ in 0..10 {
        m.get(b"audit:before").await.unwrap();
    }
    wait_for(|| {
        audit
            .named("breaker_state")
            .last()
            .is_some_and(|b| b["state"] == "closed")
    })
    .await;
    m.close(Duration::from_secs(2)).await.unwrap();

    let events = audit.events();
    let order: Vec<&str> = events.iter().map(|e| e["event"].as_str()).collect();
    let position = |name: &str| {
        order
            .iter()
            .position(|e| *e == name)
            .unwrap_or_else(|| panic!("no {name} in {order:?}"))
    };
    assert!(
        position("fallback_on") < position("replay_end"),
        "{order:?}"
    );
    assert!(
        position("replay_end") < position("fallback_off"),
        "{order:?}"
    );
    assert!(position("fallback_off") < position("closed"), "{order:?}");
    // A call that found Redis gone, or the health probe first: whichever saw it.
    let on = &audit.named("fallback_on")[0];
    assert!(
        matches!(on["reason"].as_str(), "call_failed" | "unhealthy"),
        "{on:?}"
    );
    let health = audit.named("health");
    assert_eq!(health[0]["healthy"], "false", "{health:?}");
    assert!(health.iter().any(|h| h["healthy"] == "true"), "{health:?}");
    let breaker: Vec<&str> = audit
        .named("breaker_state")
        .iter()
        .map(|b| b["state"].clone())
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .collect();
    assert!(
        breaker.contains(&"open") && breaker.last() == Some(&"closed"),
        "{breaker:?}"
    );
    let applied: u64 = audit
        .named("replay_end")
        .iter()
        .map(|r| r["applied"].parse::<u64>().unwrap())
        .sum();
    assert_eq!(applied, 20, "{events:?}");
    assert_eq!(audit.named("closed")[0]["pending"], "0");
    let text = format!("{events:?}");
    assert!(
        !text.contains("secret-value") && !text.contains("audit:k"),
        "no key or value in the trail: {text}"
    );
}

/// Polls `done` every 20 ms for up to 10 s.
async fn wait_for(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
