//! Counters of store calls by backend, operation and outcome: the one place the
//! metrics endpoint and the tests read AWS traffic from.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::metrics::histogram::Histogram;

/// Outcome label of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Ok,
    Throttled,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Throttled => "throttled",
            Outcome::Error => "error",
        }
    }
}

/// Operations that change a store (everything else is a read).
const WRITE_OPERATIONS: [&str; 6] =
    ["UpdateItem", "PutItem", "DeleteItem", "PutParameter", "DeleteParameters", "AddTagsToResource"];

type Key = (&'static str, &'static str, Outcome);

#[derive(Debug)]
pub struct CallStats {
    calls: Mutex<BTreeMap<Key, u64>>,
    /// How long calls waited for their API family's rate limit, seconds
    /// (no tenant label: the cardinality would be unbounded).
    pub rate_limit_wait: Histogram,
}

impl Default for CallStats {
    fn default() -> Self {
        let buckets = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        CallStats { calls: Mutex::default(), rate_limit_wait: Histogram::new(buckets) }
    }
}

impl CallStats {
    pub fn record(&self, backend: &'static str, operation: &'static str, outcome: Outcome) {
        *self.calls.lock().unwrap().entry((backend, operation, outcome)).or_default() += 1;
    }

    /// Calls of one operation with one outcome.
    pub fn count(&self, backend: &str, operation: &str, outcome: Outcome) -> u64 {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|((b, o, r), _)| *b == backend && *o == operation && *r == outcome).map(|(_, n)| n).sum()
    }

    /// Write calls (any outcome) to one backend.
    pub fn writes(&self, backend: &str) -> u64 {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|((b, o, _), _)| *b == backend && WRITE_OPERATIONS.contains(o)).map(|(_, n)| n).sum()
    }

    /// All calls (any outcome) to one backend.
    pub fn total(&self, backend: &str) -> u64 {
        self.calls.lock().unwrap().iter().filter(|((b, _, _), _)| *b == backend).map(|(_, n)| n).sum()
    }

    /// A copy of every counter, for export.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, Outcome, u64)> {
        self.calls.lock().unwrap().iter().map(|((b, o, r), n)| (*b, *o, *r, *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_backend_operation_and_outcome() {
        let s = CallStats::default();
        s.record("DynamoDB", "GetItem", Outcome::Ok);
        s.record("DynamoDB", "UpdateItem", Outcome::Ok);
        s.record("DynamoDB", "UpdateItem", Outcome::Throttled);
        s.record("ParameterStore", "PutParameter", Outcome::Ok);
        assert_eq!(s.count("DynamoDB", "UpdateItem", Outcome::Ok), 1);
        assert_eq!(s.writes("DynamoDB"), 2);
        assert_eq!(s.total("DynamoDB"), 3);
        assert_eq!(s.writes("ParameterStore"), 1);
        assert_eq!(s.snapshot().len(), 4);
    }
}
