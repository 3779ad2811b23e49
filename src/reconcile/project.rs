//! The reconcile's `project` step: the ConfigMap (and Secret) a TenantConfig
//! owns, written by server-side apply when their content changed; what they
//! now hold, for refresh and rollout; their deletion.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::reflector::ObjectRef,
};

use super::{
    context::Context,
    error::Error,
    plan::{Existing, ReconcilePlan, SecretUnder},
    render::{self, Rendered},
};
use crate::{
    api::{
        TenantConfig,
        names::{DIGEST_ANNOTATION, FIELD_MANAGER, MANAGED_BY_LABEL},
    },
    workloads::{
        decide::{self, Seen},
        refs::{Kind, Reference},
    },
};

/// The metadata the API server returned for what [`apply`] wrote.
#[derive(Default)]
pub struct Applied {
    config_map: Option<ObjectMeta>,
    secret: Option<ObjectMeta>,
}

impl Applied {
    pub fn wrote_anything(&self) -> bool {
        self.config_map.is_some() || self.secret.is_some()
    }
}

/// Writes the ConfigMap (and Secret) unless they already hold `rendered`.
pub async fn apply(
    ctx: &Context,
    tc: &TenantConfig,
    plan: &ReconcilePlan<'_>,
    existing: &Existing,
    rendered: &Rendered,
) -> Result<Applied, Error> {
    let ns = tc.namespace().ok_or(Error::MissingNamespace)?;
    let owner = tc.controller_owner_ref(&()).expect("TenantConfig has a name and uid");
    let tenant = &plan.location.tenant;
    let mut applied = Applied::default();
    // Up to date only if both the digest and the data match: a hand edit of the
    // data that leaves the annotation alone must still be reverted.
    let current = |annotations: &BTreeMap<String, String>| annotations.get(DIGEST_ANNOTATION) == Some(&rendered.digest);
    let cm_up_to_date = existing.config_map.as_ref().is_some_and(|cm| {
        current(cm.annotations())
            && cm.data.as_ref().map_or(rendered.config_map.is_empty(), |d| *d == rendered.config_map)
    });
    if !cm_up_to_date {
        let name = tc.config_map_name();
        let cm = render::config_map(name, &ns, tenant, rendered, owner.clone());
        let writing = ctx.ledgers.own_writes.writing(&ns, name);
        let api = Api::<ConfigMap>::namespaced(ctx.kube.client.clone(), &ns);
        let written = write_owned(&api, &cm, existing.config_map.as_ref().map(|c| &c.metadata)).await?;
        ctx.ledgers.own_writes.wrote(&written);
        drop(writing);
        applied.config_map = Some(written.metadata);
    }
    if let Some(name) = &plan.secret_name {
        let secret_up_to_date = existing.own_secret().is_some_and(|s| {
            let same_data = match &s.data {
                Some(data) => {
                    data.len() == rendered.secret.len()
                        && data.iter().zip(&rendered.secret).all(|((k, v), (rk, rv))| k == rk && v.0 == rv.as_bytes())
                }
                None => rendered.secret.is_empty(),
            };
            current(s.annotations()) && same_data
        });
        if !secret_up_to_date {
            let secret = render::secret(name, &ns, tenant, rendered, owner);
            let api = Api::<Secret>::namespaced(ctx.kube.client.clone(), &ns);
            let written = write_owned(&api, &secret, existing.own_secret().map(|s| &s.metadata)).await?;
            applied.secret = Some(written.metadata);
        }
    }
    Ok(applied)
}

/// Writes a projected ConfigMap or Secret without ever taking over another
/// writer's object, whatever happened since `known` (what the reconcile read
/// and found ours, or absent) was read: absent → created whole, which fails
/// (409) if someone created one since; ours → server-side applied with its uid
/// as a precondition, which fails (422, "metadata.uid: field is immutable") if
/// it was replaced since. A failure is retried: the retry reads again and the
/// ownership check decides. Keys the apply cannot remove because it does not
/// own them alone (those of the create, or another writer's additions) are
/// removed by a merge patch under the same precondition.
pub async fn write_owned<K>(api: &Api<K>, desired: &K, known: Option<&ObjectMeta>) -> Result<K, kube::Error>
where
    K: Resource + DataKeys + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let Some(uid) = known.and_then(|meta| meta.uid.clone()) else {
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
        return api.create(&params, desired).await;
    };
    let name = desired.name_any();
    let mut applied = desired.clone();
    applied.meta_mut().uid = Some(uid.clone());
    let written = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&applied)).await?;
    let wanted = desired.data_keys();
    let extra: serde_json::Map<String, serde_json::Value> =
        written.data_keys().into_iter().filter(|k| !wanted.contains(k)).map(|k| (k, serde_json::Value::Null)).collect();
    if extra.is_empty() {
        return Ok(written);
    }
    let remove = serde_json::json!({ "metadata": { "uid": uid }, "data": extra });
    api.patch(
        &name,
        &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() },
        &Patch::Merge(&remove),
    )
    .await
}

