//! Who is calling: the caller's Kubernetes ServiceAccount token, validated by
//! the API server (TokenReview) for the service's audience. Never a request
//! field. Results are cached per token (by its SHA-256, never the token
//! itself) for at most five minutes and never past the token's own expiry:
//! at most one TokenReview per token per five minutes, however many calls
//! and watches use it. Between reviews an open watch checks what it can
//! without the API server's help: the token's expiry, and the pod a bound
//! token belongs to (the service watches pods' metadata).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, api::PostParams};
use prometheus_client::metrics::{counter::Counter, family::Family};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::Status;

use super::issuer_keys::{IssuerKeys, Signature};
use crate::{metrics::TokenReviewLabels, store::rate_limit::FairBucket};

/// How long a validation is trusted at most.
pub const CACHE_FOR: Duration = Duration::from_secs(300);
/// Cached verdicts kept at most (expired ones are dropped first).
const CACHE_MAX: usize = 100_000;
/// How long a rejected token stays rejected without another TokenReview.
const REJECTED_FOR: Duration = Duration::from_secs(60);
/// TokenReviews per second at most, whatever callers send, served round
/// robin by the namespace of the (signed) token: one namespace's flood of
/// tokens slows its own first calls, not the API server nor other namespaces'.
const REVIEWS_PER_SECOND: u32 = 50;

/// A caller the API server vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    /// The pod a bound token belongs to (the API server's word, from the
    /// review): its watches end when that pod is gone.
    pub pod: Option<BoundPod>,
    /// When the token expires (its `exp`), if it says.
    pub expires: Option<SystemTime>,
}

/// A pod, by name and uid (a new pod of the same name is another pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub name: String,
    pub uid: String,
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
    #[error("the token is not a JSON Web Token")]
    NotAJwt,
    #[error("the token is not signed by the API server's keys")]
    NotSigned,
    #[error("the token has expired")]
    Expired,
    #[error("the pod the token is bound to is gone")]
    PodGone,
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
    reviews_made: Family<TokenReviewLabels, Counter>,
    cache: Mutex<HashMap<[u8; 32], Verdict>>,
    in_flight: Mutex<HashMap<[u8; 32], PendingVerdict>>,
    keys: IssuerKeys,
    budget: FairBucket,
}

impl Authenticator {
    pub fn new(client: kube::Client, audience: String, reviews_made: Family<TokenReviewLabels, Counter>) -> Self {
        Authenticator {
            reviews: Api::all(client.clone()),
            audience,
            reviews_made,
            cache: Mutex::default(),
            in_flight: Mutex::default(),
            keys: IssuerKeys::new(client),
            budget: FairBucket::new(std::num::NonZeroU32::new(REVIEWS_PER_SECOND).expect("non-zero")),
        }
    }

