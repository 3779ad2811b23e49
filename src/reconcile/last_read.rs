//! What each object's last successful reconcile read from its stores, as
//! digests: the bulk resync compares them with a fresh bulk read and
//! reconciles only the objects whose stores changed since. And the layers
//! themselves, which a reconcile asked for by a shared-path change alone
//! reuses instead of reading the object's own stores again — kept only where
//! that can happen (objects that include a shared path) and only up to
//! [`REUSE_MAX_BYTES`], so that kept values never double what the cache of
//! large TenantConfigs costs (README "Memory").

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use kube::runtime::reflector::ObjectRef;

use super::render::{Layer, Source};
use crate::{
    api::{Guarded, StoreSummary},
    packing::{Packer, Unpacker},
    store::{Location, Value},
};

/// One object's last successful reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastRead {
    /// The generation it reconciled (a spec change makes the record stale).
    pub generation: Option<i64>,
    pub location: Location,
    /// `(store, content digest)` of each store the projection read.
    pub stores: Vec<(String, u64)>,
    /// `(store, path, entries digest)` of each include.
    pub includes: Vec<(String, String, u64)>,
}

/// What the object's own stores held at that reconcile (after its writes).
#[derive(Clone, Debug, PartialEq)]
pub struct OwnStores {
    pub summaries: Vec<StoreSummary>,
    pub layers: Vec<Layer>,
    /// Other writers' entries left out (another entry has the same key).
    pub shadowed: Vec<String>,
    /// Desired keys another writer holds, not adopted (`store: key`).
    pub unclaimed: Vec<String>,
}

/// A last reconcile's own-store reads that a new reconcile may stand on
/// (`sync_stores` decides whether it does).
pub struct Reusable {
    pub read: LastRead,
    pub own: Arc<OwnStores>,
}

/// The records, by object, each packed into one allocation (see
/// [`crate::packing`]: as structs they were the largest per-object cost after
/// the TenantConfig cache). An object without one (never reconciled here, or
/// its last reconcile did not succeed) is reconciled by every resync.
#[derive(Default)]
pub struct LastReads {
    /// Keyed by `namespace/name` (neither may hold a `/`): an `ObjectRef`
    /// key costs 96 bytes in every slot and two more allocations.
    records: Mutex<HashMap<Box<str>, Box<[u8]>>>,
}

/// The most own-store bytes (keys and values) kept for reuse per object; a
/// larger object reads its stores again on a shared-path change.
pub const REUSE_MAX_BYTES: usize = 16 * 1024;

impl OwnStores {
    /// Keys and values of its layers, in bytes.
    fn bytes(&self) -> usize {
        self.layers.iter().flat_map(|l| l.entries.iter()).map(|(k, v)| k.len() + v.value.len()).sum()
    }

    /// Whether a shared-path change could reuse it: only an object that
    /// includes a shared path is ever reconciled for one, and a large one
    /// reads again rather than keep a second copy of its values.
    fn worth_keeping(&self, read: &LastRead) -> bool {
        !read.includes.is_empty() && self.bytes() <= REUSE_MAX_BYTES
    }
}

impl LastReads {
    pub fn record(&self, object: &ObjectRef<Guarded>, read: LastRead, own: OwnStores) {
        let own = own.worth_keeping(&read).then_some(own);
        let packed = pack(&read, own.as_ref());
        self.records.lock().unwrap().insert(key(object), packed);
    }

    pub fn forget(&self, object: &ObjectRef<Guarded>) {
        let mut records = self.records.lock().unwrap();
        records.remove(&key(object));
        crate::spare::release_spare(&mut records);
    }

    /// Takes the object's record away (until the reconcile now starting
    /// succeeds, the resync must not take the object as current) and returns
    /// it if it is of this generation.
    pub fn take(&self, object: &ObjectRef<Guarded>, generation: Option<i64>) -> Option<Reusable> {
        let packed = self.records.lock().unwrap().remove(&key(object))?;
        let (read, own) = unpack(&packed)?;
        Some(Reusable { read: Some(read).filter(|r| r.generation == generation)?, own: Arc::new(own?) })
    }