/// Why the API server refused a projection write for good: a 4xx other than
/// the ones a retry can get past (the object changed or appeared meanwhile —
/// 409, or 422 on the uid precondition of [`write_owned`] —, throttling,
/// timeouts, a namespace or object gone). Such a write is a refusal with a
/// condition, not a retry loop (which held the object's event messages and,
/// with enough edits, stopped event delivery for every tenant).
pub fn refused(error: &Error) -> Option<String> {
    let Error::Kube(kube::Error::Api(status)) = error else { return None };
    let race = status.code == 422 && status.message.contains("metadata.uid");
    let retryable = matches!(status.code, 404 | 408 | 409 | 429) || race;
    ((400..500).contains(&status.code) && !retryable)
        .then(|| format!("the API server refuses the projection ({}): {}", status.code, status.message))
}

/// The keys of a projected object's `data`.
pub trait DataKeys {
    fn data_keys(&self) -> BTreeSet<String>;
}

impl DataKeys for ConfigMap {
    fn data_keys(&self) -> BTreeSet<String> {
        self.data.iter().flat_map(|d| d.keys().cloned()).collect()
    }
}

impl DataKeys for Secret {
    fn data_keys(&self) -> BTreeSet<String> {
        self.data
            .iter()
            .flat_map(|d| d.keys().cloned())
            .chain(self.string_data.iter().flat_map(|d| d.keys().cloned()))
            .collect()
    }
}

/// What the projection now holds, for refresh and rollout: each object's
/// content digest and when this controller last changed its content.
pub fn projected(
    tc: &TenantConfig,
    plan: &ReconcilePlan<'_>,
    existing: &Existing,
    rendered: &Rendered,
    applied: &Applied,
) -> Vec<(Reference, Seen)> {
    let seen = |data, written: Option<&ObjectMeta>, before: Option<&ObjectMeta>| Seen {
        digest: decide::content_digest(data),
        written_at: written.or(before).and_then(last_applied),
    };
    let mut parts = vec![(
        (Kind::ConfigMap, tc.config_map_name().to_string()),
        seen(&rendered.config_map, applied.config_map.as_ref(), existing.config_map.as_ref().map(|c| &c.metadata)),
    )];
    if let Some(name) = &plan.secret_name {
        let before = existing.own_secret().map(|s| &s.metadata);
        parts.push(((Kind::Secret, name.clone()), seen(&rendered.secret, applied.secret.as_ref(), before)));
    }
    parts
}

/// When this controller's field manager last changed the object's content:
/// `None` while it holds what it was created with, which no reader can have
/// seen an older version of (a pod that reads it could not start before it
/// existed).
fn last_applied(meta: &ObjectMeta) -> Option<Timestamp> {
    let ours = meta.managed_fields.iter().flatten();
    let applied = ours
        .filter(|f| f.manager.as_deref() == Some(FIELD_MANAGER) && f.operation.as_deref() == Some("Apply"))
        .filter_map(|f| f.time.as_ref().map(|t| t.0))
        .max()?;
    let created = meta.creation_timestamp.as_ref().map(|t| t.0);
    created.is_none_or(|created| applied > created).then_some(applied)
}

