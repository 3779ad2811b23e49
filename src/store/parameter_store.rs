//! Parameter Store strategy (DESIGN.md §4): one parameter per key at
//! `{pathPrefix}/{tenant}/{env or _}/{configType}/{key}`.
//!
//! Ownership is recorded per parameter in its Description ("managed by
//! tenant-config-controller for {namespace}/{name}"), because DescribeParameters
//! returns descriptions for a whole path in one paged walk, whereas tags need one
//! ListTagsForResource call per parameter. The design's tags are still set when a
//! parameter is created (AWS refuses Tags together with Overwrite).

pub mod migration;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use aws_sdk_ssm::{
    Client,
    error::SdkError,
    types::{ParameterMetadata, ParameterStringFilter, ParameterType, ResourceTypeForTagging, Tag},
};
use tracing::debug;

use super::{
    ApplyReport, Backend, BackendContext, BulkRead, CallGate, Desired, Entry, LimitError, Location, SharedPaths,
    StoreError, StoreRef, StoreState, Value,
    change::{StoreChange, Target},
    limits::{check_parameter_name, parameter_tier},
    plan::{Plan, plan},
    rate_limit::RateFamily,
    tenant_walks::TenantWalks,
};
use crate::api::{
    ConfigStoreSpec, ManagementPolicy, ParameterStoreStore, ParameterTier, StoreBackend, is_valid_key,
    names::{TAG_CONFIG_TYPE, TAG_MANAGED_BY, TAG_TENANT},
    paths::{NO_ENVIRONMENT, strip_path},
};

const KIND: &str = "ParameterStore";

/// The registry's entry for this kind.
pub const ENTRY: Entry = Entry { kind: KIND, build, locate, rate_families: &[WRITES, READS] };

/// AWS's PutParameter default (3/s), shared by every SSM write.
pub const WRITES: RateFamily = RateFamily {
    name: "ssm-write",
    default_per_second: Some(3),
    counts: "SSM PutParameter, DeleteParameters, AddTagsToResource",
};
/// AWS's shared default for SSM reads (40/s).
pub const READS: RateFamily = RateFamily {
    name: "ssm-read",
    default_per_second: Some(40),
    counts: "SSM GetParametersByPath, DescribeParameters and other reads",
};

fn build(store: &str, spec: &ConfigStoreSpec, ctx: &BackendContext) -> Option<Arc<dyn Backend>> {
    match spec.backend()? {
        StoreBackend::ParameterStore(spec) => Some(Arc::new(ParameterStoreBackend::new(store, spec, ctx))),
        _ => None,
    }
}

/// A changed parameter lands at the tenant location its name encodes, and
/// (under a shared path) at every object including a path above it.
fn locate(change: &StoreChange, store: StoreRef<'_>) -> Vec<Target> {
    let (StoreChange::Parameter { name, .. }, Some(StoreBackend::ParameterStore(spec))) =
        (change, store.spec.backend())
    else {
        return Vec::new();
    };
    let tenant = |location| Target::Tenant { store: store.name.into(), location };
    let mut targets: Vec<Target> = changed_location(spec, name).map(tenant).into_iter().collect();
    if is_shared(spec, name) {
        targets.push(Target::Shared { store: store.name.into(), name: name.clone() });
    }
    targets
}
const OWNER_PREFIX: &str = "managed by tenant-config-controller for ";
/// AWS API batch limits.
const BY_PATH_PAGE: i32 = 10;
const DESCRIBE_PAGE: i32 = 50;
const DELETE_BATCH: usize = 10;

/// The path holds exactly what this owner wrote.
fn in_sync(desired: &Desired, entries: &BTreeMap<String, Value>) -> bool {
    desired.owned_before
        && entries.len() == desired.entries.len()
        && desired.entries.iter().all(|(k, v)| entries.get(k) == Some(v))
}

/// Keys adopted without a value change: their owner still has to be recorded.
fn claims(current: &StoreState, plan: &Plan) -> BTreeSet<String> {
    let adopted =
        |k: &&String| !current.managed.contains(*k) && !plan.puts.contains_key(*k) && current.entries.contains_key(*k);
    plan.managed.iter().filter(adopted).cloned().collect()
}

/// The order in which colliding names win: fewer levels, then lexically first.
fn rank(name: &str) -> (usize, &str) {
    (name.matches('/').count(), name)
}

