//! `tenant-config-controller migrate-paths`: moves Parameter Store data written
//! before environments had a level of their own.
//!
//! A namespace without an environment used to read and write
//! `{prefix}/{tenant}/{configType}/…`, the same place where an environment of
//! that name kept its configTypes (`{prefix}/{tenant}/{env}/{configType}/…`);
//! it now uses `{prefix}/{tenant}/_/{configType}/…`. Environments' paths are
//! unchanged. What moves is decided from the cluster's TenantConfigs: exactly
//! what an object without an environment reads today, and where a path is both
//! that and an environment's, only the parameters that object wrote itself
//! (others are listed for a person to decide). The plan is pure ([`plan`]);
//! [`ParameterStoreBackend::migrate`] lists, copies (value, type, tier, KMS
//! key, description, tags) and deletes, and can be run again after a failure.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ssm::types::ParameterMetadata;

use super::{KIND, OWNER_PREFIX, ParameterStoreBackend};
use crate::{
    api::paths::{NO_ENVIRONMENT, strip_path},
    store::StoreError,
};

/// What the cluster's TenantConfigs read, which decides what moves.
#[derive(Debug, Default)]
pub struct Claims {
    /// `(tenant, configType)` of each object in a namespace without an environment.
    pub unlabelled: BTreeSet<(String, String)>,
    /// `(tenant, environment)` of each namespace labelled with both.
    pub environments: BTreeSet<(String, String)>,
    /// `namespace/name` of the objects in `unlabelled`, with their location.
    pub owners: BTreeMap<String, (String, String)>,
}

impl Claims {
    /// Records one TenantConfig, in a namespace of `tenant` and `environment`.
    pub fn add(&mut self, tenant: &str, environment: Option<&str>, config_type: &str, owner: &str) {
        match environment {
            Some(env) => {
                self.environments.insert((tenant.into(), env.into()));
            }
            None => {
                self.unlabelled.insert((tenant.into(), config_type.into()));
                self.owners.insert(owner.into(), (tenant.into(), config_type.into()));
            }
        }
    }

    /// Records an environment even when none of its namespaces holds an object.
    pub fn add_environment(&mut self, tenant: &str, environment: &str) {
        self.environments.insert((tenant.into(), environment.into()));
    }
}

/// One parameter's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Move {
        from: String,
        to: String,
    },
    /// Left where it is, and why.
    Keep {
        name: String,
        reason: String,
    },
}

/// The steps for every parameter listed under `prefix` (`(name, recorded
/// owner)`), in the listing's order.
pub fn plan(prefix: &str, claims: &Claims, listed: &[(String, Option<String>)]) -> Vec<Step> {
    listed.iter().filter_map(|(name, owner)| step(prefix, claims, name, owner.as_deref())).collect()
}

fn step(prefix: &str, claims: &Claims, name: &str, owner: Option<&str>) -> Option<Step> {
    let segments: Vec<&str> = strip_path(name, prefix)?.split('/').collect();
    let keep = |reason: String| Some(Step::Keep { name: name.into(), reason });
    let [tenant, level, ref rest @ ..] = segments[..] else { return keep("not under a tenant's path".into()) };
    if rest.is_empty() {
        return keep("not under a tenant's path".into());
    }
    if level == NO_ENVIRONMENT && rest.len() >= 2 {
        return keep("already in the current layout".into());
    }
    let key = (tenant.to_string(), level.to_string());
    let read_without_environment = claims.unlabelled.contains(&key);
    let environments = claims.environments.contains(&key) && rest.len() >= 2;
    let to = format!("{}/{tenant}/{NO_ENVIRONMENT}/{level}/{}", prefix.trim_end_matches('/'), rest.join("/"));
    match (read_without_environment, environments) {
        (true, false) => Some(Step::Move { from: name.into(), to }),
        (true, true) if owner.and_then(|o| claims.owners.get(o)) == Some(&key) => {
            Some(Step::Move { from: name.into(), to })
        }
        (true, true) => keep(format!(
            "ambiguous: read both by tenant {tenant}'s configType {level:?} (no environment) and by its environment {level:?}, \
             written by {}; move it by hand if it belongs to the former",
            owner.unwrap_or("another writer")
        )),
        (false, true) => keep(format!("environment {level:?} of tenant {tenant}: its path is unchanged")),
        (false, false) => keep("no TenantConfig without an environment reads it".into()),
    }
}

