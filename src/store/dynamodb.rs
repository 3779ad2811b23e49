//! DynamoDB strategy (DESIGN.md §4): one item per `(tenant, configType)` with
//! `pk=TENANT#{tenant}`, `sk=CONFIG#{configType}[#ENV#{env}]`, `data` (key →
//! string), `managedKeys`, `managedBy`, `version`, `updatedAt`.
//!
//! Writes are `UpdateItem`s on managed keys only (`data.#k` paths), so keys other
//! writers put into `data` survive, guarded by a condition on `version`: a lost
//! race re-reads and re-plans instead of overwriting.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_dynamodb::{Client, error::SdkError, types::AttributeValue};

use std::sync::Arc;

use super::{
    ApplyReport, Backend, BackendContext, BulkRead, CallGate, Desired, Entry, LimitError, Location, StoreError,
    StoreRef, StoreState, Value,
    change::{StoreChange, Target},
    limits::DYNAMODB_ITEM_MAX_BYTES,
    plan::{Plan, plan},
    rate_limit::RateFamily,
};
use crate::api::{ConfigStoreSpec, DynamoDbStore, StoreBackend, is_valid_key};

const KIND: &str = "DynamoDB";

/// The registry's entry for this kind.
pub const ENTRY: Entry = Entry { kind: KIND, build, locate, rate_families: &[CALLS] };

/// Every DynamoDB call (on-demand tables scale: unlimited by default).
pub const CALLS: RateFamily = RateFamily { name: "dynamodb", default_per_second: None, counts: "every DynamoDB call" };

fn build(_store: &str, spec: &ConfigStoreSpec, ctx: &BackendContext) -> Option<Arc<dyn Backend>> {
    match spec.backend()? {
        StoreBackend::DynamoDb(spec) => Some(Arc::new(DynamoDbBackend::new(spec, ctx))),
        _ => None,
    }
}

/// A changed item of a DynamoDB store lands at the location its key encodes.
fn locate(change: &StoreChange, store: StoreRef<'_>) -> Vec<Target> {
    let (StoreChange::Item { table, keys, .. }, Some(StoreBackend::DynamoDb(spec))) = (change, store.spec.backend())
    else {
        return Vec::new();
    };
    let location = changed_location(spec, table.as_deref(), keys);
    location.map(|location| Target::Tenant { store: store.name.into(), location }).into_iter().collect()
}
/// Optimistic-concurrency attempts before giving up (the reconcile retries later).
const MAX_ATTEMPTS: u32 = 5;

const DATA: &str = "data";
const MANAGED_KEYS: &str = "managedKeys";
const MANAGED_BY: &str = "managedBy";
const VERSION: &str = "version";
const UPDATED_AT: &str = "updatedAt";

pub struct DynamoDbBackend {
    client: Client,
    table: String,
    partition_key: String,
    sort_key: String,
    gate: CallGate,
}

/// The item as read, with what a conditional update needs to know about it.
struct ItemRead {
    state: StoreState,
    raw: Option<HashMap<String, AttributeValue>>,
}

impl DynamoDbBackend {
    /// Refuses an item that would exceed DynamoDB's size limit, before writing.
    fn check_size(
        &self,
        location: &Location,
        raw: Option<&HashMap<String, AttributeValue>>,
        data: &BTreeMap<String, Value>,
        plan: &Plan,
        desired: &Desired,
    ) -> Result<(), StoreError> {
        let mut projected = raw.cloned().unwrap_or_else(|| self.key_attributes(location));
        projected.insert(DATA.into(), AttributeValue::M(data_map(data)));
        projected.insert(MANAGED_KEYS.into(), AttributeValue::Ss(plan.managed.iter().cloned().collect()));
        projected.insert(MANAGED_BY.into(), AttributeValue::S(desired.owner.clone()));
        projected.insert(VERSION.into(), AttributeValue::N(u64::MAX.to_string()));
        projected.insert(UPDATED_AT.into(), AttributeValue::S(now_rfc3339()));
        let size = item_size(&projected);
        if size > DYNAMODB_ITEM_MAX_BYTES {
            return Err(LimitError::ItemTooLarge { location: self.describe(location), size }.into());
        }
        Ok(())
    }