/// How one parameter write went.
enum Put {
    Written,
    /// `CreateOnly`, and someone created it since the read: theirs stays.
    Skipped,
    /// A create found a parameter the start-up walk did not: read and plan again.
    Replan,
}

pub struct ParameterStoreBackend {
    /// The ConfigStore's name (start-up walks are kept per store).
    store: String,
    client: Client,
    path_prefix: String,
    tier: ParameterTier,
    kms_key_id: Option<String>,
    gate: CallGate,
    walks: Arc<TenantWalks>,
}

impl ParameterStoreBackend {
    /// The tier each desired key needs, after checking every limit (names,
    /// value sizes, SecureString without a KMS key).
    fn tiers(&self, location: &Location, desired: &Desired) -> Result<BTreeMap<String, ParameterTier>, StoreError> {
        let base = self.base_path(location);
        let mut tiers = BTreeMap::new();
        for (key, value) in &desired.entries {
            check_parameter_name(&format!("{base}/{key}"))?;
            tiers.insert(key.clone(), parameter_tier(key, &value.value, self.tier)?);
            if value.secure && self.kms_key_id.is_none() {
                return Err(LimitError::SecureNotSupported {
                    key: key.clone(),
                    store: self.path_prefix.clone(),
                    why: "has no kmsKeyId for SecureString",
                }
                .into());
            }
        }
        Ok(tiers)
    }

    pub fn new(store: &str, spec: &ParameterStoreStore, ctx: &BackendContext) -> Self {
        ParameterStoreBackend {
            store: store.to_string(),
            client: Client::from_conf(super::service_config!(aws_sdk_ssm, ctx, spec, "tenant-config-ssm")),
            path_prefix: spec.path_prefix.trim_end_matches('/').to_string(),
            tier: spec.tier,
            kms_key_id: spec.kms_key_id.clone(),
            gate: ctx.gate(KIND, family),
            walks: ctx.tenant_walks.clone(),
        }
    }

    /// The path that holds a location's parameters:
    /// `{pathPrefix}/{tenant}/{env or _}/{configType}` (always four levels, see
    /// [`NO_ENVIRONMENT`]).
    pub fn base_path(&self, location: &Location) -> String {
        location_path(&self.path_prefix, location)
    }

    /// Every parameter under `path`, keyed by its name relative to `path` with
    /// `/` flattened to `.` (DESIGN.md §5; [`flatten`] for names that collide).
    async fn values_under(&self, path: &str) -> Result<Flat<Value>, StoreError> {
        Ok(flatten(path, self.parameters_under(path).await?))
    }

    /// The tenant's path, which holds all its locations.
    fn tenant_path(&self, tenant: &str) -> String {
        format!("{}/{tenant}", self.path_prefix)
    }

