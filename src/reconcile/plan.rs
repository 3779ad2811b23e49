//! The reconcile's `plan` step: what one reconcile must do, decided from what
//! `resolve` read. Pure.
//!
//! identity → location → includes → routing → the stores to write, the stores
//! to sweep and the includes to read — or a [`Refusal`] that only a spec,
//! namespace or store change can lift. Every refusal is decided here (the
//! foreign ConfigMap or Secret in [`check_existing`]) except a store's own
//! limits, which `sync_stores` checks against each built backend before its
//! first write: a refused object writes nothing anywhere. Also here: the
//! readings of status that say which stores may hold the object's keys
//! ([`stores_settled`]), for a reconcile and for a cleanup.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;

use super::render::{self, Layer, Source};
use crate::{
    api::{
        ConfigStoreSpec, Entry, TenantConfig, TenantConfigStatus,
        conditions::{STORE_SYNCED, reason},
        identity::{Identity, IdentityError},
        tenant_config::MAX_ENTRIES_BYTES,
    },
    store::{
        Desired, Location, StoreRef, Value, overlap,
        routing::{self},
    },
};

/// Why an object is not reconciled: a condition reason and its message. Only a
/// change of spec, namespace or store can lift it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: &'static str, message: impl ToString) -> Self {
        Refusal { reason, message: message.to_string() }
    }
}

/// One store this reconcile writes to (or takes keys away from).
#[derive(Debug, Clone)]
pub struct StoreWrite<'a> {
    pub store: &'a str,
    pub spec: &'a ConfigStoreSpec,
    pub desired: Desired,
    /// Entries route here now (else the store only held keys before): only
    /// then is it a layer of the projection and a store named in status.
    pub routed_here: bool,
}

/// One `spec.include` to read.
#[derive(Debug, Clone)]
pub struct IncludeRead<'a> {
    /// Position in `spec.include` (the layer's precedence among includes).
    pub index: usize,
    pub store: &'a str,
    pub spec: &'a ConfigStoreSpec,
    pub path: String,
}

/// What a reconcile does, in order: sweep, write, read includes, project.
#[derive(Debug, Clone)]
pub struct ReconcilePlan<'a> {
    /// `{namespace}/{name}`, the owner recorded in the stores.
    pub owner: String,
    pub location: Location,
    /// Stores that may hold keys of this object that its status does not
    /// name (an interrupted reconcile wrote there before the spec moved the
    /// keys away): their keys of this object are deleted.
    pub sweep: Vec<StoreRef<'a>>,
    pub writes: Vec<StoreWrite<'a>>,
    pub includes: Vec<IncludeRead<'a>>,
    /// Secure entries go to this Secret (secure projection on and a `secretName`).
    pub secret_name: Option<String>,
}

/// A projected Secret's name as the controller may learn it: it holds no
/// right to read Secrets (README "Permissions"), so it never asks what
/// stands under a name.
#[derive(Debug, Default)]
pub enum SecretUnder {
    #[default]
    Absent,
    /// Labelled as ours and controlled by the TenantConfig asked about.
    Ours(Box<Secret>),
    /// Someone else's: never overwritten, never shown to this process.
    Foreign,
}

/// What already stands under the projection's names, as `resolve` read it.
#[derive(Debug, Default)]
pub struct Existing {
    pub config_map: Option<ConfigMap>,
    pub secret: SecretUnder,
}

impl Existing {
    /// The projected Secret, when it exists and is this object's.
    pub fn own_secret(&self) -> Option<&Secret> {
        match &self.secret {
            SecretUnder::Ours(secret) => Some(secret),
            SecretUnder::Absent | SecretUnder::Foreign => None,
        }
    }
}

/// The Secret secure entries go to: secure projection on and a `secretName`.
pub fn secret_name(tc: &TenantConfig, secure_projection: bool) -> Option<&str> {
    tc.spec.projection.as_ref().and_then(|p| p.secret_name.as_deref()).filter(|_| secure_projection)
}