    /// The update that carries out `plan` on managed keys only (the whole
    /// `data` map only when the item has none), and its version condition.
    fn update(
        &self,
        raw: Option<&HashMap<String, AttributeValue>>,
        state: &StoreState,
        plan: &Plan,
        data: &BTreeMap<String, Value>,
        desired: &Desired,
    ) -> (Update, String) {
        let mut u = Update::default();
        let data_name = u.name(DATA);
        if matches!(raw.and_then(|r| r.get(DATA)), Some(AttributeValue::M(_))) {
            for (k, v) in &plan.puts {
                let (n, val) = (u.name(k), u.value(AttributeValue::S(v.value.clone())));
                u.set.push(format!("{data_name}.{n} = {val}"));
            }
            for k in &plan.deletes {
                let n = u.name(k);
                u.remove.push(format!("{data_name}.{n}"));
            }
        } else {
            let val = u.value(AttributeValue::M(data_map(data)));
            u.set.push(format!("{data_name} = {val}"));
        }
        let managed_name = u.name(MANAGED_KEYS);
        if plan.managed.is_empty() {
            u.remove.push(managed_name); // string sets cannot be empty
        } else {
            let val = u.value(AttributeValue::Ss(plan.managed.iter().cloned().collect()));
            u.set.push(format!("{managed_name} = {val}"));
        }
        u.set_attr(MANAGED_BY, AttributeValue::S(desired.owner.clone()));
        u.set_attr(VERSION, AttributeValue::N((state.version + 1).to_string()));
        u.set_attr(UPDATED_AT, AttributeValue::S(now_rfc3339()));
        let condition = u.version_condition(raw.is_some(), state.version, &self.partition_key);
        (u, condition)
    }
    pub fn new(spec: &DynamoDbStore, ctx: &BackendContext) -> Self {
        DynamoDbBackend {
            client: Client::from_conf(super::service_config!(aws_sdk_dynamodb, ctx, spec, "tenant-config-dynamodb")),
            table: spec.table_name.clone(),
            partition_key: spec.partition_key.clone(),
            sort_key: spec.sort_key.clone(),
            gate: ctx.gate(KIND, |_| CALLS.name),
        }
    }

    /// `(pk, sk)` of a location.
    pub fn item_key(location: &Location) -> (String, String) {
        let sk = match &location.environment {
            Some(env) => format!("CONFIG#{}#ENV#{env}", location.config_type),
            None => format!("CONFIG#{}", location.config_type),
        };
        (format!("TENANT#{}", location.tenant), sk)
    }

    fn key_attributes(&self, location: &Location) -> HashMap<String, AttributeValue> {
        let (pk, sk) = Self::item_key(location);
        HashMap::from([
            (self.partition_key.clone(), AttributeValue::S(pk)),
            (self.sort_key.clone(), AttributeValue::S(sk)),
        ])
    }

    /// An UpdateItem of the location's item, guarded by `condition`.
    fn conditional_update(
        &self,
        location: &Location,
        update: Update,
        condition: String,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key_attributes(location)))
            .update_expression(update.expression())
            .condition_expression(condition)
            .set_expression_attribute_names(Some(update.names))
            .set_expression_attribute_values((!update.values.is_empty()).then_some(update.values))
    }

    async fn read_item(&self, location: &Location) -> Result<ItemRead, StoreError> {
        let out = self
            .gate
            .call(
                "GetItem",
                self.client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(self.key_attributes(location)))
                    .consistent_read(true)
                    .send(),
            )
            .await
            .map_err(|e| StoreError::from_sdk(KIND, "GetItem", e))?;
        let Some(item) = out.item else { return Ok(ItemRead { state: StoreState::default(), raw: None }) };
        Ok(ItemRead { state: state_of(&item), raw: Some(item) })
    }
}