    /// Every parameter under `path` (recursive, decrypted), by full name, in
    /// the order the store returns them.
    async fn parameters_under(&self, path: &str) -> Result<Vec<(String, Value)>, StoreError> {
        let mut parameters = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .gate
                .call(
                    "GetParametersByPath",
                    self.client
                        .get_parameters_by_path()
                        .path(path)
                        .recursive(true)
                        .with_decryption(true)
                        .max_results(BY_PATH_PAGE)
                        .set_next_token(token)
                        .send(),
                )
                .await
                .map_err(|e| StoreError::from_sdk(KIND, "GetParametersByPath", e))?;
            for p in page.parameters() {
                if let (Some(name), Some(value)) = (p.name(), p.value()) {
                    let secure = p.r#type() == Some(&ParameterType::SecureString);
                    parameters.push((name.to_string(), Value { value: value.to_string(), secure }));
                }
            }
            token = page.next_token().map(String::from);
            if token.is_none() {
                return Ok(parameters);
            }
        }
    }

    /// Plans and writes `desired` against `entries`, what the path holds
    /// (read now, or found by the start-up walk: `from_walk`). `None`: a
    /// create found a parameter the walk did not; read and plan again.
    async fn apply_against(
        &self,
        location: &Location,
        desired: &Desired,
        base: &str,
        tiers: &BTreeMap<String, ParameterTier>,
        Flat { entries, shadowed }: Flat<Value>,
        from_walk: bool,
    ) -> Result<Option<ApplyReport>, StoreError> {
        // Steady state (every resync): ownership (DescribeParameters) matters only for a change.
        if in_sync(desired, &entries) {
            let managed = desired.entries.keys().cloned().collect();
            let managed_by = Some(desired.owner.clone());
            let state = StoreState { entries, managed, managed_by, version: 0, shadowed };
            return Ok(Some(ApplyReport { state, ..Default::default() }));
        }
        // An empty path has no owner to ask about (every new object's first apply).
        let (managed_by, managed) =
            if entries.is_empty() { (None, BTreeSet::new()) } else { ownership(&self.owners_under(base).await?) };
        let current = StoreState { entries, managed, managed_by, version: 0, shadowed };
        let plan =
            plan(&current, desired).map_err(|e| StoreError::Conflict { location: base.to_string(), owner: e.owner })?;
        let claims = claims(&current, &plan);
        if plan.puts.is_empty() && plan.deletes.is_empty() && claims.is_empty() {
            return Ok(Some(ApplyReport { state: current, ..Default::default() }));
        }

        let mut state = current.clone();
        let mut written = BTreeSet::new();
        for (key, value) in plan.puts.iter().chain(claims.iter().map(|k| (k, &current.entries[k]))) {
            let tier = tiers.get(key).copied().unwrap_or(ParameterTier::Standard);
            let found = current.entries.contains_key(key).then(|| current.managed.contains(key));
            match self.put_key(location, desired, &format!("{base}/{key}"), value, tier, found, from_walk).await? {
                Put::Written => {
                    state.entries.insert(key.clone(), value.clone());
                    written.insert(key.clone());
                }
                Put::Skipped => {}
                Put::Replan => return Ok(None),
            }
        }
        self.delete(base, &plan.deletes).await?;
        for key in &plan.deletes {
            state.entries.remove(key);
        }
        state.managed = plan.managed;
        state.managed_by = Some(desired.owner.clone());
        Ok(Some(ApplyReport {
            written: written.into_iter().filter(|k| plan.puts.contains_key(k)).collect(),
            deleted: plan.deletes,
            drift_corrected: plan.drift_corrected,
            state,
        }))
    }

    /// Writes one parameter: created with tags when the read found none
    /// (`found`: `None`), else overwritten; taken over (`found`:
    /// `Some(false)`, someone else's) its tags are rewritten too.
    #[allow(clippy::too_many_arguments)]
    async fn put_key(
        &self,
        location: &Location,
        desired: &Desired,
        name: &str,
        value: &Value,
        tier: ParameterTier,
        found: Option<bool>,
        from_walk: bool,
    ) -> Result<Put, StoreError> {
        let tags = found.is_none().then(|| Self::tags(location, &desired.owner));
        let mut result = self.put(name, value, tier, &desired.owner, tags).await;
        if let Err(e) = &result
            && e.as_service_error().is_some_and(|s| s.is_parameter_already_exists())
        {
            // Created by someone else since the read. A walk of the start-up
            // pass is older than a read of our own: plan again from one.
            if from_walk {
                return Ok(Put::Replan);
            }
            if desired.policy == ManagementPolicy::CreateOnly {
                return Ok(Put::Skipped);
            }
            result = self.put(name, value, tier, &desired.owner, None).await;
        }
        result.map_err(|e| StoreError::from_sdk(KIND, "PutParameter", e))?;
        if found == Some(false) {
            // Taking over a parameter someone else created: make its tags say so.
            let tagging = self
                .client
                .add_tags_to_resource()
                .resource_type(ResourceTypeForTagging::Parameter)
                .resource_id(name)
                .set_tags(Some(Self::tags(location, &desired.owner)))
                .send();
            self.gate
                .call("AddTagsToResource", tagging)
                .await
                .map_err(|e| StoreError::from_sdk(KIND, "AddTagsToResource", e))?;
        }
        Ok(Put::Written)
    }

    /// Owner recorded on each parameter under `path` (relative, flattened keys).
    async fn owners_under(&self, path: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let owners = self.describe_under(path).await?.into_iter().filter_map(|p| {
            let owner = p.description()?.strip_prefix(OWNER_PREFIX)?.to_string();
            Some((p.name?, owner))
        });
        Ok(flatten(path, owners).entries)
    }

    /// Every parameter under `path` (recursive) with its metadata, paged.
    async fn describe_under(&self, path: &str) -> Result<Vec<ParameterMetadata>, StoreError> {
        let filter = ParameterStringFilter::builder()
            .key("Path")
            .option("Recursive")
            .values(path)
            .build()
            .expect("filter has a key");
        let mut listed = Vec::new();
        let mut token = None;
        loop {
            let request = self
                .client
                .describe_parameters()
                .parameter_filters(filter.clone())
                .max_results(DESCRIBE_PAGE)
                .set_next_token(token)
                .send();
            let page = self
                .gate
                .call("DescribeParameters", request)
                .await
                .map_err(|e| StoreError::from_sdk(KIND, "DescribeParameters", e))?;
            token = page.next_token().map(String::from);
            listed.extend(page.parameters.unwrap_or_default());
            if token.is_none() {
                return Ok(listed);
            }
        }
    }

    async fn put(
        &self,
        name: &str,
        value: &Value,
        tier: ParameterTier,
        owner: &str,
        create_tags: Option<Vec<Tag>>,
    ) -> Result<
        (),
        SdkError<aws_sdk_ssm::operation::put_parameter::PutParameterError, aws_sdk_ssm::config::http::HttpResponse>,
    > {
        let (kind, key_id) = if value.secure {
            (ParameterType::SecureString, self.kms_key_id.clone())
        } else {
            (ParameterType::String, None)
        };
        let tier = match tier {
            ParameterTier::Standard => aws_sdk_ssm::types::ParameterTier::Standard,
            ParameterTier::Advanced => aws_sdk_ssm::types::ParameterTier::Advanced,
            ParameterTier::IntelligentTiering => aws_sdk_ssm::types::ParameterTier::IntelligentTiering,
        };
        let overwrite = create_tags.is_none();
        self.gate
            .call(
                "PutParameter",
                self.client
                    .put_parameter()
                    .name(name)
                    .value(&value.value)
                    .r#type(kind)
                    .set_key_id(key_id)
                    .tier(tier)
                    .description(format!("{OWNER_PREFIX}{owner}"))
                    .overwrite(overwrite)
                    .set_tags(create_tags)
                    .send(),
            )
            .await
            .map(drop)
    }

    async fn delete(&self, base: &str, keys: &BTreeSet<String>) -> Result<(), StoreError> {
        let names: Vec<String> = keys.iter().map(|k| format!("{base}/{k}")).collect();
        for batch in names.chunks(DELETE_BATCH) {
            self.gate
                .call("DeleteParameters", self.client.delete_parameters().set_names(Some(batch.to_vec())).send())
                .await
                .map_err(|e| StoreError::from_sdk(KIND, "DeleteParameters", e))?;
        }
        Ok(())
    }

    fn tags(location: &Location, owner: &str) -> Vec<Tag> {
        [
            (TAG_TENANT, location.tenant.as_str()),
            (TAG_CONFIG_TYPE, location.config_type.as_str()),
            (TAG_MANAGED_BY, owner),
        ]
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build().expect("tag has key and value"))
        .collect()
    }
}