/// Refuses when the ConfigMap or Secret the projection would write exists and
/// belongs to someone else: it is never overwritten.
pub fn check_existing(tc: &TenantConfig, plan: &ReconcilePlan<'_>, existing: &Existing) -> Result<(), Refusal> {
    let uid = tc.uid().unwrap_or_default();
    let foreign = |kind: &str, name: &str| {
        let message = format!("{kind} {name} exists and is not managed by this TenantConfig; it is never overwritten");
        Refusal::new(reason::CONFIG_MAP_CONFLICT, message)
    };
    if existing.config_map.as_ref().is_some_and(|cm| !render::owned_by(&cm.metadata, &uid)) {
        return Err(foreign("ConfigMap", tc.config_map_name()));
    }
    if let (SecretUnder::Foreign, Some(name)) = (&existing.secret, &plan.secret_name) {
        return Err(foreign("Secret", name));
    }
    Ok(())
}

/// The store-independent address of an object's data.
pub fn location_of(tc: &TenantConfig, identity: Identity) -> Location {
    Location { tenant: identity.tenant, environment: identity.environment, config_type: tc.config_type().into() }
}

/// The reason an identity failure is reported with.
pub fn identity_refusal(e: &IdentityError) -> Refusal {
    let why = match e {
        IdentityError::TenantUnknown { .. } => reason::TENANT_UNKNOWN,
        IdentityError::InvalidLabel { .. } => reason::VALIDATION_FAILED,
    };
    Refusal::new(why, e)
}

/// The stores a TenantConfig's status names (where its keys were last written).
pub fn recorded_stores(status: Option<&TenantConfigStatus>) -> BTreeSet<String> {
    status.iter().flat_map(|s| s.stores.iter().map(|s| s.name.clone())).collect()
}

/// Whether `status.stores` names every store holding keys of this object, as of
/// `generation`: true only once a reconcile of that generation got through all
/// its store writes (StoreSynced=True for it).
///
/// `observedGeneration` alone does not say this: it is written by failed
/// reconciles too. A reconcile that wrote to a store and then failed (its
/// answer lost, a later store throttled, a sweep interrupted) leaves the list
/// short of that store while `observedGeneration` already matches; trusting
/// it, the next reconcile skipped the sweep and cleanup skipped the store, and
/// the store kept keys nothing would ever remove.
pub fn stores_recorded(status: Option<&TenantConfigStatus>, generation: Option<i64>) -> bool {
    let Some(status) = status else { return false };
    generation.is_some()
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == STORE_SYNCED && c.status == "True" && c.observed_generation == generation)
}

/// As [`stores_recorded`], for an object being deleted: setting
/// `deletionTimestamp` bumps a custom resource's generation once, so the last
/// spec reconciled is one generation back.
pub fn stores_recorded_before_deletion(status: Option<&TenantConfigStatus>, generation: Option<i64>) -> bool {
    stores_recorded(status, generation) || stores_recorded(status, generation.map(|g| g - 1))
}

/// Whether `status.stores` can be trusted to name every store holding keys of
/// `tc` (whose full status is `status`), for a reconcile or, once it is being
/// deleted, for its cleanup.
pub fn stores_settled(tc: &TenantConfig, status: Option<&TenantConfigStatus>) -> bool {
    if tc.metadata.deletion_timestamp.is_some() {
        stores_recorded_before_deletion(status, tc.metadata.generation)
    } else {
        stores_recorded(status, tc.metadata.generation)
    }
}

