//! A TenantConfig's status as the controller's cache keeps it: packed into one
//! allocation of bytes.
//!
//! The cache holds every TenantConfig of the cluster. As structs, a status of
//! five conditions and two store summaries is some thirty allocations, about
//! 1.5 KiB, the largest part of a cached object (heaptrack, 3,000 objects);
//! packed, with the words every status repeats (condition types, `True`,
//! reasons, store kinds) as one byte each, it is about a fifth of that.
//! Lossless: [`unpack`] gives back exactly what [`pack`] was given, so
//! whatever compares or writes a status sees the API server's.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use super::{
    StoreSummary, TenantConfigStatus,
    conditions::{PROJECTED, READY, RECONCILING, STALLED, STORE_SYNCED, reason},
};
use crate::packing::{Packer, Unpacker};

/// The bytes of one packed status. Only the cache holds these (a status
/// field that is never serialized), so they are never read from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedStatus(Box<[u8]>);

/// Strings most statuses hold, each packed as its index + 1 (0: a literal
/// string follows). Only appended to: the bytes live in one process, but a
/// stable table keeps that reasoning simple.
const WORDS: &[&str] = &[
    "",
    "True",
    "False",
    "Unknown",
    READY,
    STORE_SYNCED,
    PROJECTED,
    RECONCILING,
    STALLED,
    reason::RECONCILED,
    reason::TENANT_UNKNOWN,
    reason::NO_STORE_FOR_TAGS,
    reason::INCLUDE_NOT_ALLOWED,
    reason::CONFLICT,
    reason::VALIDATION_FAILED,
    reason::STORE_UNAVAILABLE,
    reason::THROTTLED,
    reason::CONFIG_MAP_CONFLICT,
    reason::STORE_OVERLAP,
    reason::KEY_CONFLICT,
    reason::PROJECTION_REFUSED,
    reason::QUOTA_EXCEEDED,
    "DynamoDB",
    "ParameterStore",
];

fn word(packer: &mut Packer, value: &str) {
    match WORDS.iter().position(|w| *w == value) {
        Some(i) => packer.u64(i as u64 + 1),
        None => packer.u64(0).str(value),
    };
}

fn read_word(unpacker: &mut Unpacker<'_>) -> Option<String> {
    match usize::try_from(unpacker.u64()?).ok()? {
        0 => unpacker.string(),
        i => WORDS.get(i - 1).map(|w| w.to_string()),
    }
}

fn time(packer: &mut Packer, value: &Time) {
    packer.i64(value.0.as_second()).i64(i64::from(value.0.subsec_nanosecond()));
}

fn read_time(unpacker: &mut Unpacker<'_>) -> Option<Time> {
    let (seconds, nanos) = (unpacker.i64()?, i32::try_from(unpacker.i64()?).ok()?);
    Timestamp::new(seconds, nanos).ok().map(Time)
}

fn opt_time(packer: &mut Packer, value: Option<&Time>) {
    packer.bool(value.is_some());
    if let Some(value) = value {
        time(packer, value);
    }
}

fn read_opt_time(unpacker: &mut Unpacker<'_>) -> Option<Option<Time>> {
    Some(if unpacker.bool()? { Some(read_time(unpacker)?) } else { None })
}

/// `status` packed (its `packed` field, if any, is not: a packed status is
/// packed once).
pub fn pack(status: &TenantConfigStatus) -> PackedStatus {
    let mut p = Packer::default();
    p.opt_i64(status.observed_generation).opt_str(status.tenant.as_deref());
    p.u64(status.conditions.len() as u64);
    for c in &status.conditions {
        for w in [&c.type_, &c.status, &c.reason, &c.message] {
            word(&mut p, w);
        }
        p.opt_i64(c.observed_generation);
        time(&mut p, &c.last_transition_time);
    }
    p.u64(status.stores.len() as u64);
    for s in &status.stores {
        p.str(&s.name);
        word(&mut p, &s.kind);
        p.str(&s.location).i64(i64::from(s.keys));
    }
    p.opt_str(status.config_map.as_deref()).opt_i64(status.projected_keys.map(i64::from));
    p.opt_str(status.source_digest.as_deref());
    opt_time(&mut p, status.last_projected_time.as_ref());
    PackedStatus(p.finish())
}