/// `{prefix}/{tenant}/{env or _}/{configType}`: see [`NO_ENVIRONMENT`].
fn location_path(prefix: &str, location: &Location) -> String {
    let level = location.environment.as_deref().unwrap_or(NO_ENVIRONMENT);
    format!("{prefix}/{}/{level}/{}", location.tenant, location.config_type)
}

/// The rate family of an SSM operation.
fn family(operation: &str) -> &'static str {
    match operation {
        "PutParameter" | "DeleteParameters" | "AddTagsToResource" => WRITES.name,
        _ => READS.name,
    }
}

/// The location a changed parameter of this store belongs to (the inverse of
/// [`ParameterStoreBackend::base_path`] plus a key):
/// `{prefix}/{tenant}/{env or _}/{configType}/{key}`, the key possibly nested
/// (another writer's), every part a valid key.
pub fn changed_location(spec: &ParameterStoreStore, name: &str) -> Option<Location> {
    let segments: Vec<&str> = strip_path(name, &spec.path_prefix)?.split('/').collect();
    let [tenant, level, config_type, ref key @ ..] = segments[..] else { return None };
    let environment = (level != NO_ENVIRONMENT).then_some(level);
    let mut parts = [tenant, config_type].into_iter().chain(environment).chain(key.iter().copied());
    (!key.is_empty() && parts.all(is_valid_key)).then(|| Location {
        tenant: tenant.into(),
        environment: environment.map(str::to_string),
        config_type: config_type.into(),
    })
}

/// Whether a parameter lies under one of the store's shared paths.
pub fn is_shared(spec: &ParameterStoreStore, name: &str) -> bool {
    spec.shared_paths.iter().any(|shared| strip_path(name, shared).is_some())
}

