//! Client-side rate limits per AWS API family (DESIGN.md §7), shared by every
//! backend in the process: AWS's own limits are per account and region, so N
//! stores must not each get the full budget. Families are named by the
//! backend that declares them ([`super::registry`]); the limits know none.

use std::{collections::BTreeMap, num::NonZeroU32};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A family of API calls that share one client-side budget, as a backend
/// declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateFamily {
    /// `--rate-limit NAME=N` sets it.
    pub name: &'static str,
    /// AWS's own default per second; `None`: unlimited by default.
    pub default_per_second: Option<u32>,
    /// The operations it counts, for the help text and README.
    pub counts: &'static str,
}

/// Calls per second by family name; a family without a limit is unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits(BTreeMap<String, NonZeroU32>);

impl Default for RateLimits {
    /// Every registered family at its default.
    fn default() -> Self {
        let defaults = super::registry::rate_families()
            .filter_map(|f| Some((f.name.to_string(), NonZeroU32::new(f.default_per_second?)?)));
        RateLimits(defaults.collect())
    }
}

impl RateLimits {
    /// No limit on any family.
    pub fn unlimited() -> Self {
        RateLimits(BTreeMap::new())
    }

    /// Sets `family` to `per_second` (0: unlimited).
    pub fn with(mut self, family: &str, per_second: u32) -> Self {
        match NonZeroU32::new(per_second) {
            Some(rate) => self.0.insert(family.to_string(), rate),
            None => self.0.remove(family),
        };
        self
    }

    pub fn get(&self, family: &str) -> Option<NonZeroU32> {
        self.0.get(family).copied()
    }
}

/// One token bucket per limited family (burst = one second's worth).
pub struct Limiters(BTreeMap<String, DefaultDirectRateLimiter>);

impl Limiters {
    pub fn new(limits: &RateLimits) -> Self {
        Limiters(
            limits
                .0
                .iter()
                .map(|(family, rate)| (family.clone(), RateLimiter::direct(Quota::per_second(*rate))))
                .collect(),
        )
    }

    /// Waits until a call of `family` is allowed.
    /// Waits for a token of `family`'s limit; false when it has none.
    pub async fn acquire(&self, family: &str) -> bool {
        match self.0.get(family) {
            Some(limiter) => {
                limiter.until_ready().await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_backends_and_zero_lifts_a_limit() {
        let limits = RateLimits::default();
        assert_eq!(limits.get("ssm-write"), NonZeroU32::new(3), "AWS's PutParameter default");
        assert_eq!(limits.get("ssm-read"), NonZeroU32::new(40));
        assert_eq!(limits.get("dynamodb"), None, "on-demand tables scale: unlimited");
        let changed = limits.with("ssm-write", 0).with("dynamodb", 100);
        assert_eq!((changed.get("ssm-write"), changed.get("dynamodb")), (None, NonZeroU32::new(100)));
    }
}