/// What an item says: its data, ownership and version.
fn state_of(item: &HashMap<String, AttributeValue>) -> StoreState {
    let entries = match item.get(DATA) {
        Some(AttributeValue::M(data)) => {
            data.iter().filter_map(|(k, v)| Some((k.clone(), Value { value: scalar(v)?, secure: false }))).collect()
        }
        _ => BTreeMap::new(),
    };
    let managed = match item.get(MANAGED_KEYS) {
        Some(AttributeValue::Ss(keys)) => keys.iter().cloned().collect(),
        _ => BTreeSet::new(),
    };
    StoreState {
        entries,
        managed,
        managed_by: item.get(MANAGED_BY).and_then(|v| v.as_s().ok()).cloned(),
        version: item.get(VERSION).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).unwrap_or(0),
        shadowed: BTreeSet::new(),
    }
}

/// One Query of the tenant's partition (strongly consistent, paginated, only
/// the attributes a state needs), instead of one GetItem per location.
#[async_trait::async_trait]
impl BulkRead for DynamoDbBackend {
    async fn read_tenant(&self, tenant: &str, locations: &[Location]) -> Result<Vec<StoreState>, StoreError> {
        let names = HashMap::from([
            ("#pk".to_string(), self.partition_key.clone()),
            ("#sk".to_string(), self.sort_key.clone()),
            ("#d".to_string(), DATA.to_string()),
            ("#m".to_string(), MANAGED_KEYS.to_string()),
            ("#b".to_string(), MANAGED_BY.to_string()),
            ("#v".to_string(), VERSION.to_string()),
        ]);
        let partition = AttributeValue::S(format!("TENANT#{tenant}"));
        let mut items: HashMap<String, StoreState> = HashMap::new();
        let mut start = None;
        loop {
            let page = self
                .gate
                .call(
                    "Query",
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("#pk = :pk")
                        .projection_expression("#sk, #d, #m, #b, #v")
                        .set_expression_attribute_names(Some(names.clone()))
                        .expression_attribute_values(":pk", partition.clone())
                        .consistent_read(true)
                        .set_exclusive_start_key(start)
                        .send(),
                )
                .await
                .map_err(|e| StoreError::from_sdk(KIND, "Query", e))?;
            for item in page.items() {
                if let Some(AttributeValue::S(sk)) = item.get(&self.sort_key) {
                    items.insert(sk.clone(), state_of(item));
                }
            }
            start = page.last_evaluated_key().filter(|key| !key.is_empty()).cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(locations.iter().map(|l| items.get(&Self::item_key(l).1).cloned().unwrap_or_default()).collect())
    }
}

/// The location an item key encodes (the inverse of [`DynamoDbBackend::item_key`]):
/// `TENANT#t` / `CONFIG#c[#ENV#e]`, every part a valid key.
pub fn location_of_key(pk: &str, sk: &str) -> Option<Location> {
    let tenant = pk.strip_prefix("TENANT#")?;
    let config = sk.strip_prefix("CONFIG#")?;
    let (config_type, environment) = match config.split_once("#ENV#") {
        Some((config_type, env)) => (config_type, Some(env)),
        None => (config, None),
    };
    [tenant, config_type].into_iter().chain(environment).all(is_valid_key).then(|| Location {
        tenant: tenant.into(),
        environment: environment.map(str::to_string),
        config_type: config_type.into(),
    })
}

/// The location a changed item of this store holds, if it is one of ours. A
/// record that names another table is not this store's.
pub fn changed_location(spec: &DynamoDbStore, table: Option<&str>, keys: &[(String, String)]) -> Option<Location> {
    if table.is_some_and(|t| t != spec.table_name) {
        return None;
    }
    let get = |attribute: &str| keys.iter().find(|(a, _)| a == attribute).map(|(_, v)| v.as_str());
    location_of_key(get(&spec.partition_key)?, get(&spec.sort_key)?)
}

/// `None` when the error is a lost optimistic-concurrency race (re-read and retry).
fn lost_race_or<E, R>(err: SdkError<E, R>) -> Option<SdkError<E, R>>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    match &err {
        SdkError::ServiceError(e) if e.err().code() == Some("ConditionalCheckFailedException") => None,
        _ => Some(err),
    }
}