/// Learns whether the Secret `name` is this TenantConfig's without the right
/// to read Secrets: a JSON patch made only of `test` operations (our
/// managed-by label, a controller owner reference to `owner_uid`) changes
/// nothing and is refused (422) unless both hold, so the API server returns
/// the object only when it is ours; 404 when nothing stands there.
pub async fn secret_under(api: &Api<Secret>, name: &str, owner_uid: &str) -> Result<SecretUnder, Error> {
    let label = format!("/metadata/labels/{}", MANAGED_BY_LABEL.replace('~', "~0").replace('/', "~1"));
    let tests = serde_json::json!([
        { "op": "test", "path": label, "value": FIELD_MANAGER },
        { "op": "test", "path": "/metadata/ownerReferences/0/uid", "value": owner_uid },
        { "op": "test", "path": "/metadata/ownerReferences/0/controller", "value": true },
    ]);
    let patch: json_patch::Patch = serde_json::from_value(tests).expect("a well-formed JSON patch");
    match api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch)).await {
        Ok(secret) if render::owned_by(&secret.metadata, owner_uid) => Ok(SecretUnder::Ours(Box::new(secret))),
        Ok(_) => Ok(SecretUnder::Foreign),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(SecretUnder::Absent),
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(SecretUnder::Foreign),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the ConfigMap (and Secret) this object owns. Owner references
/// would let a garbage collector do it; doing it here keeps deletion
/// independent of one running.
pub async fn delete(ctx: &Context, tc: &TenantConfig) -> Result<(), Error> {
    let ns = tc.namespace().ok_or(Error::MissingNamespace)?;
    let uid = tc.uid().unwrap_or_default();
    let cm_api = Api::<ConfigMap>::namespaced(ctx.kube.client.clone(), &ns);
    if let Some(cm) = cm_api.get_opt(tc.config_map_name()).await?
        && render::owned_by(&cm.metadata, &uid)
    {
        cm_api.delete(tc.config_map_name(), &DeleteParams::default()).await?;
    }
    ctx.ledgers.own_writes.forget(&ObjectRef::<ConfigMap>::new(tc.config_map_name()).within(&ns));
    if let Some(name) = tc.spec.projection.as_ref().and_then(|p| p.secret_name.as_deref())
        && ctx.settings.secure_projection
    {
        let secret_api = Api::<Secret>::namespaced(ctx.kube.client.clone(), &ns);
        if let SecretUnder::Ours(secret) = secret_under(&secret_api, name, &uid).await? {
            // The one we found ours, not one that replaced it since.
            let params = DeleteParams { preconditions: Some(uid_precondition(&secret.metadata)), ..Default::default() };
            match secret_api.delete(name, &params).await {
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                other => drop(other?),
            }
        }
    }
    Ok(())
}

fn uid_precondition(meta: &ObjectMeta) -> kube::api::Preconditions {
    kube::api::Preconditions { uid: meta.uid.clone(), resource_version: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projection_is_refused_only_for_what_a_retry_cannot_change() {
        let api = |code: u16, message: &str| {
            Error::Kube(kube::Error::Api(kube::core::Status::failure(message, "x").with_code(code).boxed()))
        };
        let immutable =
            api(422, "ConfigMap \"p\" is invalid: data: Forbidden: field is immutable when `immutable` is set");
        assert!(refused(&immutable).unwrap().contains("(422): ConfigMap \"p\" is invalid"));
        assert!(refused(&api(403, "denied by ValidatingAdmissionPolicy")).is_some());
        assert!(refused(&api(400, "bad request")).is_some());
        for retried in [
            api(409, "already exists"),
            api(422, "metadata.uid: Invalid value: \"u\": field is immutable"),
            api(429, "too many requests"),
            api(404, "namespace gone"),
            api(500, "etcd timeout"),
        ] {
            assert_eq!(refused(&retried), None, "{retried}");
        }
        assert_eq!(refused(&Error::MissingNamespace), None);
    }
    use serde_json::json;

    fn meta(created: &str, applied: &[(&str, &str, &str)]) -> ObjectMeta {
        let fields: Vec<_> = applied
            .iter()
            .map(|(manager, operation, time)| json!({ "manager": manager, "operation": operation, "time": time }))
            .collect();
        serde_json::from_value(json!({ "creationTimestamp": created, "managedFields": fields })).unwrap()
    }

    #[test]
    fn only_a_change_after_the_creation_is_a_write_readers_may_be_behind() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let created = "2026-12-01T10:00:00Z";
        assert_eq!(last_applied(&meta(created, &[(FIELD_MANAGER, "Apply", created)])), None, "only created");
        let changed = meta(
            created,
            &[(FIELD_MANAGER, "Apply", "2026-12-01T10:05:00Z"), ("kubectl", "Update", "2026-12-01T11:00:00Z")],
        );
        assert_eq!(last_applied(&changed), Some(t("2026-12-01T10:05:00Z")), "ours, not another manager's");
        assert_eq!(last_applied(&meta(created, &[("kubectl", "Apply", "2026-12-01T10:05:00Z")])), None);
    }
}