/// Parameters keyed relative to a path, and the names left out.
#[derive(Debug, PartialEq, Eq)]
struct Flat<V> {
    entries: BTreeMap<String, V>,
    /// Parameters that flatten to a key another parameter under the path
    /// holds (`a.b` and `a/b`), left out.
    shadowed: BTreeSet<String>,
}

/// Parameters by full name keyed relative to `path` (names outside it are
/// dropped). When several flatten to one key, the one with the fewest levels
/// wins — a location's own key is a direct child, so it always wins over
/// another writer's nested parameter — then the lexically first: never the
/// read order, so a key never flips between reads (which made the controller
/// rewrite its own key on every reconcile, each write's event asking for the
/// next).
fn flatten<V>(path: &str, parameters: impl IntoIterator<Item = (String, V)>) -> Flat<V> {
    let mut chosen: BTreeMap<String, (String, V)> = BTreeMap::new();
    let mut shadowed = BTreeSet::new();
    for (name, value) in parameters {
        let Some(key) = relative_key(path, &name) else { continue };
        match chosen.get(&key) {
            Some((held, _)) if rank(held) <= rank(&name) => {
                shadowed.insert(name);
            }
            _ => {
                if let Some((displaced, _)) = chosen.insert(key, (name, value)) {
                    shadowed.insert(displaced);
                }
            }
        }
    }
    Flat { entries: chosen.into_iter().map(|(key, (_, value))| (key, value)).collect(), shadowed }
}

/// `name` relative to `path`, flattened with `.`; `None` when outside it.
fn relative_key(path: &str, name: &str) -> Option<String> {
    let rest = name.strip_prefix(path)?.strip_prefix('/')?;
    (!rest.is_empty()).then(|| rest.replace('/', "."))
}

/// Managed keys and their owner, from per-parameter owners. Several owners can
/// only come from a race or a hand edit; the lexically first one is reported.
fn ownership(owners: &BTreeMap<String, String>) -> (Option<String>, BTreeSet<String>) {
    let Some(owner) = owners.values().min().cloned() else { return (None, BTreeSet::new()) };
    let managed = owners.iter().filter(|(_, o)| **o == owner).map(|(k, _)| k.clone()).collect();
    (Some(owner), managed)
}

#[async_trait::async_trait]
impl Backend for ParameterStoreBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn describe(&self, location: &Location) -> String {
        self.base_path(location)
    }

    async fn read(&self, location: &Location) -> Result<StoreState, StoreError> {
        let base = self.base_path(location);
        let Flat { entries, shadowed } = self.values_under(&base).await?;
        let (managed_by, managed) = ownership(&self.owners_under(&base).await?);
        Ok(StoreState { entries, managed, managed_by, version: 0, shadowed })
    }

    fn validate(&self, location: &Location, desired: &Desired) -> Result<(), StoreError> {
        self.tiers(location, desired).map(drop)
    }

    async fn apply(&self, location: &Location, desired: &Desired) -> Result<ApplyReport, StoreError> {
        let base = self.base_path(location);
        // Every limit is checked before the first call: nothing half-written.
        let tiers = self.tiers(location, desired)?;
        let tenant_path = self.tenant_path(&location.tenant);
        let walked = self
            .walks
            .under(&self.store, &tenant_path, &base, desired.created, || self.parameters_under(&tenant_path))
            .await;
        if let Some(parameters) = walked {
            match self.apply_against(location, desired, &base, &tiers, flatten(&base, parameters), true).await? {
                Some(report) => return Ok(report),
                None => debug!(path = base, "a parameter appeared after the start-up walk; reading the path"),
            }
        }
        let entries = self.values_under(&base).await?;
        let report = self.apply_against(location, desired, &base, &tiers, entries, false).await?;
        Ok(report.expect("an apply planned against its own read always completes"))
    }

    async fn delete_managed(&self, location: &Location, owner: &str) -> Result<BTreeSet<String>, StoreError> {
        let base = self.base_path(location);
        let owners = self.owners_under(&base).await?;
        let ours: BTreeSet<String> = owners.into_iter().filter(|(_, o)| o == owner).map(|(k, _)| k).collect();
        self.delete(&base, &ours).await?;
        Ok(ours)
    }

    fn precedence(&self) -> u8 {
        // Hierarchical, rarely changing data: below DynamoDB's overrides.
        1
    }

    fn shared_paths(&self) -> Option<&dyn SharedPaths> {
        Some(self)
    }

    fn bulk_read(&self) -> Option<&dyn BulkRead> {
        Some(self)
    }
}