/// Other writers may store numbers or booleans; they project as strings.
fn scalar(v: &AttributeValue) -> Option<String> {
    match v {
        AttributeValue::S(s) => Some(s.clone()),
        AttributeValue::N(n) => Some(n.clone()),
        AttributeValue::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A conditional UpdateItem under construction.
#[derive(Default)]
struct Update {
    set: Vec<String>,
    remove: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Update {
    fn name(&mut self, name: &str) -> String {
        let placeholder = format!("#n{}", self.names.len());
        self.names.insert(placeholder.clone(), name.to_string());
        placeholder
    }
    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }
    fn set_attr(&mut self, attr: &str, value: AttributeValue) {
        let (n, v) = (self.name(attr), self.value(value));
        self.set.push(format!("{n} = {v}"));
    }
    /// The optimistic-concurrency guard: the item is as we read it.
    fn version_condition(&mut self, exists: bool, version: u64, partition_key: &str) -> String {
        if !exists {
            let pk = self.name(partition_key);
            return format!("attribute_not_exists({pk})");
        }
        let v = self.name(VERSION);
        if version == 0 {
            format!("attribute_not_exists({v})")
        } else {
            let expected = self.value(AttributeValue::N(version.to_string()));
            format!("{v} = {expected}")
        }
    }
    fn expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        parts.join(" ")
    }
}

/// Size DynamoDB charges an attribute value, per its documented rules (numbers
/// rounded up to their worst case).
fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => n.len().div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(set) | AttributeValue::Ns(set) => set.iter().map(String::len).sum(),
        AttributeValue::Bs(set) => set.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::M(map) => 3 + map.iter().map(|(k, v)| k.len() + value_size(v) + 1).sum::<usize>(),
        AttributeValue::L(list) => 3 + list.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        _ => 0,
    }
}

/// The item's `data` as it will be after `plan`.
fn merged(state: &StoreState, plan: &Plan) -> BTreeMap<String, Value> {
    let mut data = state.entries.clone();
    for k in &plan.deletes {
        data.remove(k);
    }
    data.extend(plan.puts.iter().map(|(k, v)| (k.clone(), v.clone())));
    data
}

fn data_map(data: &BTreeMap<String, Value>) -> HashMap<String, AttributeValue> {
    data.iter().map(|(k, v)| (k.clone(), AttributeValue::S(v.value.clone()))).collect()
}

/// Size of a whole item.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