/// What a run did with each step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Planned only (a dry run), or done.
    Planned(Step),
    Moved {
        from: String,
        to: String,
    },
    /// The destination holds another value: both are left as they are.
    Conflict {
        from: String,
        to: String,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Planned(Step::Move { from, to }) => write!(f, "would move {from} -> {to}"),
            Outcome::Planned(Step::Keep { name, reason }) => write!(f, "keep {name}: {reason}"),
            Outcome::Moved { from, to } => write!(f, "moved {from} -> {to}"),
            Outcome::Conflict { from, to } => {
                write!(f, "CONFLICT {from} -> {to}: the destination holds another value; both left as they are")
            }
        }
    }
}

impl ParameterStoreBackend {
    /// Plans the store's move and, with `apply`, carries it out.
    pub async fn migrate(&self, claims: &Claims, apply: bool) -> Result<Vec<Outcome>, StoreError> {
        let listed = self.describe_under(&self.path_prefix).await?;
        let owners: Vec<(String, Option<String>)> = listed
            .iter()
            .filter_map(|p| {
                let owner = p.description().and_then(|d| d.strip_prefix(OWNER_PREFIX)).map(String::from);
                Some((p.name()?.to_string(), owner))
            })
            .collect();
        let steps = plan(&self.path_prefix, claims, &owners);
        let by_name: BTreeMap<&str, &ParameterMetadata> = listed.iter().filter_map(|p| Some((p.name()?, p))).collect();
        let mut outcomes = Vec::with_capacity(steps.len());
        for step in steps {
            outcomes.push(match step {
                Step::Move { from, to } if apply => {
                    let (source, exists) = (by_name.get(from.as_str()).copied(), by_name.contains_key(to.as_str()));
                    self.move_parameter(from, to, source, exists).await?
                }
                step => Outcome::Planned(step),
            });
        }
        Ok(outcomes)
    }

