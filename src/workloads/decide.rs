//! The digest a pod or pod template should carry, and whether it must be
//! patched to it (pure).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::refs::Reference;

/// What this process knows about one projected ConfigMap or Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Digest of its content (data only, so a ConfigMap and the Secret of the
    /// same TenantConfig change independently).
    pub digest: String,
    /// When the controller last changed its content (server-side apply's
    /// managed-fields time), if known.
    pub written_at: Option<Timestamp>,
}

/// One reference, as the caches see it.
pub enum Known<'a> {
    /// No TenantConfig in the namespace projects it: not ours to follow.
    NotProjected,
    /// A TenantConfig projects it, but it has not been reconciled since this
    /// process started: the digest is not known yet.
    NotYetSeen,
    Seen(&'a Seen),
}

/// The digest a reader of `refs` should carry.
#[derive(Debug, PartialEq, Eq)]
pub enum Desired {
    /// It reads nothing this controller projects.
    NotOurs,
    /// Some of what it reads is not known yet; decide later.
    Unknown,
    Digest {
        value: String,
        /// The latest content change among what it reads.
        last_written: Option<Timestamp>,
    },
}

pub fn desired<'a>(refs: &BTreeSet<Reference>, lookup: impl Fn(&Reference) -> Known<'a>) -> Desired {
    let mut hasher = Sha256::new();
    let (mut ours, mut last_written) = (0, None::<Timestamp>);
    for reference in refs {
        match lookup(reference) {
            Known::NotProjected => continue,
            Known::NotYetSeen => return Desired::Unknown,
            Known::Seen(seen) => {
                ours += 1;
                for part in [reference.0.as_str(), &reference.1, &seen.digest] {
                    hasher.update((part.len() as u64).to_be_bytes());
                    hasher.update(part.as_bytes());
                }
                last_written = last_written.max(seen.written_at);
            }
        }
    }
    if ours == 0 {
        return Desired::NotOurs;
    }
    Desired::Digest { value: format!("sha256:{:x}", hasher.finalize()), last_written }
}

/// The digest to patch in, or `None` when the reader is current.
///
/// A reader without the annotation was never patched: it is current if it was
/// created after the last content change (it started with that content), and
/// needs the digest otherwise — the case of a change the controller made but
/// could not follow up before it stopped. Level-triggered, so a restart
/// neither repeats a patch nor misses one.
pub fn patch_to(current: Option<&str>, created: Option<Timestamp>, desired: &Desired) -> Option<String> {
    let Desired::Digest { value, last_written } = desired else { return None };
    match current {
        Some(current) if current == value => None,
        Some(_) => Some(value.clone()),
        None => match (created, last_written) {
            (Some(created), Some(written)) if *written <= created => None,
            (_, None) => None,
            _ => Some(value.clone()),
        },
    }
}

/// Digest of one ConfigMap's or Secret's data.
pub fn content_digest(data: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in data {
        for part in [key, value] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    format!("sha256:{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::refs::Kind;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn seen(digest: &str, written: i64) -> Seen {
        Seen { digest: digest.into(), written_at: Some(at(written)) }
    }

    fn refs(names: &[(Kind, &str)]) -> BTreeSet<Reference> {
        names.iter().map(|(k, n)| (*k, n.to_string())).collect()
    }

    #[test]
    fn the_digest_covers_only_projected_references_and_waits_for_unknown_ones() {
        let a = seen("sha256:a", 10);
        let b = seen("sha256:b", 20);
        let both = refs(&[(Kind::ConfigMap, "a"), (Kind::Secret, "b"), (Kind::ConfigMap, "theirs")]);
        let lookup = |r: &Reference| match r.1.as_str() {
            "a" => Known::Seen(&a),
            "b" => Known::Seen(&b),
            _ => Known::NotProjected,
        };
        let Desired::Digest { value, last_written } = desired(&both, lookup) else { panic!("ours") };
        assert_eq!(last_written, Some(at(20)), "the latest change");
        let without_theirs = refs(&[(Kind::ConfigMap, "a"), (Kind::Secret, "b")]);
        assert!(matches!(desired(&without_theirs, lookup), Desired::Digest { value: v, .. } if v == value));
        let b2 = seen("sha256:b2", 30);
        let changed = |r: &Reference| if r.1 == "b" { Known::Seen(&b2) } else { lookup(r) };
        assert!(matches!(desired(&both, changed), Desired::Digest { value: v, .. } if v != value));
        let pending = |r: &Reference| if r.1 == "b" { Known::NotYetSeen } else { lookup(r) };
        assert_eq!(desired(&both, pending), Desired::Unknown);
        assert_eq!(desired(&refs(&[(Kind::ConfigMap, "theirs")]), lookup), Desired::NotOurs);
    }

    #[test]
    fn the_same_name_as_a_secret_is_another_reference() {
        let a = seen("sha256:a", 10);
        let lookup = |_: &Reference| Known::Seen(&a);
        assert_ne!(desired(&refs(&[(Kind::ConfigMap, "a")]), lookup), desired(&refs(&[(Kind::Secret, "a")]), lookup));
    }

    #[test]
    fn a_reader_is_patched_only_when_behind() {
        let desired = Desired::Digest { value: "sha256:new".into(), last_written: Some(at(100)) };
        assert_eq!(patch_to(Some("sha256:new"), Some(at(0)), &desired), None, "already current");
        assert_eq!(patch_to(Some("sha256:old"), Some(at(500)), &desired).as_deref(), Some("sha256:new"));
        assert_eq!(patch_to(None, Some(at(200)), &desired), None, "created after the change: started with it");
        assert_eq!(patch_to(None, Some(at(100)), &desired), None, "created the same second");
        assert_eq!(patch_to(None, Some(at(50)), &desired).as_deref(), Some("sha256:new"), "older than the change");
        assert_eq!(patch_to(Some("sha256:old"), None, &Desired::Unknown), None);
        assert_eq!(patch_to(Some("sha256:old"), None, &Desired::NotOurs), None);
    }

    #[test]
    fn content_digests_are_unambiguous() {
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_ne!(content_digest(&map(&[("ab", "c")])), content_digest(&map(&[("a", "bc")])));
        assert_eq!(content_digest(&map(&[("a", "1"), ("b", "2")])), content_digest(&map(&[("b", "2"), ("a", "1")])));
    }
}