/// Plans a reconcile of `tc` (not being deleted) against the known stores.
/// `claimed_by_another` says whether another TenantConfig claims a location.
pub fn plan<'a>(
    tc: &TenantConfig,
    identity: Result<Identity, IdentityError>,
    stores: &[StoreRef<'a>],
    secure_projection: bool,
    claimed_by_another: impl Fn(&Location) -> bool,
) -> Result<ReconcilePlan<'a>, Refusal> {
    let identity = identity.map_err(|e| identity_refusal(&e))?;
    let location = location_of(tc, identity);
    let owner = tc.owner_key();
    let overlaps = overlap::overlapping(stores);
    let includes = includes(tc, stores, &overlaps)?;
    let routed = routing::route_entries(&tc.spec, stores).map_err(|e| Refusal::new(reason::NO_STORE_FOR_TAGS, e))?;
    // Unpacked once: the cache holds it packed.
    let status = tc.full_status();
    let status = status.as_deref();
    let previous = recorded_stores(status);
    refuse_overlapping(&routed, &previous, &overlaps)?;

    let secret_name = secret_name(tc, secure_projection).map(str::to_string);
    check_entries_alone(tc, secret_name.is_some())?;

    // Stores this object writes to now, plus those it managed before (keys
    // whose tags moved elsewhere must leave the old store): `previous`.
    // Until a reconcile of this generation has got through its store writes,
    // status.stores may miss a store an interrupted or failed reconcile (crash,
    // lost answer, throttled sweep) wrote to; such stores are swept.
    let settled = stores_settled(tc, status);
    // A never-reconciled object may create before it reads — unless another
    // object claims the location (then it holds something, and a create would
    // be a failing write on behalf of a conflicting claim).
    let never_reconciled = status.and_then(|s| s.observed_generation).is_none();
    let expect_absent = never_reconciled && !claimed_by_another(&location);
    let mut plan = ReconcilePlan { owner, location, sweep: Vec::new(), writes: Vec::new(), includes, secret_name };
    for store in stores {
        let entries = routed.get(store.name);
        let before = previous.contains(store.name);
        if entries.is_none() && !before {
            // An overlapping store shares its table or paths with another: a
            // sweep through it would delete what the object wrote through that one.
            if !settled && !overlaps.contains_key(store.name) {
                plan.sweep.push(*store);
            }
            continue;
        }
        let desired = Desired {
            owner: plan.owner.clone(),
            entries: spec_values(entries.into_iter().flatten().copied()),
            policy: tc.spec.management_policy,
            owned_before: settled && before,
            expect_absent,
            created: tc.metadata.creation_timestamp.as_ref().map(|t| t.0),
            adopt_existing: tc.spec.adopt_existing,
        };
        plan.writes.push(StoreWrite { store: store.name, spec: store.spec, desired, routed_here: entries.is_some() });
    }
    Ok(plan)
}

/// What the spec's entries alone make impossible: a projection Kubernetes
/// refuses, or more than the per-object size cap.
fn check_entries_alone(tc: &TenantConfig, with_secret: bool) -> Result<(), Refusal> {
    // The projection holds at least the spec's own entries.
    let spec_only = Layer { source: Source::Spec, entries: Arc::new(spec_values(&tc.spec.entries)) };
    if let Err(e) = render::render(vec![spec_only], with_secret) {
        return Err(Refusal::new(reason::VALIDATION_FAILED, format!("spec entries alone: {e}")));
    }
    // The CRD refuses it too; an object admitted before that rule still is.
    let bytes: usize = tc.spec.entries.iter().map(|e| e.key.len() + e.value.len()).sum();
    if bytes > MAX_ENTRIES_BYTES as usize {
        let message = format!("entries hold {bytes} bytes of keys and values; at most {MAX_ENTRIES_BYTES} per object");
        return Err(Refusal::new(reason::VALIDATION_FAILED, message));
    }
    Ok(())
}

/// The stores serving each include, among stores that overlap nothing.
fn includes<'a>(
    tc: &TenantConfig,
    stores: &[StoreRef<'a>],
    overlaps: &BTreeMap<String, String>,
) -> Result<Vec<IncludeRead<'a>>, Refusal> {
    let usable: Vec<StoreRef<'a>> = stores.iter().filter(|s| !overlaps.contains_key(s.name)).copied().collect();
    let mut includes = Vec::new();
    for (index, include) in tc.spec.include.iter().enumerate() {
        let path = &include.parameter_path;
        let store = routing::shared_store_for(path, &usable).map_err(|e| {
            match routing::shared_store_for(path, stores).ok().and_then(|s| Some((s, overlaps.get(s)?))) {
                Some((refused, why)) => Refusal::new(
                    reason::STORE_OVERLAP,
                    format!("include {path:?} is served by ConfigStore {refused}: {why}"),
                ),
                None => Refusal::new(reason::INCLUDE_NOT_ALLOWED, e),
            }
        })?;
        let spec = usable.iter().find(|s| s.name == store).expect("the serving store is a candidate").spec;
        includes.push(IncludeRead { index, store, spec, path: path.clone() });
    }
    Ok(includes)
}

/// Refuses an object with entries in, or keys left in, an overlapping store:
/// nothing is written until the platform team separates the stores.
fn refuse_overlapping(
    routed: &BTreeMap<String, Vec<&Entry>>,
    previous: &BTreeSet<String>,
    overlaps: &BTreeMap<String, String>,
) -> Result<(), Refusal> {
    for (store, why) in overlaps {
        if let Some(entries) = routed.get(store) {
            let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            let message = format!("key(s) {} route to ConfigStore {store}: {why}", keys.join(", "));
            return Err(Refusal::new(reason::STORE_OVERLAP, message));
        }
        if previous.contains(store) {
            let message = format!("keys this object wrote to ConfigStore {store} wait there: {why}");
            return Err(Refusal::new(reason::STORE_OVERLAP, message));
        }
    }
    Ok(())
}

