//! Which ConfigStores overlap (DESIGN.md §3). Pure.
//!
//! Two stores overlap when one can read or write what the other does: two
//! DynamoDB stores on one table, or a Parameter Store `pathPrefix` (where
//! tenants write) at or under another `pathPrefix` or any `sharedPaths`
//! (where every tenant reads), or the reverse — including a store's own
//! prefix against its own shared paths. A shared path above a tenant prefix
//! lets any tenant include any tenant's data; one below it lets the tenant
//! named like the shared directory write into what everyone includes; two
//! stores on one place make one's sweep delete what the other wrote. Every
//! store of an overlapping pair is refused (neither is more right than the
//! other): nothing routes to it, and it says why in its status. Stores in
//! different regions or behind different endpoints never overlap.
//! (Two stores' shared paths may overlap: both only read.)

use std::collections::BTreeMap;

use super::StoreRef;
use crate::api::{StoreBackend, paths::is_at_or_under};

/// One place a store reads or writes, and what it is for.
struct Area<'a> {
    store: &'a str,
    /// Region and endpoint: the same names elsewhere are other data.
    account: (Option<&'a str>, Option<&'a str>),
    kind: AreaKind<'a>,
}

enum AreaKind<'a> {
    Table(&'a str),
    TenantPrefix(&'a str),
    SharedPath(&'a str),
}

impl AreaKind<'_> {
    fn describe(&self) -> String {
        match self {
            AreaKind::Table(t) => format!("table {t:?}"),
            AreaKind::TenantPrefix(p) => format!("pathPrefix {p:?}"),
            AreaKind::SharedPath(p) => format!("sharedPaths entry {p:?}"),
        }
    }
}

fn areas<'a>(store: &StoreRef<'a>) -> Vec<Area<'a>> {
    let area = |account, kind| Area { store: store.name, account, kind };
    match store.spec.backend() {
        Some(StoreBackend::DynamoDb(t)) => {
            vec![area((t.region.as_deref(), t.endpoint.as_deref()), AreaKind::Table(&t.table_name))]
        }
        Some(StoreBackend::ParameterStore(p)) => {
            let account = (p.region.as_deref(), p.endpoint.as_deref());
            let shared = p.shared_paths.iter().map(|s| area(account, AreaKind::SharedPath(s)));
            std::iter::once(area(account, AreaKind::TenantPrefix(&p.path_prefix))).chain(shared).collect()
        }
        None => Vec::new(),
    }
}

fn nested(a: &str, b: &str) -> bool {
    is_at_or_under(a, b) || is_at_or_under(b, a)
}

/// Whether two areas overlap in a way that crosses a boundary.
fn clash(a: &Area<'_>, b: &Area<'_>) -> bool {
    if a.account != b.account {
        return false;
    }
    match (&a.kind, &b.kind) {
        (AreaKind::Table(x), AreaKind::Table(y)) => x == y && a.store != b.store,
        (AreaKind::TenantPrefix(x), AreaKind::TenantPrefix(y)) => a.store != b.store && nested(x, y),
        (AreaKind::TenantPrefix(x), AreaKind::SharedPath(y)) | (AreaKind::SharedPath(y), AreaKind::TenantPrefix(x)) => {
            nested(x, y)
        }
        _ => false,
    }
}

/// The pairs of areas that may clash, without comparing every pair (every
/// reconcile asks, and a store may list 32 shared paths): tables grouped by
/// name; paths sorted by their segments, so that everything at or under a
/// path follows it in one run.
fn candidates<'s, 'a>(all: &'s [Area<'a>]) -> Vec<(&'s Area<'a>, &'s Area<'a>)> {
    let mut pairs = Vec::new();
    let mut tables: BTreeMap<&str, Vec<&Area<'a>>> = BTreeMap::new();
    let mut paths: Vec<(Vec<&str>, &Area<'a>)> = Vec::new();
    for area in all {
        match area.kind {
            AreaKind::Table(t) => tables.entry(t).or_default().push(area),
            AreaKind::TenantPrefix(p) | AreaKind::SharedPath(p) => {
                paths.push((p.trim_end_matches('/').split('/').collect(), area))
            }
        }
    }
    for group in tables.values() {
        for (i, a) in group.iter().enumerate() {
            pairs.extend(group[i + 1..].iter().map(|b| (*a, *b)));
        }
    }
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (segments, a)) in paths.iter().enumerate() {
        let nested = paths[i + 1..].iter().take_while(|(other, _)| other.starts_with(segments));
        pairs.extend(nested.map(|(_, b)| (*a, *b)));
    }
    pairs
}

