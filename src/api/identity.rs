//! Tenant identity from the namespace (DESIGN.md §3). Pure.
//!
//! The tenant is a property of the namespace, set by the platform through a
//! label tenants cannot change under ordinary RBAC; it never comes from a spec.

use std::collections::BTreeMap;

use super::is_valid_key;
use super::paths::NO_ENVIRONMENT;

/// Who a TenantConfig's namespace belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: String,
    pub environment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("namespace {namespace:?} has no label {label:?}; the platform team must set it before anything is written")]
    TenantUnknown { namespace: String, label: String },
    #[error(
        "namespace {namespace:?} label {label:?} has value {value:?}, which is not a valid tenant/environment name ([-._a-zA-Z0-9], not '.', '..' or '_')"
    )]
    InvalidLabel { namespace: String, label: String, value: String },
}

/// Resolves the identity from a namespace's labels.
pub fn resolve(
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
    tenant_label: &str,
    environment_label: &str,
) -> Result<Identity, IdentityError> {
    let get = |label: &str| labels.and_then(|l| l.get(label)).filter(|v| !v.is_empty());
    let checked = |label: &str, value: &String| {
        if is_valid_key(value) && value != NO_ENVIRONMENT {
            Ok(value.clone())
        } else {
            Err(IdentityError::InvalidLabel { namespace: namespace.into(), label: label.into(), value: value.clone() })
        }
    };
    let tenant = get(tenant_label)
        .ok_or_else(|| IdentityError::TenantUnknown { namespace: namespace.into(), label: tenant_label.into() })?;
    Ok(Identity {
        tenant: checked(tenant_label, tenant)?,
        environment: get(environment_label).map(|e| checked(environment_label, e)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::names::{ENVIRONMENT_LABEL, TENANT_LABEL};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn resolve_default(labels: Option<&BTreeMap<String, String>>) -> Result<Identity, IdentityError> {
        resolve("acme-prod", labels, TENANT_LABEL, ENVIRONMENT_LABEL)
    }

    #[test]
    fn tenant_and_environment_come_from_labels() {
        let l = labels(&[(TENANT_LABEL, "acme"), (ENVIRONMENT_LABEL, "prod")]);
        assert_eq!(resolve_default(Some(&l)), Ok(Identity { tenant: "acme".into(), environment: Some("prod".into()) }));
        let l = labels(&[(TENANT_LABEL, "acme")]);
        assert_eq!(resolve_default(Some(&l)).unwrap().environment, None);
    }

    #[test]
    fn missing_or_empty_tenant_is_unknown() {
        for l in [None, Some(labels(&[])), Some(labels(&[(TENANT_LABEL, "")]))] {
            let err = resolve_default(l.as_ref()).unwrap_err();
            assert!(matches!(err, IdentityError::TenantUnknown { .. }), "{err}");
        }
    }

    #[test]
    fn label_values_that_would_escape_a_path_are_refused() {
        for bad in ["..", "."] {
            let l = labels(&[(TENANT_LABEL, bad)]);
            assert!(matches!(resolve_default(Some(&l)), Err(IdentityError::InvalidLabel { .. })), "{bad}");
        }
        let l = labels(&[(TENANT_LABEL, "acme"), (ENVIRONMENT_LABEL, "..")]);
        assert!(matches!(resolve_default(Some(&l)), Err(IdentityError::InvalidLabel { .. })));
    }

    #[test]
    fn the_label_key_is_configurable() {
        let l = labels(&[("example.com/customer", "acme")]);
        let id = resolve("ns", Some(&l), "example.com/customer", ENVIRONMENT_LABEL).unwrap();
        assert_eq!(id.tenant, "acme");
    }
}
