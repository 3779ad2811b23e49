//! What one reconcile must do, decided before any call. Pure.
//!
//! identity → location → includes → routing → the stores to write, the stores
//! to sweep and the includes to read — or a [`Refusal`] that only a spec,
//! namespace or store change can lift. Everything that can refuse the object
//! is checked here or in the pre-flight IO steps before the first store write,
//! so a refused object writes nothing anywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{
    projection::{self, Layer, Source},
    status,
};
use crate::{
    api::{
        ConfigStoreSpec, Entry, TenantConfig,
        conditions::reason,
        identity::{Identity, IdentityError},
    },
    store::{
        Desired, Location, StoreRef, Value,
        routing::{self},
    },
};

/// Why an object is not reconciled: a condition reason and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(reason: &'static str, message: impl ToString) -> Self {
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
pub fn recorded_stores(tc: &TenantConfig) -> BTreeSet<String> {
    tc.status.iter().flat_map(|s| s.stores.iter().map(|s| s.name.clone())).collect()
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
    let mut includes = Vec::new();
    for (index, include) in tc.spec.include.iter().enumerate() {
        let store = routing::shared_store_for(&include.parameter_path, stores)
            .map_err(|e| Refusal::new(reason::INCLUDE_NOT_ALLOWED, e))?;
        let spec = stores.iter().find(|s| s.name == store).expect("the serving store is a candidate").spec;
        includes.push(IncludeRead { index, store, spec, path: include.parameter_path.clone() });
    }
    let routed = routing::route_entries(&tc.spec, stores).map_err(|e| Refusal::new(reason::NO_STORE_FOR_TAGS, e))?;

    let secret_name = tc.spec.projection.as_ref().and_then(|p| p.secret_name.clone()).filter(|_| secure_projection);
    // The projection holds at least the spec's own entries.
    let spec_only = Layer { source: Source::Spec, entries: Arc::new(spec_values(&tc.spec.entries)) };
    if let Err(e) = projection::render(vec![spec_only], secret_name.is_some()) {
        return Err(Refusal::new(reason::VALIDATION_FAILED, format!("spec entries alone: {e}")));
    }

    // Stores this object writes to now, plus those it managed before (keys
    // whose tags moved elsewhere must leave the old store).
    let previous = recorded_stores(tc);
    // Until a reconcile of this generation has got through its store writes,
    // status.stores may miss a store an interrupted or failed reconcile (crash,
    // lost answer, throttled sweep) wrote to; such stores are swept.
    let settled = status::stores_settled(tc);
    // A never-reconciled object may create before it reads — unless another
    // object claims the location (then it holds something, and a create would
    // be a failing write on behalf of a conflicting claim).
    let never_reconciled = tc.status.as_ref().and_then(|s| s.observed_generation).is_none();
    let expect_absent = never_reconciled && !claimed_by_another(&location);
    let mut plan = ReconcilePlan { owner, location, sweep: Vec::new(), writes: Vec::new(), includes, secret_name };
    for store in stores {
        let entries = routed.get(store.name);
        let before = previous.contains(store.name);
        if entries.is_none() && !before {
            if !settled {
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
        };
        plan.writes.push(StoreWrite { store: store.name, spec: store.spec, desired, routed_here: entries.is_some() });
    }
    Ok(plan)
}

/// Entries of a spec as store values.
fn spec_values<'e>(entries: impl IntoIterator<Item = &'e Entry>) -> BTreeMap<String, Value> {
    entries.into_iter().map(|e| (e.key.clone(), Value { value: e.value.clone(), secure: e.secure })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{StoreSummary, TenantConfigStatus};
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