/// The status [`pack`] was given; `None` only for bytes it did not write.
pub fn unpack(packed: &PackedStatus) -> Option<TenantConfigStatus> {
    let mut u = Unpacker::new(&packed.0);
    let (observed_generation, tenant) = (u.opt_i64()?, u.opt_string()?);
    let conditions = (0..u.count()?)
        .map(|_| {
            Some(Condition {
                type_: read_word(&mut u)?,
                status: read_word(&mut u)?,
                reason: read_word(&mut u)?,
                message: read_word(&mut u)?,
                observed_generation: u.opt_i64()?,
                last_transition_time: read_time(&mut u)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let stores = (0..u.count()?)
        .map(|_| {
            Some(StoreSummary {
                name: u.string()?,
                kind: read_word(&mut u)?,
                location: u.string()?,
                keys: i32::try_from(u.i64()?).ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let config_map = u.opt_string()?;
    let projected_keys = match u.opt_i64()? {
        Some(keys) => Some(i32::try_from(keys).ok()?),
        None => None,
    };
    let (source_digest, last_projected_time) = (u.opt_string()?, read_opt_time(&mut u)?);
    u.is_done().then_some(TenantConfigStatus {
        observed_generation,
        tenant,
        conditions,
        stores,
        config_map,
        projected_keys,
        source_digest,
        last_projected_time,
        packed: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seconds: i64, nanos: i32) -> Time {
        Time(Timestamp::new(seconds, nanos).unwrap())
    }

    fn condition(type_: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>) -> Condition {
        Condition {
            type_: type_.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: at(1_764_800_000, 0),
        }
    }

    /// What a reconciled object of two stores carries.
    fn typical() -> TenantConfigStatus {
        TenantConfigStatus {
            observed_generation: Some(3),
            tenant: Some("acme".into()),
            conditions: vec![
                condition(READY, true, reason::RECONCILED, "", Some(3)),
                condition(STORE_SYNCED, true, reason::RECONCILED, "3 managed key(s) in 2 store(s)", Some(3)),
                condition(PROJECTED, true, reason::RECONCILED, "4 key(s) projected", Some(3)),
                condition(RECONCILING, false, reason::RECONCILED, "", Some(3)),
                condition(STALLED, false, reason::RECONCILED, "", Some(3)),
            ],
            stores: vec![
                StoreSummary {
                    name: "tenant-db".into(),
                    kind: "DynamoDB".into(),
                    location: "TENANT#acme/CONFIG#payments".into(),
                    keys: 2,
                },
                StoreSummary {
                    name: "tenant-ssm".into(),
                    kind: "ParameterStore".into(),
                    location: "/tenant-config/acme/payments".into(),
                    keys: 1,
                },
            ],
            config_map: Some("payments".into()),
            projected_keys: Some(4),
            source_digest: Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into()),
            last_projected_time: Some(at(1_764_800_001, 0)),
            packed: None,
        }
    }

    #[test]
    fn a_typical_status_reads_back_whole_from_under_a_third_of_its_json_bytes() {
        let status = typical();
        let packed = pack(&status);
        assert_eq!(unpack(&packed), Some(status.clone()));
        let json = serde_json::to_vec(&status).unwrap().len();
        assert!(packed.0.len() * 3 < json, "{} packed bytes against {json} of JSON", packed.0.len());
    }

    #[test]
    fn words_outside_the_table_and_sub_second_times_survive() {
        let mut status = typical();
        status.conditions[0] = condition("Custom", false, "SomeNewReason", "ünïcode message", None);
        status.conditions[0].last_transition_time = at(-5, 999_999_999);
        status.stores[0].kind = "Future".into();
        status.stores[0].keys = i32::MIN;
        status.projected_keys = Some(i32::MAX);
        assert_eq!(unpack(&pack(&status)), Some(status));
        let empty = TenantConfigStatus::default();
        assert_eq!(unpack(&pack(&empty)), Some(empty));
    }

    #[test]
    fn bytes_it_did_not_write_unpack_to_nothing() {
        let packed = pack(&typical());
        for cut in 0..packed.0.len() {
            assert_eq!(unpack(&PackedStatus(packed.0[..cut].into())), None, "cut at {cut}");
        }
        let mut longer = packed.0.to_vec();
        longer.push(0);
        assert_eq!(unpack(&PackedStatus(longer.into())), None, "a byte left over");
        assert_eq!(unpack(&PackedStatus(Box::new([0, 0, 0, 0, 0, 0, 0, 0, 0, 200]))), None);
    }

    fn any_word() -> impl Strategy<Value = String> {
        prop_oneof![proptest::sample::select(WORDS).prop_map(str::to_string), ".{0,40}"]
    }

    proptest! {
        #[test]
        fn any_status_reads_back_as_it_was(
            observed in proptest::option::of(any::<i64>()),
            tenant in proptest::option::of(".{0,20}"),
            conditions in proptest::collection::vec(
                (any_word(), any_word(), any_word(), any_word(), proptest::option::of(any::<i64>()),
                 -100_000_000_000i64..100_000_000_000, 0i32..1_000_000_000),
                0..7),
            stores in proptest::collection::vec((".{0,20}", any_word(), ".{0,60}", any::<i32>()), 0..4),
            config_map in proptest::option::of("[a-z]{1,20}"),
            keys in proptest::option::of(any::<i32>()),
            digest in proptest::option::of("[0-9a-f]{0,64}"),
            projected in proptest::option::of((-100_000_000_000i64..100_000_000_000, 0i32..1_000_000_000)),
        ) {
            let status = TenantConfigStatus {
                observed_generation: observed,
                tenant,
                conditions: conditions
                    .into_iter()
                    .map(|(type_, status, reason, message, observed_generation, s, n)| Condition {
                        type_, status, reason, message, observed_generation, last_transition_time: at(s, n),
                    })
                    .collect(),
                stores: stores
                    .into_iter()
                    .map(|(name, kind, location, keys)| StoreSummary { name, kind, location, keys })
                    .collect(),
                config_map,
                projected_keys: keys,
                source_digest: digest,
                last_projected_time: projected.map(|(s, n)| at(s, n)),
                packed: None,
            };
            prop_assert_eq!(unpack(&pack(&status)), Some(status));
        }
    }
}