/// Entries of a spec as store values.
fn spec_values<'e>(entries: impl IntoIterator<Item = &'e Entry>) -> BTreeMap<String, Value> {
    entries.into_iter().map(|e| (e.key.clone(), Value { value: e.value.clone(), secure: e.secure })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        StoreSummary, TenantConfigStatus,
        conditions::{READY, set_condition},
    };
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    use serde_json::json;

    fn tc(spec: serde_json::Value, status: Option<TenantConfigStatus>) -> TenantConfig {
        let mut tc: TenantConfig = serde_json::from_value(json!({
            "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
            "metadata": {"name": "payments", "namespace": "acme-prod", "generation": 2},
            "spec": spec,
        }))
        .unwrap();
        tc.status = status;
        tc
    }

    fn stores() -> Vec<(String, ConfigStoreSpec)> {
        let ddb = json!({"dynamodb": {"tableName": "t"}, "tags": ["dynamic"], "default": true});
        let ssm = json!({"parameterStore": {"pathPrefix": "/tc", "sharedPaths": ["/shared"]}, "tags": ["static"]});
        [("ddb", ddb), ("ssm", ssm)]
            .into_iter()
            .map(|(n, s)| (n.to_string(), serde_json::from_value(s).unwrap()))
            .collect()
    }

    fn refs(stores: &[(String, ConfigStoreSpec)]) -> Vec<StoreRef<'_>> {
        stores.iter().map(|(name, spec)| StoreRef { name, spec }).collect()
    }

    fn acme() -> Result<Identity, IdentityError> {
        Ok(Identity { tenant: "acme".into(), environment: Some("prod".into()) })
    }

    fn settled_in(stores: &[&str]) -> TenantConfigStatus {
        let mut status = TenantConfigStatus {
            observed_generation: Some(2),
            stores: stores.iter().map(|s| StoreSummary { name: s.to_string(), ..Default::default() }).collect(),
            ..Default::default()
        };
        crate::api::conditions::set_condition(
            &mut status.conditions,
            crate::api::conditions::STORE_SYNCED,
            true,
            "Reconciled",
            "",
            Some(2),
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
        );
        status
    }

    fn status(conditions: &[(&str, bool, i64)], observed: i64) -> TenantConfigStatus {
        let mut s = TenantConfigStatus { observed_generation: Some(observed), ..Default::default() };
        for (type_, ok, generation) in conditions {
            set_condition(&mut s.conditions, type_, *ok, "R", "", Some(*generation), Time(Timestamp::now()));
        }
        s
    }

    #[test]
    fn a_completed_reconcile_of_this_generation_records_its_stores() {
        let s = status(&[(READY, true, 3), (STORE_SYNCED, true, 3)], 3);
        assert!(stores_recorded(Some(&s), Some(3)));
        assert!(!stores_recorded(Some(&s), Some(4)), "a newer spec has not been reconciled yet");
        assert!(!stores_recorded(None, Some(1)), "never reconciled");
        assert!(!stores_recorded(Some(&s), None));
    }

    /// The interleaving that orphaned data: a reconcile of generation 2 fails
    /// while sweeping a store that generation 1 wrote to (throttled); its
    /// status write sets observedGeneration 2. The retry must still sweep.
    #[test]
    fn a_failed_reconcile_leaves_the_list_untrusted_although_observed_generation_matches() {
        let after_failed_sweep = status(&[(READY, false, 2), (STORE_SYNCED, false, 2)], 2);
        assert_eq!(after_failed_sweep.observed_generation, Some(2));
        assert!(!stores_recorded(Some(&after_failed_sweep), Some(2)));
        // A failure after an earlier success at the same generation (a resync
        // that was throttled half-way) also makes the next reconcile sweep.
        let mut s = status(&[(STORE_SYNCED, true, 2)], 2);
        set_condition(&mut s.conditions, STORE_SYNCED, false, "Throttled", "", Some(2), Time(Timestamp::now()));
        assert!(!stores_recorded(Some(&s), Some(2)));
    }

    #[test]
    fn deletion_looks_one_generation_back() {
        let s = status(&[(STORE_SYNCED, true, 5)], 5);
        assert!(stores_recorded_before_deletion(Some(&s), Some(6)));
        assert!(stores_recorded_before_deletion(Some(&s), Some(5)));
        assert!(!stores_recorded_before_deletion(Some(&s), Some(7)), "a spec change never reconciled, then deletion");
        let failed = status(&[(STORE_SYNCED, false, 5)], 5);
        assert!(!stores_recorded_before_deletion(Some(&failed), Some(6)));
    }

    #[test]
    fn a_new_object_writes_where_its_entries_route_and_sweeps_nothing_it_never_touched() {
        let spec = json!({"entries": [{"key": "a", "value": "1"}, {"key": "b", "value": "2", "tags": ["static"]}],
                          "include": [{"parameterPath": "/shared/prod"}]});
        let all = stores();
        let plan = plan(&tc(spec, None), acme(), &refs(&all), false, |_| false).unwrap();
        assert_eq!(plan.owner, "acme-prod/payments");
        assert_eq!(
            plan.location,
            Location { tenant: "acme".into(), environment: Some("prod".into()), config_type: "payments".into() }
        );
        let writes: Vec<_> =
            plan.writes.iter().map(|w| (w.store, w.desired.entries.keys().cloned().collect::<Vec<_>>())).collect();
        assert_eq!(writes, [("ddb", vec!["a".to_string()]), ("ssm", vec!["b".to_string()])]);
        assert!(plan.writes.iter().all(|w| w.desired.expect_absent && !w.desired.owned_before && w.routed_here));
        // Never reconciled, so not settled: a store without entries is swept... none is left here.
        assert!(plan.sweep.is_empty());
        assert_eq!(
            plan.includes.iter().map(|i| (i.index, i.store, i.path.as_str())).collect::<Vec<_>>(),
            [(0, "ssm", "/shared/prod")]
        );
    }

    #[test]
    fn a_claimed_location_is_read_before_it_is_written() {
        let all = stores();
        let plan =
            plan(&tc(json!({"entries": [{"key": "a", "value": "1"}]}), None), acme(), &refs(&all), false, |_| true)
                .unwrap();
        assert!(!plan.writes[0].desired.expect_absent);
    }

    #[test]
    fn keys_that_moved_leave_the_old_store_and_unsettled_objects_sweep_the_rest() {
        let all = stores();
        // Settled in ssm; all entries now route to ddb: ssm is written with no entries (its keys leave).
        let moved = tc(json!({"entries": [{"key": "a", "value": "1"}]}), Some(settled_in(&["ssm"])));
        let p = plan(&moved, acme(), &refs(&all), false, |_| false).unwrap();
        let writes: Vec<_> = p
            .writes
            .iter()
            .map(|w| (w.store, w.routed_here, w.desired.owned_before, w.desired.entries.len()))
            .collect();
        assert_eq!(writes, [("ddb", true, false, 1), ("ssm", false, true, 0)]);
        assert!(p.sweep.is_empty(), "settled: status names every store");
        assert!(!p.writes[0].desired.expect_absent, "reconciled before");
        // The same object after a failed reconcile of this generation: ssm is not trusted, and
        // a store neither routed nor recorded is swept.
        let mut unsettled = settled_in(&[]);
        unsettled.conditions.clear();
        let p = plan(
            &tc(json!({"entries": [{"key": "b", "value": "1", "tags": ["static"]}]}), Some(unsettled)),
            acme(),
            &refs(&all),
            false,
            |_| false,
        )
        .unwrap();
        assert_eq!(p.sweep.iter().map(|s| s.name).collect::<Vec<_>>(), ["ddb"]);
    }

    /// A second DynamoDB store on the first one's table: neither is written
    /// through, and an unsettled object's sweep never goes through it (it
    /// deleted what the object had just written through the other).
    #[test]
    fn overlapping_stores_are_refused_and_never_swept() {
        let mut all = stores();
        let twin = json!({"dynamodb": {"tableName": "t"}, "tags": ["twin"]});
        all.push(("twin".into(), serde_json::from_value(twin).unwrap()));
        let into_twin = json!({"entries": [{"key": "a", "value": "1", "tags": ["twin"]}]});
        let refused = plan(&tc(into_twin, None), acme(), &refs(&all), false, |_| false).unwrap_err();
        assert_eq!(refused.reason, reason::STORE_OVERLAP);
        assert!(refused.message.contains("key(s) a route to ConfigStore twin"), "{}", refused.message);
        assert!(refused.message.contains("ConfigStore ddb's table \"t\""), "{}", refused.message);
        let into_ddb = json!({"entries": [{"key": "a", "value": "1"}]});
        let refused = plan(&tc(into_ddb, None), acme(), &refs(&all), false, |_| false).unwrap_err();
        assert_eq!(refused.reason, reason::STORE_OVERLAP, "ddb overlaps twin just as much");
        let in_ssm = json!({"entries": [{"key": "b", "value": "1", "tags": ["static"]}]});
        let p = plan(&tc(in_ssm.clone(), None), acme(), &refs(&all), false, |_| false).unwrap();
        assert!(p.sweep.is_empty(), "unsettled, yet no sweep through ddb or twin: {:?}", p.sweep);
        let left_behind = plan(&tc(in_ssm, Some(settled_in(&["twin"]))), acme(), &refs(&all), false, |_| false);
        assert!(left_behind.unwrap_err().message.contains("keys this object wrote to ConfigStore twin wait there"));
        // A shared path that contains the tenant prefix: includes through it are refused.
        let mut leaky = stores();
        let wide = json!({"parameterStore": {"pathPrefix": "/other", "sharedPaths": ["/tc"]}});
        leaky.push(("wide".into(), serde_json::from_value(wide).unwrap()));
        let include = json!({"include": [{"parameterPath": "/tc/omega/_/orders"}]});
        let refused = plan(&tc(include, None), acme(), &refs(&leaky), false, |_| false).unwrap_err();
        assert_eq!(refused.reason, reason::STORE_OVERLAP);
        assert!(refused.message.starts_with("include \"/tc/omega/_/orders\" is served by ConfigStore wide"));
    }

    #[test]
    fn refusals_name_their_reason() {
        let all = stores();
        let unknown = Err(IdentityError::TenantUnknown { namespace: "x".into(), label: "l".into() });
        let refused = plan(&tc(json!({}), None), unknown, &refs(&all), false, |_| false).unwrap_err();
        assert_eq!(refused.reason, reason::TENANT_UNKNOWN);
        let include = json!({"include": [{"parameterPath": "/tc/other-tenant"}]});
        assert_eq!(
            plan(&tc(include, None), acme(), &refs(&all), false, |_| false).unwrap_err().reason,
            reason::INCLUDE_NOT_ALLOWED
        );
        let no_default: Vec<_> = all.iter().filter(|(n, _)| n == "ssm").cloned().collect();
        let untagged = json!({"entries": [{"key": "a", "value": "1"}]});
        assert_eq!(
            plan(&tc(untagged, None), acme(), &refs(&no_default), false, |_| false).unwrap_err().reason,
            reason::NO_STORE_FOR_TAGS
        );
        let huge = json!({"entries": (0..200).map(|i| json!({"key": format!("k{i}"), "value": "x".repeat(8000)})).collect::<Vec<_>>()});
        let too_large = plan(&tc(huge, None), acme(), &refs(&all), false, |_| false).unwrap_err();
        assert_eq!(too_large.reason, reason::VALIDATION_FAILED);
        assert!(too_large.message.starts_with("spec entries alone"), "{}", too_large.message);
        let over_cap = json!({"entries": (0..40).map(|i| json!({"key": format!("k{i}"), "value": "x".repeat(8000)})).collect::<Vec<_>>()});
        let refused = plan(&tc(over_cap, None), acme(), &refs(&all), false, |_| false).unwrap_err();
        assert_eq!(refused.reason, reason::VALIDATION_FAILED);
        assert!(refused.message.contains("at most 262144 per object"), "{}", refused.message);
    }

    #[test]
    fn a_secret_is_planned_only_with_secure_projection() {
        let all = stores();
        let spec = json!({"projection": {"secretName": "s"}});
        assert_eq!(
            plan(&tc(spec.clone(), None), acme(), &refs(&all), true, |_| false).unwrap().secret_name.as_deref(),
            Some("s")
        );
        assert_eq!(plan(&tc(spec, None), acme(), &refs(&all), false, |_| false).unwrap().secret_name, None);
    }
}