/// Every overlapping store, with a message naming the store(s) it overlaps
/// and where (the first clash per pair).
pub fn overlapping(stores: &[StoreRef<'_>]) -> BTreeMap<String, String> {
    let all: Vec<Area<'_>> = stores.iter().flat_map(areas).collect();
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (a, b) in candidates(&all) {
        if !clash(a, b) {
            continue;
        }
        let (what_a, what_b) = (a.kind.describe(), b.kind.describe());
        let note = |other: &str, mine: &str, theirs: &str| {
            if other == a.store && other == b.store {
                format!("its own {mine} and {theirs} overlap")
            } else {
                format!("its {mine} overlaps ConfigStore {other}'s {theirs}")
            }
        };
        found.entry(a.store.into()).or_default().push(note(b.store, &what_a, &what_b));
        if a.store != b.store {
            found.entry(b.store.into()).or_default().push(note(a.store, &what_b, &what_a));
        }
    }
    found
        .into_iter()
        .map(|(store, notes)| {
            let message = format!(
                "{}; nothing routes to this store until the overlap is removed (each store must own its table or paths)",
                notes.join("; ")
            );
            (store, message)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConfigStoreSpec;

    fn spec(value: serde_json::Value) -> ConfigStoreSpec {
        serde_json::from_value(value).unwrap()
    }

    fn check(specs: &[(&str, ConfigStoreSpec)]) -> BTreeMap<String, String> {
        let stores: Vec<StoreRef<'_>> = specs.iter().map(|(name, spec)| StoreRef { name, spec }).collect();
        overlapping(&stores)
    }

    fn ssm(prefix: &str, shared: &[&str]) -> ConfigStoreSpec {
        spec(serde_json::json!({ "parameterStore": { "pathPrefix": prefix, "sharedPaths": shared } }))
    }

    fn table(name: &str) -> ConfigStoreSpec {
        spec(serde_json::json!({ "dynamodb": { "tableName": name } }))
    }

    #[test]
    fn disjoint_stores_do_not_overlap() {
        let found = check(&[
            ("a", ssm("/tenants", &["/shared"])),
            ("b", ssm("/tenants-b", &["/shared/b", "/shared-b"])),
            ("c", table("one")),
            ("d", table("two")),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_shared_path_above_or_below_a_tenant_prefix_overlaps() {
        let above = check(&[("tenants", ssm("/t/tenants", &[])), ("shared", ssm("/s", &["/t"]))]);
        assert_eq!(above.keys().collect::<Vec<_>>(), ["shared", "tenants"]);
        assert!(above["tenants"].contains("ConfigStore shared's sharedPaths entry \"/t\""), "{}", above["tenants"]);
        let below = check(&[("tenants", ssm("/t", &[])), ("shared", ssm("/s", &["/t/common"]))]);
        assert_eq!(below.len(), 2);
        let own = check(&[("self", ssm("/t", &["/t/common"]))]);
        assert!(own["self"].contains("its own pathPrefix \"/t\" and sharedPaths entry \"/t/common\" overlap"));
    }

    #[test]
    fn nested_prefixes_and_one_table_overlap_but_not_across_regions() {
        assert_eq!(check(&[("a", ssm("/t", &[])), ("b", ssm("/t/x", &[]))]).len(), 2);
        assert_eq!(check(&[("a", ssm("/t", &[])), ("b", ssm("/t", &[]))]).len(), 2);
        assert!(check(&[("a", ssm("/t", &[])), ("b", ssm("/tx", &[]))]).is_empty(), "segment boundaries");
        let found = check(&[("a", table("one")), ("b", table("one"))]);
        assert!(found["a"].contains("its table \"one\" overlaps ConfigStore b's table \"one\""), "{found:?}");
        let elsewhere = spec(serde_json::json!({ "dynamodb": { "tableName": "one", "region": "eu-west-1" } }));
        assert!(check(&[("a", table("one")), ("b", elsewhere)]).is_empty());
    }

    /// Many stores with many shared paths: only nested pairs are compared, and
    /// the answer is the same as comparing every pair.
    #[test]
    fn many_areas_are_checked_without_comparing_every_pair() {
        let specs: Vec<(String, ConfigStoreSpec)> = (0..40)
            .map(|i| {
                let shared: Vec<String> = (0..32).map(|k| format!("/shared-{i}/p{k}")).collect();
                let shared: Vec<&str> = shared.iter().map(String::as_str).collect();
                (format!("s{i}"), ssm(&format!("/tenants-{i}"), &shared))
            })
            .collect();
        let mut stores: Vec<StoreRef<'_>> = specs.iter().map(|(name, spec)| StoreRef { name, spec }).collect();
        assert!(overlapping(&stores).is_empty());
        let all: Vec<Area<'_>> = stores.iter().flat_map(areas).collect();
        assert!(candidates(&all).len() < 100, "{} candidate pairs of {} areas", candidates(&all).len(), all.len());
        let spoiler = ssm("/spoiler", &["/tenants-7/acme"]);
        stores.push(StoreRef { name: "spoiler", spec: &spoiler });
        assert_eq!(overlapping(&stores).keys().collect::<Vec<_>>(), ["s7", "spoiler"]);
    }

    #[test]
    fn shared_paths_of_two_stores_may_overlap() {
        assert!(check(&[("a", ssm("/ta", &["/s"])), ("b", ssm("/tb", &["/s/x"]))]).is_empty());
    }
}
