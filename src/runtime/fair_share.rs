//! The operators' view of fair share: once a minute, while any tenant waits,
//! one log line with the ten tenants whose objects have waited longest for a
//! reconcile slot and one with the ten with the most AWS calls waiting for rate
//! tokens. Bounded whatever the number of tenants; metrics carry no tenant
//! label (unbounded cardinality).

use std::{sync::Arc, time::Duration};

use tracing::info;

use crate::reconcile::{Context, ledgers::TenantWait};

/// How many tenants each line names.
const TOP: usize = 10;

/// How often the view is logged.
const PERIOD: Duration = Duration::from_secs(60);

/// Runs `controller`, logging the view for as long as it runs.
pub async fn alongside(controller: impl std::future::Future<Output = ()>, ctx: Arc<Context>) {
    tokio::select! {
        _ = controller => {}
        _ = report_every(PERIOD, ctx) => {}
    }
}

/// Logs the view every `period`, for as long as it is polled.
async fn report_every(period: Duration, ctx: Arc<Context>) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let slots = ctx.ledgers.tenant_slots.busiest(TOP);
        if !slots.is_empty() {
            info!(top = %slot_line(&slots), "tenants waiting for a reconcile slot (longest wait first)");
        }
        let calls = top_by_count(ctx.stores.backend_ctx.limiters.waiting_by_tenant(), TOP);
        if !calls.is_empty() {
            info!(top = %calls_line(&calls), "tenants with AWS calls waiting for rate tokens (most first)");
        }
    }
}

fn slot_line(waits: &[TenantWait]) -> String {
    let one = |w: &TenantWait| {
        format!("{}: {} under way, {} waiting, longest {}s", w.tenant, w.under_way, w.waiting, w.longest.as_secs())
    };
    waits.iter().map(one).collect::<Vec<_>>().join("; ")
}

/// The `n` largest counts, ties by name.
fn top_by_count(counts: std::collections::HashMap<String, usize>, n: usize) -> Vec<(String, usize)> {
    let mut counts: Vec<_> = counts.into_iter().filter(|(_, c)| *c > 0).collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.truncate(n);
    counts
}

fn calls_line(calls: &[(String, usize)]) -> String {
    let name = |t: &str| if t.is_empty() { "(no tenant)".to_string() } else { t.to_string() };
    calls.iter().map(|(t, c)| format!("{}: {c}", name(t))).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_ordered() {
        let counts = (0..30).map(|i| (format!("t{i:02}"), i)).chain([(String::new(), 7)]).collect();
        let top = top_by_count(counts, TOP);
        assert_eq!(top.len(), TOP);
        assert_eq!(top[0], ("t29".to_string(), 29));
        assert!(!calls_line(&top).contains("t00"));
        let calls = calls_line(&top_by_count([(String::new(), 3)].into(), TOP));
        assert_eq!(calls, "(no tenant): 3");
        let wait = TenantWait { tenant: "acme".into(), under_way: 4, waiting: 120, longest: Duration::from_secs(35) };
        assert_eq!(slot_line(&[wait]), "acme: 4 under way, 120 waiting, longest 35s");
    }
}
