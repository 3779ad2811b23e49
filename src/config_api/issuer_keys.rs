//! The API server's ServiceAccount token signing keys (its public JWKS,
//! `/openid/v1/jwks`), to tell a token the API server signed from a forged
//! one before spending a TokenReview on it. A tenant can send any number of
//! made-up tokens; only signed ones, whose namespace claim is then the API
//! server's word, reach the review budget — served round robin by that
//! namespace. TokenReview stays the verdict (the bound pod, the
//! ServiceAccount's uid, revocation); this is only a filter.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use tracing::warn;

/// Keys are fetched again this often, and when a token names a key not
/// known (a rotation), but not more often than [`REFETCH_AT_MOST_EVERY`].
const KEEP_KEYS_FOR: Duration = Duration::from_secs(600);
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(30);

/// What the keys say about a token's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// Made with one of the API server's keys.
    Signed,
    /// Made with none of them (or malformed): no TokenReview for it.
    Forged,
    /// The keys could not be read (the endpoint is off or forbidden): the
    /// TokenReview alone decides.
    Unknown,
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

struct Fetched {
    keys: Option<Vec<Jwk>>,
    at: Instant,
}

pub struct IssuerKeys {
    client: kube::Client,
    fetched: tokio::sync::Mutex<Option<Fetched>>,
    warned: Mutex<bool>,
}

impl IssuerKeys {
    pub fn new(client: kube::Client) -> Self {
        IssuerKeys { client, fetched: tokio::sync::Mutex::new(None), warned: Mutex::new(false) }
    }

    /// Whether `token` carries a signature of the API server's keys.
    pub async fn check(&self, token: &str) -> Signature {
        let mut fetched = self.fetched.lock().await;
        let stale = fetched.as_ref().is_none_or(|f| f.at.elapsed() > KEEP_KEYS_FOR);
        if stale {
            *fetched = Some(self.fetch().await);
        }
        let current = fetched.as_ref().expect("fetched above");
        let Some(keys) = &current.keys else { return Signature::Unknown };
        match verify(keys, token) {
            Some(true) => Signature::Signed,
            None => Signature::Forged,
            // No key of that id: perhaps rotated since the last fetch.
            Some(false) if current.at.elapsed() > REFETCH_AT_MOST_EVERY => {
                *fetched = Some(self.fetch().await);
                match fetched.as_ref().and_then(|f| f.keys.as_ref()) {
                    Some(keys) if verify(keys, token) == Some(true) => Signature::Signed,
                    Some(_) => Signature::Forged,
                    None => Signature::Unknown,
                }
            }
            Some(false) => Signature::Forged,
        }
    }

    async fn fetch(&self) -> Fetched {
        let request = http::Request::get("/openid/v1/jwks").body(Vec::new()).expect("a valid request");
        let keys = match self.client.request::<JwkSet>(request).await {
            Ok(set) => Some(set.keys),
            Err(e) => {
                let mut warned = self.warned.lock().unwrap();
                if !*warned {
                    *warned = true;
                    warn!(error = %e, "the API server's token signing keys (/openid/v1/jwks) cannot be read: \
                        every token, forged or not, costs a TokenReview");
                }
                None
            }
        };
        Fetched { keys, at: Instant::now() }
    }
}

/// Some(true): a key verifies the signature; Some(false): no key has the
/// token's key id; None: keys of that id (or all, without one) do not verify
/// it, or the token is malformed.
fn verify(keys: &[Jwk], token: &str) -> Option<bool> {
    let (signed, signature) = token.rsplit_once('.')?;
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(signed.split('.').next()?).ok()?).ok()?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let candidates: Vec<&Jwk> =
        keys.iter().filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid).collect();
    if candidates.is_empty() {
        return Some(false);
    }
    candidates.iter().any(|key| verifies(key, &header.alg, signed.as_bytes(), &signature)).then_some(true)
}

fn verifies(key: &Jwk, alg: &str, message: &[u8], signature: &[u8]) -> bool {
    let decode = |field: &Option<String>| field.as_deref().and_then(|f| URL_SAFE_NO_PAD.decode(f).ok());
    match (key.kty.as_str(), alg) {
        ("RSA", "RS256") => {
            let (Some(n), Some(e)) = (decode(&key.n), decode(&key.e)) else { return false };
            RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, message, signature).is_ok()
        }
        ("EC", "ES256") if key.crv.as_deref() == Some("P-256") => {
            let (Some(x), Some(y)) = (decode(&key.x), decode(&key.y)) else { return false };
            let point: Vec<u8> = [&[0x04][..], &x, &y].concat();
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
    };

    fn es256_key(kid: &str) -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = Jwk {
            kty: "EC".into(),
            kid: Some(kid.into()),
            crv: Some("P-256".into()),
            n: None,
            e: None,
            x: Some(URL_SAFE_NO_PAD.encode(&point[1..33])),
            y: Some(URL_SAFE_NO_PAD.encode(&point[33..])),
        };
        (pair, jwk)
    }

    fn token(pair: &EcdsaKeyPair, kid: &str, claims: &str) -> String {
        let header = format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#);
        let signed = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let signature = pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    #[test]
    fn only_the_issuers_keys_make_a_token_signed() {
        let (issuer, issuer_jwk) = es256_key("k1");
        let (forger, _) = es256_key("k1");
        let keys = vec![issuer_jwk];
        let claims = r#"{"sub":"system:serviceaccount:a:b"}"#;
        assert_eq!(verify(&keys, &token(&issuer, "k1", claims)), Some(true));
        assert_eq!(verify(&keys, &token(&forger, "k1", claims)), None, "another key, same id");
        assert_eq!(verify(&keys, &token(&issuer, "k2", claims)), Some(false), "an unknown id: fetch again");
        // The claims changed after signing (another namespace claimed).
        let genuine = token(&issuer, "k1", claims);
        let mut parts: Vec<&str> = genuine.split('.').collect();
        let tampered = URL_SAFE_NO_PAD.encode(r#"{"sub":"system:serviceaccount:victim:b"}"#);
        parts[1] = &tampered;
        assert_eq!(verify(&keys, &parts.join(".")), None);
        for malformed in ["", "a.b", "a.b.c", "!!.!!.!!"] {
            assert_eq!(verify(&keys, malformed), None, "{malformed}");
        }
    }
}