    /// The caller of a request, from its `authorization` metadata.
    pub async fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let token = bearer(metadata).ok_or(Rejected::Missing)?;
        self.validate(token, CACHE_FOR).await
    }

    /// Validates `token`, trusting a cached verdict no older than `max_age`.
    pub async fn validate(&self, token: &str, max_age: Duration) -> Result<Caller, Status> {
        // Not even shaped like a ServiceAccount token: no TokenReview spent on it.
        let claims = claims(token).ok_or(Rejected::NotAJwt)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some(verdict) = self.cache.lock().unwrap().get(&key)
            && verdict.until > now
            && now.duration_since(verdict.checked) <= max_age
        {
            return verdict.caller.clone();
        }
        // One review per token at a time: the watches and calls that need
        // the same token checked meanwhile wait for its verdict.
        let (mut verdict, leader) = {
            let mut in_flight = self.in_flight.lock().unwrap();
            match in_flight.get(&key) {
                Some(verdict) => (verdict.clone(), None),
                None => {
                    let (tx, rx) = watch::channel(None);
                    in_flight.insert(key, rx.clone());
                    (rx, Some(InFlight { tx, key, in_flight: &self.in_flight }))
                }
            }
        };
        match leader {
            Some(leader) => {
                let caller = self.check_uncached(token, &claims, key, now).await;
                leader.tx.send_replace(Some(caller.clone()));
                caller
            }
            None => match verdict.wait_for(Option::is_some).await {
                Ok(caller) => caller.clone().expect("waited for a verdict"),
                // The review's caller went away mid-review: ask again.
                Err(_) => Err(Status::unavailable("the token's review was cancelled; try again")),
            },
        }
    }

    /// Checks a token no cached verdict covers: its signature, then (in its
    /// namespace's turn) a TokenReview; remembers the verdict.
    async fn check_uncached(
        &self,
        token: &str,
        claims: &serde_json::Value,
        key: [u8; 32],
        now: Instant,
    ) -> Result<Caller, Status> {
        let turn = match self.keys.check(token).await {
            Signature::Forged => {
                let rejected: Status = Rejected::NotSigned.into();
                self.remember(key, Err(rejected.clone()), now, now + REJECTED_FOR);
                return Err(rejected);
            }
            // The namespace a signed token names is the API server's word.
            Signature::Signed => claimed_namespace(claims).unwrap_or_default(),
            Signature::Unknown => String::new(),
        };
        self.budget.acquire(turn.into()).await;
        let caller = self.review(token).await.map(|caller| Caller { expires: expiry(claims), ..caller });
        let (until, result) = match &caller {
            Ok(_) => (now + CACHE_FOR.min(expires_in(claims).unwrap_or(CACHE_FOR)), "authenticated"),
            // The API server failing is not a verdict on the token.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                self.reviews_made.get_or_create(&TokenReviewLabels { result: "unavailable" }).inc();
                return caller;
            }
            Err(_) => (now + REJECTED_FOR, "rejected"),
        };
        self.reviews_made.get_or_create(&TokenReviewLabels { result }).inc();
        self.remember(key, caller.clone(), now, until);
        caller
    }

    fn remember(&self, key: [u8; 32], caller: Result<Caller, Status>, checked: Instant, until: Instant) {
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, verdict| verdict.until > checked);
        }
        if cache.len() < CACHE_MAX {
            cache.insert(key, Verdict { caller, checked, until });
        }
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
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let mut caller = service_account(&username).ok_or(Rejected::NotAServiceAccount(username))?;
        let mut extra = user.extra.unwrap_or_default();
        let mut first = |key: &str| extra.remove(key).and_then(|values| values.into_iter().next());
        caller.pod = first(POD_NAME_EXTRA).zip(first(POD_UID_EXTRA)).map(|(name, uid)| BoundPod { name, uid });
        Ok(caller)
    }
}

/// A verdict on its way (None until the review ends).
type PendingVerdict = watch::Receiver<Option<Result<Caller, Status>>>;

/// The one review of a token under way; whoever waits for it learns its
/// verdict, and it is forgotten however the review ends.
struct InFlight<'a> {
    tx: watch::Sender<Option<Result<Caller, Status>>>,
    key: [u8; 32],
    in_flight: &'a Mutex<HashMap<[u8; 32], PendingVerdict>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.in_flight.lock().unwrap().remove(&self.key);
    }
}

/// What the API server says, in a review, about the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

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
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then(|| Caller {
        namespace: namespace.into(),
        service_account: name.into(),
        pod: None,
        expires: None,
    })
}

/// The claims of a JWT, read without verifying: the API server verifies the
/// token; these only bound how long a verdict is reused and how long a watch
/// may stay open.
fn claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok().filter(serde_json::Value::is_object)
}

/// The namespace a ServiceAccount token names (`sub`).
fn claimed_namespace(claims: &serde_json::Value) -> Option<String> {
    service_account(claims.get("sub")?.as_str()?).map(|caller| caller.namespace)
}

/// When the token expires (`exp`).
fn expiry(claims: &serde_json::Value) -> Option<SystemTime> {
    claims.get("exp")?.as_u64().map(|exp| UNIX_EPOCH + Duration::from_secs(exp))
}

/// Time left until the token's `exp`.
fn expires_in(claims: &serde_json::Value) -> Option<Duration> {
    Some(expiry(claims)?.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
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
        let left = expires_in(&claims(&payload(now + 60)).unwrap()).unwrap();
        assert!(left <= Duration::from_secs(60) && left >= Duration::from_secs(58), "{left:?}");
        assert_eq!(expires_in(&claims(&payload(now - 10)).unwrap()), Some(Duration::ZERO), "expired: not reused");
        assert_eq!(expires_in(&serde_json::json!({ "sub": "x" })), None);
    }

    #[test]
    fn what_is_not_shaped_like_a_jwt_costs_no_review() {
        for garbage in ["not-a-jwt", "a.b", "a.b.c.d", "h.!!!.s", "h.bnVsbA.s" /* null */] {
            assert_eq!(claims(garbage), None, "{garbage}");
        }
    }
}
