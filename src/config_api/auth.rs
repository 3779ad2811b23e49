//! Who is calling: the caller's Kubernetes ServiceAccount token, validated by
//! the API server (TokenReview) for the service's audience. Never a request
//! field. Results are cached per token (by its SHA-256, never the token
//! itself) for at most five minutes and never past the token's own expiry.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, api::PostParams};
use sha2::{Digest, Sha256};
use tonic::Status;

/// How long a validation is trusted at most.
pub const CACHE_FOR: Duration = Duration::from_secs(300);
/// Cached verdicts kept at most (expired ones are dropped first).
const CACHE_MAX: usize = 100_000;
/// How long a rejected token stays rejected without another TokenReview.
const REJECTED_FOR: Duration = Duration::from_secs(60);
/// TokenReviews per second at most, whatever callers send: a flood of bad
/// tokens slows its senders' first calls, not the API server.
const REVIEWS_PER_SECOND: u32 = 50;

/// A caller the API server vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
}

/// Why a token was not accepted (the caller only learns UNAUTHENTICATED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("no bearer token in the authorization metadata")]
    Missing,
    #[error("the API server did not authenticate the token for audience {0}")]
    NotAuthenticated(String),
    #[error("the token is not a ServiceAccount's ({0})")]
    NotAServiceAccount(String),
}

impl From<Rejected> for Status {
    fn from(r: Rejected) -> Status {
        Status::unauthenticated(r.to_string())
    }
}

/// A cached verdict on one token.
struct Verdict {
    caller: Result<Caller, Status>,
    checked: Instant,
    until: Instant,
}

pub struct Authenticator {
    reviews: Api<TokenReview>,
    audience: String,
    cache: Mutex<HashMap<[u8; 32], Verdict>>,
    limiter: governor::DefaultDirectRateLimiter,
}

impl Authenticator {
    pub fn new(client: kube::Client, audience: String) -> Self {
        Authenticator {
            reviews: Api::all(client),
            audience,
            cache: Mutex::default(),
            limiter: governor::RateLimiter::direct(governor::Quota::per_second(
                std::num::NonZeroU32::new(REVIEWS_PER_SECOND).expect("non-zero"),
            )),
        }
    }

    /// The caller of a request, from its `authorization` metadata.
    pub async fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let token = bearer(metadata).ok_or(Rejected::Missing)?;
        self.validate(token, CACHE_FOR).await
    }

    /// Validates `token`, trusting a cached verdict no older than `max_age`.
    pub async fn validate(&self, token: &str, max_age: Duration) -> Result<Caller, Status> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some(verdict) = self.cache.lock().unwrap().get(&key)
            && verdict.until > now
            && now.duration_since(verdict.checked) <= max_age
        {
            return verdict.caller.clone();
        }
        self.limiter.until_ready().await;
        let caller = self.review(token).await;
        let until = match &caller {
            Ok(_) => now + CACHE_FOR.min(expires_in(token).unwrap_or(CACHE_FOR)),
            // The API server failing is not a verdict on the token.
            Err(status) if status.code() == tonic::Code::Unavailable => return caller,
            Err(_) => now + REJECTED_FOR,
        };
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, verdict| verdict.until > now);
        }
        if cache.len() < CACHE_MAX {
            cache.insert(key, Verdict { caller: caller.clone(), checked: now, until });
        }
        caller
    }

    async fn review(&self, token: &str) -> Result<Caller, Status> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.into(), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let reviewed = self
            .reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("TokenReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        let for_us = status.audiences.iter().flatten().any(|a| *a == self.audience);
        if status.authenticated != Some(true) || !for_us {
            return Err(Rejected::NotAuthenticated(self.audience.clone()).into());
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account(&username).ok_or_else(|| Rejected::NotAServiceAccount(username).into())
    }
}

/// The token of `authorization: Bearer <token>`.
pub(super) fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// `system:serviceaccount:<namespace>:<name>` → the caller.
fn service_account(username: &str) -> Option<Caller> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
        .then(|| Caller { namespace: namespace.into(), service_account: name.into() })
}

/// Time left until the JWT's `exp`, read without verifying (the API server
/// verified the token; this only bounds how long the verdict is reused).
fn expires_in(token: &str) -> Option<Duration> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_u64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn only_a_service_account_is_a_caller() {
        let caller = service_account("system:serviceaccount:acme-prod:web").unwrap();
        assert_eq!((caller.namespace.as_str(), caller.service_account.as_str()), ("acme-prod", "web"));
        for other in [
            "system:serviceaccount:acme",
            "system:admin",
            "kubernetes-admin",
            "system:serviceaccount::x",
            "system:serviceaccount:a:b:c",
        ] {
            assert_eq!(service_account(other), None, "{other}");
        }
    }

    #[test]
    fn the_bearer_token_is_read_from_the_metadata_only() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(bearer(&metadata), None);
        metadata.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&metadata), None);
        metadata.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&metadata), None);
        metadata.insert("authorization", "Bearer t0k.en".parse().unwrap());
        assert_eq!(bearer(&metadata), Some("t0k.en"));
    }

    #[test]
    fn a_verdict_is_reused_no_longer_than_the_token_lives() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let payload = |exp: u64| {
            let claims = serde_json::json!({ "exp": exp, "sub": "system:serviceaccount:a:b" }).to_string();
            format!("h.{}.s", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims))
        };
        let left = expires_in(&payload(now + 60)).unwrap();
        assert!(left <= Duration::from_secs(60) && left >= Duration::from_secs(58), "{left:?}");
        assert_eq!(expires_in(&payload(now - 10)), Some(Duration::ZERO), "expired: not reused at all");
        assert_eq!(expires_in("not-a-jwt"), None);
    }
}