#[async_trait::async_trait]
impl Backend for DynamoDbBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn describe(&self, location: &Location) -> String {
        let (pk, sk) = Self::item_key(location);
        format!("{pk}/{sk}")
    }

    async fn read(&self, location: &Location) -> Result<StoreState, StoreError> {
        Ok(self.read_item(location).await?.state)
    }

    fn validate(&self, location: &Location, desired: &Desired) -> Result<(), StoreError> {
        if let Some((key, _)) = desired.entries.iter().find(|(_, v)| v.secure) {
            return Err(LimitError::SecureNotSupported {
                key: key.clone(),
                store: self.table.clone(),
                why: "is DynamoDB (secure entries need a Parameter Store with a KMS key)",
            }
            .into());
        }
        // The item holds at least the desired entries and our bookkeeping.
        let mut item = self.key_attributes(location);
        let data = desired.entries.iter().map(|(k, v)| (k.clone(), AttributeValue::S(v.value.clone()))).collect();
        item.insert(DATA.into(), AttributeValue::M(data));
        item.insert(MANAGED_KEYS.into(), AttributeValue::Ss(desired.entries.keys().cloned().collect()));
        item.insert(MANAGED_BY.into(), AttributeValue::S(desired.owner.clone()));
        let size = item_size(&item);
        if size > DYNAMODB_ITEM_MAX_BYTES {
            return Err(LimitError::ItemTooLarge { location: self.describe(location), size }.into());
        }
        Ok(())
    }

    async fn apply(&self, location: &Location, desired: &Desired) -> Result<ApplyReport, StoreError> {
        self.validate(location, desired)?;
        if desired.entries.is_empty() {
            // Nothing of this object belongs here any more (its keys moved to
            // another store): release the item as a deletion does, instead of
            // leaving an item that claims a location its owner no longer uses.
            let (deleted, state) = self.release(location, &desired.owner).await?;
            return Ok(ApplyReport { deleted, state, ..Default::default() });
        }
        // A first write to a location that most likely has no item yet is
        // tried as a create (guarded by attribute_not_exists) without reading
        // first. Only when there is something to write: a no-op planned
        // against an assumed-empty item would report a state never read.
        let mut assume_absent = desired.expect_absent && !desired.entries.is_empty();
        for attempt in 1..=MAX_ATTEMPTS {
            let ItemRead { state, raw } = if std::mem::take(&mut assume_absent) {
                ItemRead { state: StoreState::default(), raw: None }
            } else {
                self.read_item(location).await?
            };
            let plan = plan(&state, desired)
                .map_err(|e| StoreError::Conflict { location: self.describe(location), owner: e.owner })?;
            if plan.is_noop() {
                return Ok(ApplyReport { state, ..Default::default() });
            }

            let data = merged(&state, &plan);
            self.check_size(location, raw.as_ref(), &data, &plan, desired)?;
            let (u, condition) = self.update(raw.as_ref(), &state, &plan, &data, desired);
            let result = self.gate.call("UpdateItem", self.conditional_update(location, u, condition).send()).await;
            match result.map_err(lost_race_or) {
                Ok(_) => {
                    let new_state = StoreState {
                        entries: data,
                        managed: plan.managed,
                        managed_by: Some(desired.owner.clone()),
                        version: state.version + 1,
                        shadowed: BTreeSet::new(),
                    };
                    return Ok(ApplyReport {
                        written: plan.puts.into_keys().collect(),
                        deleted: plan.deletes,
                        drift_corrected: plan.drift_corrected,
                        state: new_state,
                    });
                }
                Err(None) => {
                    tracing::debug!(attempt, location = %self.describe(location), "lost a concurrent update; re-reading");
                    continue;
                }
                Err(Some(e)) => return Err(StoreError::from_sdk(KIND, "UpdateItem", e)),
            }
        }
        Err(StoreError::Contended { location: self.describe(location), attempts: MAX_ATTEMPTS })
    }

    async fn delete_managed(&self, location: &Location, owner: &str) -> Result<BTreeSet<String>, StoreError> {
        Ok(self.release(location, owner).await?.0)
    }

    fn precedence(&self) -> u8 {
        // High-frequency overrides: above Parameter Store's data.
        2
    }

    fn bulk_read(&self) -> Option<&dyn BulkRead> {
        Some(self)
    }
}