    /// Copies `from` to `to` (unless `to` already holds the same value) and
    /// deletes `from`. A different value at `to` is a conflict: nothing changes.
    async fn move_parameter(
        &self,
        from: String,
        to: String,
        source: Option<&ParameterMetadata>,
        exists: bool,
    ) -> Result<Outcome, StoreError> {
        let value = self.value_of(&from).await?;
        if exists {
            if self.value_of(&to).await? != value {
                return Ok(Outcome::Conflict { from, to });
            }
        } else {
            let tags = self
                .gate
                .call(
                    "ListTagsForResource",
                    self.client
                        .list_tags_for_resource()
                        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
                        .resource_id(&from)
                        .send(),
                )
                .await
                .map_err(|e| StoreError::from_sdk(KIND, "ListTagsForResource", e))?
                .tag_list
                .filter(|tags| !tags.is_empty());
            let request = self
                .client
                .put_parameter()
                .name(&to)
                .value(&value)
                .set_type(source.and_then(|s| s.r#type().cloned()))
                .set_key_id(source.and_then(|s| s.key_id().map(String::from)))
                .set_tier(source.and_then(|s| s.tier().cloned()))
                .set_description(source.and_then(|s| s.description().map(String::from)))
                .overwrite(false)
                .set_tags(tags)
                .send();
            self.gate.call("PutParameter", request).await.map_err(|e| StoreError::from_sdk(KIND, "PutParameter", e))?;
        }
        self.gate
            .call("DeleteParameters", self.client.delete_parameters().names(&from).send())
            .await
            .map_err(|e| StoreError::from_sdk(KIND, "DeleteParameters", e))?;
        Ok(Outcome::Moved { from, to })
    }

    async fn value_of(&self, name: &str) -> Result<String, StoreError> {
        let got = self
            .gate
            .call("GetParameter", self.client.get_parameter().name(name).with_decryption(true).send())
            .await
            .map_err(|e| StoreError::from_sdk(KIND, "GetParameter", e))?;
        Ok(got.parameter.and_then(|p| p.value).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        let mut claims = Claims::default();
        // Namespace `zeta` has no environment; `zeta-prod` is environment prod.
        claims.add("zeta", None, "web", "zeta/web");
        claims.add("zeta", None, "prod", "zeta/prod");
        claims.add("zeta", Some("prod"), "payments", "zeta-prod/payments");
        claims.add_environment("zeta", "dev");
        claims
    }

    fn steps(listed: &[(&str, Option<&str>)]) -> Vec<Step> {
        let listed: Vec<(String, Option<String>)> =
            listed.iter().map(|(n, o)| (n.to_string(), o.map(String::from))).collect();
        plan("/p", &claims(), &listed)
    }

    fn moved(from: &str, to: &str) -> Step {
        Step::Move { from: from.into(), to: to.into() }
    }

    #[test]
    fn what_an_object_without_an_environment_reads_moves_under_the_marker() {
        assert_eq!(
            steps(&[("/p/zeta/web/a", Some("zeta/web")), ("/p/zeta/web/nested/x", None)]),
            [moved("/p/zeta/web/a", "/p/zeta/_/web/a"), moved("/p/zeta/web/nested/x", "/p/zeta/_/web/nested/x")]
        );
    }

    #[test]
    fn environments_current_and_unclaimed_paths_stay() {
        for (name, reason) in [
            ("/p/zeta/prod/payments/api-token", "ambiguous"),
            ("/p/zeta/dev/payments/k", "environment \"dev\""),
            ("/p/zeta/_/web/a", "already"),
            ("/p/zeta/orphan/k", "no TenantConfig"),
            ("/p/zeta/k", "not under a tenant's path"),
            ("/p/omega/web/a", "no TenantConfig"),
        ] {
            match &steps(&[(name, None)])[..] {
                [Step::Keep { reason: why, .. }] => assert!(why.contains(reason), "{name}: {why}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    /// Where configType `prod` (no environment) and environment `prod` both
    /// read a path, only what the former wrote moves.
    #[test]
    fn a_shared_path_moves_only_what_its_owner_wrote() {
        let listed = [
            ("/p/zeta/prod/k", Some("zeta/prod")),
            ("/p/zeta/prod/payments/api-token", Some("zeta-prod/payments")),
            ("/p/zeta/prod/payments/x", Some("zeta/web")),
        ];
        let planned = steps(&listed);
        assert_eq!(planned[0], moved("/p/zeta/prod/k", "/p/zeta/_/prod/k"));
        assert!(matches!(&planned[1], Step::Keep { reason, .. } if reason.contains("zeta-prod/payments")));
        assert!(matches!(&planned[2], Step::Keep { .. }), "owned by another location: {:?}", planned[2]);
        // A direct child of `prod` cannot be an environment's: it moves.
        assert_eq!(steps(&[("/p/zeta/prod/y", None)]), [moved("/p/zeta/prod/y", "/p/zeta/_/prod/y")]);
    }

    #[test]
    fn a_config_type_named_like_the_marker_moves_too() {
        let mut claims = claims();
        claims.add("zeta", None, "_", "zeta/underscore");
        let listed = [("/p/zeta/_/k".to_string(), None)];
        assert_eq!(plan("/p/", &claims, &listed), [moved("/p/zeta/_/k", "/p/zeta/_/_/k")]);
    }
}