/// One recursive walk of the tenant's path, split into its locations as a
/// walk of each location's own path would find them.
#[async_trait::async_trait]
impl BulkRead for ParameterStoreBackend {
    async fn read_tenant(&self, tenant: &str, locations: &[Location]) -> Result<Vec<StoreState>, StoreError> {
        let parameters = self.parameters_under(&self.tenant_path(tenant)).await?;
        Ok(locations
            .iter()
            .map(|location| {
                let Flat { entries, shadowed } = flatten(&self.base_path(location), parameters.iter().cloned());
                StoreState { entries, shadowed, ..Default::default() }
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl SharedPaths for ParameterStoreBackend {
    async fn read_shared(&self, path: &str) -> Result<BTreeMap<String, Value>, StoreError> {
        Ok(self.values_under(path.trim_end_matches('/')).await?.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::paths::is_at_or_under;

    /// Locations whose names could be confused in a layout where the
    /// environment level is optional (issue: environments leak inside a tenant).
    fn confusable() -> Vec<Location> {
        let at = |env: Option<&str>, config_type: &str| Location {
            tenant: "zeta".into(),
            environment: env.map(String::from),
            config_type: config_type.into(),
        };
        vec![
            at(None, "prod"),
            at(Some("prod"), "payments"),
            at(Some("prod"), "prod"),
            at(None, "payments"),
            at(None, "_"),
            at(Some("payments"), "_"),
            at(None, "prod.payments"),
        ]
    }

    #[test]
    fn no_location_path_lies_at_or_under_another() {
        let spec: ParameterStoreStore = serde_json::from_value(serde_json::json!({"pathPrefix": "/p"})).unwrap();
        let locations = confusable();
        for a in &locations {
            let path = location_path("/p", a);
            assert_eq!(changed_location(&spec, &format!("{path}/k")).as_ref(), Some(a), "{path}");
            assert_eq!(changed_location(&spec, &format!("{path}/k/nested")).as_ref(), Some(a), "{path}");
            for b in locations.iter().filter(|b| *b != a) {
                let other = location_path("/p", b);
                assert!(!is_at_or_under(&path, &other), "{path} is readable from {other}");
            }
        }
    }

    #[test]
    fn colliding_names_flatten_the_same_way_whatever_the_read_order() {
        let value = |v: &str| Value { value: v.into(), secure: false };
        let own = ("/p/acme/pay/a.b".to_string(), value("mine"));
        let nested = ("/p/acme/pay/a/b".to_string(), value("theirs"));
        let other = ("/p/acme/pay/c".to_string(), value("c"));
        for order in
            [vec![own.clone(), nested.clone(), other.clone()], vec![nested.clone(), other.clone(), own.clone()]]
        {
            let flat = flatten("/p/acme/pay", order);
            assert_eq!(flat.entries["a.b"].value, "mine", "the direct child (the object's own key) wins");
            assert_eq!(flat.shadowed, BTreeSet::from(["/p/acme/pay/a/b".to_string()]));
            assert_eq!(flat.entries.len(), 2);
        }
        // Two nested names of the same depth: the lexically first, in any order.
        let (x, y) = (("/p/t/a/b.c".to_string(), value("1")), ("/p/t/a.b/c".to_string(), value("2")));
        assert_eq!(flatten("/p/t", [x.clone(), y.clone()]), flatten("/p/t", [y, x]));
    }

    #[test]
    fn relative_keys_flatten_nested_paths() {
        assert_eq!(relative_key("/p/acme/pay", "/p/acme/pay/retry"), Some("retry".into()));
        assert_eq!(relative_key("/p/acme/pay", "/p/acme/pay/db/host"), Some("db.host".into()));
        assert_eq!(relative_key("/p/acme/pay", "/p/acme/payments/x"), None, "a sibling path is not ours");
        assert_eq!(relative_key("/p/acme/pay", "/p/acme/pay"), None);
    }

    #[test]
    fn ownership_picks_one_owner_and_its_keys() {
        let owners = BTreeMap::from([
            ("a".to_string(), "ns/x".to_string()),
            ("b".to_string(), "ns/x".to_string()),
            ("c".to_string(), "other/y".to_string()),
        ]);
        let (owner, managed) = ownership(&owners);
        assert_eq!(owner.as_deref(), Some("ns/x"));
        assert_eq!(managed.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(ownership(&BTreeMap::new()), (None, BTreeSet::new()));
    }
}
