//! Client-side rate limits per AWS API family (DESIGN.md §7), shared by every
//! backend in the process: AWS's own limits are per account and region, so N
//! stores must not each get the full budget.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Calls per second allowed per API family; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// SSM PutParameter, DeleteParameters, AddTagsToResource (AWS default: 3/s).
    pub ssm_write_per_second: Option<NonZeroU32>,
    /// SSM GetParametersByPath, DescribeParameters (AWS default: 40/s shared).
    pub ssm_read_per_second: Option<NonZeroU32>,
    /// DynamoDB calls (on-demand tables scale; unlimited by default).
    pub dynamodb_per_second: Option<NonZeroU32>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            ssm_write_per_second: NonZeroU32::new(3),
            ssm_read_per_second: NonZeroU32::new(40),
            dynamodb_per_second: None,
        }
    }
}

/// The API family an operation counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    SsmWrite,
    SsmRead,
    DynamoDb,
    /// The event queue's calls: counted, never limited here (SQS's own
    /// limits are far above one consumer's long polls).
    Sqs,
}

/// One token bucket per family (burst = one second's worth).
pub struct Limiters {
    ssm_write: Option<DefaultDirectRateLimiter>,
    ssm_read: Option<DefaultDirectRateLimiter>,
    dynamodb: Option<DefaultDirectRateLimiter>,
}

impl Limiters {
    pub fn new(limits: RateLimits) -> Self {
        let make = |rate: Option<NonZeroU32>| rate.map(|r| RateLimiter::direct(Quota::per_second(r)));
        Limiters {
            ssm_write: make(limits.ssm_write_per_second),
            ssm_read: make(limits.ssm_read_per_second),
            dynamodb: make(limits.dynamodb_per_second),
        }
    }

    /// Waits until a call of `family` is allowed.
    pub async fn acquire(&self, family: Family) {
        let limiter = match family {
            Family::SsmWrite => &self.ssm_write,
            Family::SsmRead => &self.ssm_read,
            Family::DynamoDb => &self.dynamodb,
            Family::Sqs => return,
        };
        if let Some(limiter) = limiter {
            limiter.until_ready().await;
        }
    }
}