    /// The object's record, if it has one (of any generation).
    pub fn get(&self, object: &ObjectRef<Guarded>) -> Option<LastRead> {
        unpack_read(&mut Unpacker::new(self.records.lock().unwrap().get(&key(object))?))
    }

    /// Visits every record, unpacking one at a time: a resync of 10,000
    /// objects would otherwise hold all of them unpacked at once (megabytes
    /// that, freed amid long-lived allocations, stay resident).
    pub fn for_each(&self, mut visit: impl FnMut(&LastRead)) {
        let records = self.records.lock().unwrap();
        for read in records.values().filter_map(|packed| unpack_read(&mut Unpacker::new(packed))) {
            visit(&read);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.records.lock().unwrap().len()
    }
}

fn key(object: &ObjectRef<Guarded>) -> Box<str> {
    format!("{}/{}", object.namespace.as_deref().unwrap_or_default(), object.name).into_boxed_str()
}

fn pack(read: &LastRead, own: Option<&OwnStores>) -> Box<[u8]> {
    let mut p = Packer::default();
    let location = &read.location;
    p.opt_i64(read.generation)
        .str(&location.tenant)
        .opt_str(location.environment.as_deref())
        .str(&location.config_type);
    p.u64(read.stores.len() as u64);
    for (store, digest) in &read.stores {
        p.str(store).u64(*digest);
    }
    p.u64(read.includes.len() as u64);
    for (store, path, digest) in &read.includes {
        p.str(store).str(path).u64(*digest);
    }
    p.bool(own.is_some());
    if let Some(own) = own {
        p.u64(own.summaries.len() as u64);
        for summary in &own.summaries {
            p.str(&summary.name).str(&summary.kind).str(&summary.location).i64(summary.keys.into());
        }
        p.u64(own.layers.len() as u64);
        for layer in &own.layers {
            match &layer.source {
                Source::Spec => p.u64(0),
                Source::Shared { index } => p.u64(1).u64(*index as u64),
                Source::Store { precedence, name } => p.u64(2).u64((*precedence).into()).str(name),
            };
            p.u64(layer.entries.len() as u64);
            for (key, value) in layer.entries.iter() {
                p.str(key).str(&value.value).bool(value.secure);
            }
        }
        for list in [&own.shadowed, &own.unclaimed] {
            p.u64(list.len() as u64);
            for item in list {
                p.str(item);
            }
        }
    }
    p.finish()
}

fn unpack(bytes: &[u8]) -> Option<(LastRead, Option<OwnStores>)> {
    let mut u = Unpacker::new(bytes);
    let read = unpack_read(&mut u)?;
    let own = if u.bool()? { Some(unpack_own(&mut u)?) } else { None };
    debug_assert!(u.is_done(), "a packed last read has bytes left over");
    Some((read, own))
}

fn unpack_read(u: &mut Unpacker<'_>) -> Option<LastRead> {
    let generation = u.opt_i64()?;
    let location = Location { tenant: u.string()?, environment: u.opt_string()?, config_type: u.string()? };
    let stores = (0..u.count()?).map(|_| Some((u.string()?, u.u64()?))).collect::<Option<_>>()?;
    let includes = (0..u.count()?).map(|_| Some((u.string()?, u.string()?, u.u64()?))).collect::<Option<_>>()?;
    Some(LastRead { generation, location, stores, includes })
}

fn unpack_own(u: &mut Unpacker<'_>) -> Option<OwnStores> {
    let summaries = (0..u.count()?)
        .map(|_| {
            let (name, kind, location) = (u.string()?, u.string()?, u.string()?);
            Some(StoreSummary { name, kind, location, keys: i32::try_from(u.i64()?).ok()? })
        })
        .collect::<Option<_>>()?;
    let layers = (0..u.count()?)
        .map(|_| {
            let source = match u.u64()? {
                0 => Source::Spec,
                1 => Source::Shared { index: usize::try_from(u.u64()?).ok()? },
                2 => Source::Store { precedence: u8::try_from(u.u64()?).ok()?, name: u.string()? },
                _ => return None,
            };
            let entries: BTreeMap<String, Value> = (0..u.count()?)
                .map(|_| Some((u.string()?, Value { value: u.string()?, secure: u.bool()? })))
                .collect::<Option<_>>()?;
            Some(Layer { source, entries: Arc::new(entries) })
        })
        .collect::<Option<_>>()?;
    let shadowed = (0..u.count()?).map(|_| u.string()).collect::<Option<_>>()?;
    let unclaimed = (0..u.count()?).map(|_| u.string()).collect::<Option<_>>()?;
    Some(OwnStores { summaries, layers, shadowed, unclaimed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reconcile::render::Source, store::Value};

    fn own(value_bytes: usize) -> OwnStores {
        let entries = [("k".to_string(), Value { value: "v".repeat(value_bytes), secure: false })].into();
        let layer = Layer { source: Source::Store { precedence: 0, name: "db".into() }, entries: Arc::new(entries) };
        OwnStores { summaries: Vec::new(), layers: vec![layer], shadowed: Vec::new(), unclaimed: Vec::new() }
    }

    fn read(includes: usize) -> LastRead {
        let location = Location { tenant: "t".into(), environment: None, config_type: "c".into() };
        let includes = (0..includes).map(|i| ("ssm".to_string(), format!("/shared/{i}"), 1)).collect();
        LastRead { generation: Some(1), location, stores: vec![("db".into(), 1)], includes }
    }

    #[test]
    fn values_are_kept_only_where_a_shared_change_can_reuse_them_and_only_small() {
        let reads = LastReads::default();
        let object = ObjectRef::new("a").within("ns");
        reads.record(&object, read(1), own(100));
        assert!(reads.take(&object, Some(1)).is_some(), "includes a shared path: kept");
        reads.record(&object, read(0), own(100));
        assert!(reads.take(&object, Some(1)).is_none(), "no include: never reused, not kept");
        assert_eq!(reads.len(), 0, "taken");
        reads.record(&object, read(1), own(REUSE_MAX_BYTES));
        assert!(reads.take(&object, Some(1)).is_none(), "too large to keep a second copy of");
        reads.record(&object, read(1), own(10));
        reads.record(&object, read(0), own(10));
        assert_eq!(reads.len(), 1, "the digests stay for the resync");
        assert_eq!(reads.get(&object), Some(read(0)));
        assert!(reads.take(&object, Some(1)).is_none(), "a record without reuse drops the earlier values");
    }

    #[test]
    fn a_packed_record_reads_back_whole() {
        let location =
            Location { tenant: "acme".into(), environment: Some("prod".into()), config_type: "payments".into() };
        let read = LastRead {
            generation: Some(-3),
            location,
            stores: vec![("db".into(), u64::MAX), ("ssm".into(), 7)],
            includes: vec![("ssm".into(), "/shared/common".into(), 42)],
        };
        let entries = |pairs: &[(&str, &str, bool)]| {
            Arc::new(
                pairs.iter().map(|(k, v, s)| (k.to_string(), Value { value: v.to_string(), secure: *s })).collect(),
            )
        };
        let own = OwnStores {
            summaries: vec![StoreSummary {
                name: "db".into(),
                kind: "DynamoDB".into(),
                location: "TENANT#acme".into(),
                keys: 2,
            }],
            layers: vec![
                Layer { source: Source::Spec, entries: entries(&[]) },
                Layer { source: Source::Shared { index: 3 }, entries: entries(&[("region", "eu", false)]) },
                Layer {
                    source: Source::Store { precedence: 2, name: "db".into() },
                    entries: entries(&[("a", "1", false), ("token", "s3cr3t", true), ("", "", false)]),
                },
            ],
            shadowed: vec!["a.b".into()],
            unclaimed: vec!["db: x".into(), "ssm: y".into()],
        };
        let (back, kept) = unpack(&pack(&read, Some(&own))).expect("unpacks");
        assert_eq!(back, read);
        assert_eq!(kept.as_ref(), Some(&own));
        assert_eq!(unpack(&pack(&read, None)), Some((read, None)));
    }
}