impl DynamoDbBackend {
    /// Removes `owner`'s managed keys and its claim (the whole item when no
    /// other writer's key remains). Returns the deleted keys and what the
    /// location holds afterwards. A retried delete whose first attempt was
    /// applied finds the item changed, re-reads and sees nothing of ours.
    async fn release(&self, location: &Location, owner: &str) -> Result<(BTreeSet<String>, StoreState), StoreError> {
        for _ in 1..=MAX_ATTEMPTS {
            let ItemRead { state, raw } = self.read_item(location).await?;
            if raw.is_none() || state.managed_by.as_deref() != Some(owner) {
                return Ok((BTreeSet::new(), state)); // nothing of ours here
            }
            let deleted: BTreeSet<String> =
                state.managed.iter().filter(|k| state.entries.contains_key(*k)).cloned().collect();
            let others_remain = state.entries.keys().any(|k| !state.managed.contains(k));
            let mut u = Update::default();
            let condition = u.version_condition(true, state.version, &self.partition_key);
            let result = if others_remain {
                // Keep the item for the other writers; drop our keys and our claim.
                let data_name = u.name(DATA);
                for k in &deleted {
                    let n = u.name(k);
                    u.remove.push(format!("{data_name}.{n}"));
                }
                for attr in [MANAGED_KEYS, MANAGED_BY] {
                    let n = u.name(attr);
                    u.remove.push(n);
                }
                u.set_attr(VERSION, AttributeValue::N((state.version + 1).to_string()));
                u.set_attr(UPDATED_AT, AttributeValue::S(now_rfc3339()));
                self.gate
                    .call("UpdateItem", self.conditional_update(location, u, condition).send())
                    .await
                    .map(drop)
                    .map_err(|e| lost_race_or(e).map(|e| StoreError::from_sdk(KIND, "UpdateItem", e)))
            } else {
                // Only our keys were there: delete the item, leaving no orphan.
                let request = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(self.key_attributes(location)))
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(u.names))
                    .set_expression_attribute_values((!u.values.is_empty()).then_some(u.values));
                self.gate
                    .call("DeleteItem", request.send())
                    .await
                    .map(drop)
                    .map_err(|e| lost_race_or(e).map(|e| StoreError::from_sdk(KIND, "DeleteItem", e)))
            };
            match result {
                Ok(()) => {
                    let mut remaining = state;
                    remaining.entries.retain(|k, _| !deleted.contains(k));
                    remaining.managed.clear();
                    remaining.managed_by = None;
                    return Ok((deleted, remaining));
                }
                Err(None) => continue,
                Err(Some(e)) => return Err(e),
            }
        }
        Err(StoreError::Contended { location: self.describe(location), attempts: MAX_ATTEMPTS })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_follow_the_design() {
        let mut loc = Location { tenant: "acme".into(), environment: None, config_type: "payments".into() };
        assert_eq!(DynamoDbBackend::item_key(&loc), ("TENANT#acme".into(), "CONFIG#payments".into()));
        loc.environment = Some("prod".into());
        assert_eq!(DynamoDbBackend::item_key(&loc).1, "CONFIG#payments#ENV#prod");
    }

    /// An environment is never read as a configType (or the reverse): every
    /// location has its own sort key, read exactly (no prefix queries), and
    /// each sort key decodes to the location that wrote it.
    #[test]
    fn each_location_has_its_own_sort_key() {
        let spec: DynamoDbStore = serde_json::from_value(serde_json::json!({"tableName": "t"})).unwrap();
        let at = |env: Option<&str>, config_type: &str| Location {
            tenant: "zeta".into(),
            environment: env.map(String::from),
            config_type: config_type.into(),
        };
        let locations = [
            at(None, "prod"),
            at(Some("prod"), "payments"),
            at(Some("payments"), "prod"),
            at(None, "ENV"),
            at(Some("ENV"), "ENV"),
        ];
        let keys: BTreeSet<_> = locations.iter().map(DynamoDbBackend::item_key).collect();
        assert_eq!(keys.len(), locations.len());
        for location in &locations {
            let (pk, sk) = DynamoDbBackend::item_key(location);
            let keys = [("pk".to_string(), pk), ("sk".to_string(), sk)];
            assert_eq!(changed_location(&spec, None, &keys).as_ref(), Some(location));
        }
    }

    #[test]
    fn item_size_counts_names_and_values() {
        let item = HashMap::from([
            ("pk".to_string(), AttributeValue::S("TENANT#a".into())), // 2 + 8
            ("data".to_string(), AttributeValue::M(HashMap::from([("k".to_string(), AttributeValue::S("vv".into()))]))), // 4 + 3 + (1+2+1)
            ("version".to_string(), AttributeValue::N("12".into())), // 7 + 2
        ]);
        assert_eq!(item_size(&item), 10 + 11 + 9);
    }
}
