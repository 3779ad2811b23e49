//! AWS limits checked before any call, because emulators do not enforce them
//! (DESIGN.md §9) and a partial write is worse than a clear refusal. Pure.

use crate::api::{ParameterTier, paths};

/// DynamoDB's item size limit: 400 KB.
pub const DYNAMODB_ITEM_MAX_BYTES: usize = 400 * 1024;
/// SSM parameter value limits per tier.
pub const SSM_STANDARD_VALUE_MAX_BYTES: usize = 4096;
pub const SSM_ADVANCED_VALUE_MAX_BYTES: usize = 8192;
/// SSM hierarchy depth.
pub const SSM_MAX_LEVELS: usize = 15;
/// SSM name length, counted with the ARN prefix `arn:aws:ssm:{region}:{account}:parameter`.
pub const SSM_NAME_WITH_ARN_MAX: usize = 1011;
/// Length of that ARN prefix for the longest region names, so names stay valid anywhere.
const SSM_ARN_PREFIX_RESERVE: usize = "arn:aws-us-gov:ssm:ap-southeast-4:123456789012:parameter".len();

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("parameter name {name:?} has a character outside a-zA-Z0-9_.-/ (AWS rule)")]
    ParameterNameCharset { name: String },
    #[error("parameter name {name:?} has {levels} levels; Parameter Store allows at most {SSM_MAX_LEVELS}")]
    ParameterNameTooDeep { name: String, levels: usize },
    #[error("parameter name {name:?} is {len} characters; with its ARN it must stay within {SSM_NAME_WITH_ARN_MAX}")]
    ParameterNameTooLong { name: String, len: usize },
    #[error("parameter name {name:?} starts with 'aws' or 'ssm', which AWS reserves")]
    ParameterNameReserved { name: String },
    #[error("parameter name {name:?} must be absolute and have no empty, '.' or '..' segments")]
    ParameterNameMalformed { name: String },
    #[error(
        "value of {key:?} is {len} bytes; the {tier} tier allows {max} (Standard 4096, Advanced 8192; set the store's tier to Advanced for larger values)"
    )]
    ValueTooLarge { key: String, len: usize, tier: &'static str, max: usize },
    #[error(
        "item {location} would be {size} bytes; DynamoDB items are limited to {DYNAMODB_ITEM_MAX_BYTES} bytes (400 KB)"
    )]
    ItemTooLarge { location: String, size: usize },
    #[error("secure entry {key:?} routes to store {store:?}, which {why}")]
    SecureNotSupported { key: String, store: String, why: &'static str },
    #[error("ConfigStore {store:?} must set exactly one backend")]
    InvalidStore { store: String },
    /// A limit particular to one backend, in its own words (a new backend
    /// reports its limits here without a variant of its own).
    #[error("{0}")]
    Exceeded(String),
}

/// Checks an SSM parameter name against AWS's rules.
pub fn check_parameter_name(name: &str) -> Result<(), LimitError> {
    let err = |f: fn(String) -> LimitError| Err(f(name.to_string()));
    if !paths::has_parameter_name_charset(name) {
        return err(|name| LimitError::ParameterNameCharset { name });
    }
    let Some(segments) = paths::segments(name) else {
        return err(|name| LimitError::ParameterNameMalformed { name });
    };
    let levels = segments.len();
    if levels > SSM_MAX_LEVELS {
        return Err(LimitError::ParameterNameTooDeep { name: name.into(), levels });
    }
    if name.len() + SSM_ARN_PREFIX_RESERVE > SSM_NAME_WITH_ARN_MAX {
        return Err(LimitError::ParameterNameTooLong { name: name.into(), len: name.len() });
    }
    let lower = segments[0].to_ascii_lowercase();
    if lower.starts_with("aws") || lower.starts_with("ssm") {
        return err(|name| LimitError::ParameterNameReserved { name });
    }
    Ok(())
}

/// The tier to write a value with, given the store's highest allowed tier.
/// Values that fit in Standard are always written as Standard (cheapest), except
/// that Intelligent-Tiering is passed through for AWS to decide.
pub fn parameter_tier(key: &str, value: &str, allowed: ParameterTier) -> Result<ParameterTier, LimitError> {
    let len = value.len();
    match allowed {
        ParameterTier::Standard if len <= SSM_STANDARD_VALUE_MAX_BYTES => Ok(ParameterTier::Standard),
        ParameterTier::Standard => {
            Err(LimitError::ValueTooLarge { key: key.into(), len, tier: "Standard", max: SSM_STANDARD_VALUE_MAX_BYTES })
        }
        ParameterTier::Advanced | ParameterTier::IntelligentTiering if len > SSM_ADVANCED_VALUE_MAX_BYTES => {
            Err(LimitError::ValueTooLarge { key: key.into(), len, tier: "Advanced", max: SSM_ADVANCED_VALUE_MAX_BYTES })
        }
        ParameterTier::Advanced if len <= SSM_STANDARD_VALUE_MAX_BYTES => Ok(ParameterTier::Standard),
        ParameterTier::Advanced => Ok(ParameterTier::Advanced),
        ParameterTier::IntelligentTiering => Ok(ParameterTier::IntelligentTiering),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_follow_aws_rules() {
        assert!(check_parameter_name("/tenant-config/acme/payments/retry-limit").is_ok());
        assert!(check_parameter_name("/a.b/c_d/E-9").is_ok());
        let deep = format!("/{}", vec!["l"; 16].join("/"));
        let fifteen = format!("/{}", vec!["l"; 15].join("/"));
        assert!(check_parameter_name(&fifteen).is_ok());
        let table: &[(&str, &str)] = &[
            ("/tenant config/x", "character outside"),
            ("/x/ü", "character outside"),
            ("relative/x", "must be absolute"),
            ("/x//y", "must be absolute"),
            ("/x/../y", "must be absolute"),
            ("/aws/x", "AWS reserves"),
            ("/SSM-params/x", "AWS reserves"),
            (&deep, "16 levels; Parameter Store allows at most 15"),
        ];
        for (name, msg) in table {
            let err = check_parameter_name(name).unwrap_err().to_string();
            assert!(err.contains(msg), "{name}: {err}");
        }
        let long = format!("/{}", "x".repeat(1000));
        assert!(matches!(check_parameter_name(&long), Err(LimitError::ParameterNameTooLong { .. })));
    }

    #[test]
    fn tier_follows_value_size_within_the_store_allowance() {
        let small = "v".repeat(4096);
        let medium = "v".repeat(4097);
        let large = "v".repeat(8193);
        use ParameterTier::*;
        assert_eq!(parameter_tier("k", &small, Standard), Ok(Standard));
        assert_eq!(parameter_tier("k", &small, Advanced), Ok(Standard));
        assert_eq!(parameter_tier("k", &medium, Advanced), Ok(Advanced));
        assert_eq!(parameter_tier("k", &medium, IntelligentTiering), Ok(IntelligentTiering));
        let err = parameter_tier("k", &medium, Standard).unwrap_err();
        assert!(err.to_string().contains("4097 bytes; the Standard tier allows 4096"), "{err}");
        assert!(matches!(parameter_tier("k", &large, Advanced), Err(LimitError::ValueTooLarge { max: 8192, .. })));
    }
}
