//! Mutation fuzzing of the parsers that face untrusted input: event bodies
//! (anyone who can send to the queue writes them) and include paths (any
//! tenant writes them). No network.
//!
//! Seeds are the committed corpus in `tests/fuzz/corpus/<target>/`; each
//! iteration mutates one seed (byte flips, splices, dictionary tokens, JSON
//! string rewrites) and checks the invariants below. `./scripts/test.sh` runs a
//! short pass; `TCC_FUZZ_ITERATIONS=1000000 cargo test --test fuzz --release`
//! a long one, `TCC_FUZZ_SEED` replays one. An input that breaks an invariant
//! is written to `target/fuzz-failures/` to be added to the corpus once fixed.
//!
//! Invariants:
//! - parsing never panics and is deterministic;
//! - a located tenant target carries only valid key segments (no `.`, `..`,
//!   `/`, empty), and names exactly the tenant / configType the key spells;
//! - a located shared target lies under a shared path, on a segment boundary,
//!   without `.`/`..`/empty segments;
//! - an include path is allowed only under a shared path, on a segment boundary,
//!   without `.`/`..`/empty segments.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
};

mod support;

use support::fixtures::Rng;
use tenant_config_controller::{
    api::{ConfigStoreSpec, is_valid_key},
    events::envelope::parse,
    store::{
        Location, StoreRef,
        change::{StoreChange, Target, locate},
        routing::shared_store_for,
    },
};

const TENANT_PREFIX: &str = "/tenant-config";
const SHARED_PREFIX: &str = "/tenant-config-shared";
const TABLE: &str = "tenant-config";

/// Tokens mutations splice in: separators, traversal, the key grammar's edges.
const DICTIONARY: &[&str] = &[
    "/",
    "//",
    ".",
    "..",
    "/../",
    "/./",
    "%2e%2e",
    "\\",
    "#",
    "TENANT#",
    "CONFIG#",
    "#ENV#",
    "\u{0}",
    "\u{202e}",
    "é",
    "😀",
    "\"",
    "\\\"",
    "\\u002f",
    "\\u0000",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "null",
    "true",
    "0",
    "-1",
    "1e309",
    "aws.ssm",
    "Parameter Store Change",
    "aws:dynamodb",
    "Pipe ",
    "MODIFY",
    "REMOVE",
    "INSERT",
    "/tenant-config/",
    "/tenant-config-shared/",
    "/tenant-config-shared-evil",
    "eventSourceARN",
    "arn:aws:dynamodb:us-east-1:1:table/tenant-config/stream/x",
    "arn:aws:dynamodb:us-east-1:1:table/other/stream/x",
];

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus").join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "the {target} corpus has seeds");
    seeds
}

fn iterations() -> usize {
    std::env::var("TCC_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000)
}

fn rng() -> Rng {
    Rng::seeded_from_env("TCC_FUZZ_SEED")
}

/// One mutation of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.index(4) {
        let at = rng.index(out.len() + 1);
        match rng.index(7) {
            0 if !out.is_empty() => {
                let i = rng.index(out.len());
                out[i] ^= 1 << rng.index(8);
            }
            1 if !out.is_empty() => {
                let end = (at + rng.index(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            2 => {
                let token = DICTIONARY[rng.index(DICTIONARY.len())].as_bytes();
                out.splice(at..at, token.iter().copied());
            }
            3 if !other.is_empty() => {
                let from = rng.index(other.len());
                let end = (from + rng.index(64)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
            4 => out = rewrite_json_strings(rng, &out),
            5 if !out.is_empty() => {
                let end = (at + rng.index(8)).min(out.len());
                let chunk = out[at.min(end)..end].to_vec();
                out.splice(at..at, chunk.iter().copied().cycle().take(chunk.len() * rng.index(50)));
            }
            _ => out.truncate(at),
        }
    }
    out
}

/// Structure-aware: replaces a segment of one JSON string value with a token,
/// so that mutated keys and names still reach the locate step.
fn rewrite_json_strings(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(input) else { return input.to_vec() };
    let mut strings = Vec::new();
    collect_strings(&mut value, &mut strings);
    if let Some(s) = (!strings.is_empty()).then(|| rng.index(strings.len())).map(|i| &mut *strings.swap_remove(i)) {
        let token = DICTIONARY[rng.index(DICTIONARY.len())];
        let parts: Vec<&str> = s.split('/').collect();
        let i = rng.index(parts.len());
        let mut parts: Vec<String> = parts.into_iter().map(str::to_string).collect();
        parts[i] = if rng.index(2) == 0 { token.to_string() } else { format!("{}{token}", parts[i]) };
        *s = parts.join("/");
    }
    serde_json::to_vec(&value).unwrap()
}

fn collect_strings<'a>(value: &'a mut serde_json::Value, out: &mut Vec<&'a mut String>) {
    match value {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

fn stores() -> (ConfigStoreSpec, ConfigStoreSpec) {
    let db = serde_json::from_value(serde_json::json!({ "dynamodb": { "tableName": TABLE } })).unwrap();
    let ssm = serde_json::from_value(serde_json::json!({
        "parameterStore": { "pathPrefix": TENANT_PREFIX, "sharedPaths": [SHARED_PREFIX] }
    }))
    .unwrap();
    (db, ssm)
}

fn valid_segment(s: &str) -> bool {
    is_valid_key(s) && s != "." && s != ".."
}

fn under_on_boundary(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn clean_segments(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(|rel| rel.split('/').all(|s| !s.is_empty() && s != "." && s != ".."))
}

/// The invariants for one event body; `Err` says which broke.
fn check_envelope(body: &str) -> Result<(), String> {
    let first = parse(body);
    if first != parse(body) {
        return Err("parse is not deterministic".into());
    }
    let Ok(envelope) = first else { return Ok(()) };
    let (db, ssm) = stores();
    let Some(change) = &envelope.change else { return Ok(()) };
    let targets = locate(change, &[StoreRef { name: "db", spec: &db }, StoreRef { name: "ssm", spec: &ssm }]);
    for target in targets {
        match (&target, change) {
            (Target::Tenant { location: Location { tenant, environment, config_type }, .. }, change) => {
                for part in [tenant, config_type].into_iter().chain(environment) {
                    if !valid_segment(part) {
                        return Err(format!("{target}: segment {part:?} is not a valid key"));
                    }
                }
                let spelled = match change {
                    StoreChange::Parameter { name, .. } => {
                        let level = environment.as_deref().unwrap_or("_");
                        name.starts_with(&format!("{TENANT_PREFIX}/{tenant}/{level}/{config_type}/"))
                    }
                    StoreChange::Item { keys, .. } => {
                        let env = environment.as_ref().map(|e| format!("#ENV#{e}")).unwrap_or_default();
                        keys.contains(&("pk".into(), format!("TENANT#{tenant}")))
                            && keys.contains(&("sk".into(), format!("CONFIG#{config_type}{env}")))
                    }
                };
                if !spelled {
                    return Err(format!("{target} is not what {change:?} names"));
                }
            }
            (Target::Shared { name, .. }, _) => {
                if !under_on_boundary(name, SHARED_PREFIX) || !clean_segments(name) {
                    return Err(format!("{target}: not cleanly under {SHARED_PREFIX}"));
                }
            }
        }
    }
    Ok(())
}

/// The invariants for one include path.
fn check_include(path: &str) -> Result<(), String> {
    let (db, ssm) = stores();
    let candidates = [StoreRef { name: "db", spec: &db }, StoreRef { name: "ssm", spec: &ssm }];
    match shared_store_for(path, &candidates) {
        Ok("ssm") if under_on_boundary(path, SHARED_PREFIX) && clean_segments(path) => Ok(()),
        Ok(store) => Err(format!("{path:?} allowed (store {store})")),
        Err(_) => Ok(()),
    }
}

/// Runs `check` on every seed, then on `iterations()` mutants; panics (and
/// saves the input) on the first broken invariant or panic.
fn fuzz(target: &str, check: fn(&str) -> Result<(), String>) {
    let seeds = corpus(target);
    let mut rng = rng();
    let total = iterations();
    let run = |input: &[u8]| -> Result<(), String> {
        let text = String::from_utf8_lossy(input);
        catch_unwind(AssertUnwindSafe(|| check(&text)))
            .unwrap_or_else(|p| Err(format!("panicked: {}", p.downcast_ref::<String>().cloned().unwrap_or_default())))
    };
    for (name, seed) in &seeds {
        run(seed).unwrap_or_else(|e| panic!("corpus seed {target}/{name}: {e}"));
    }
    for i in 0..total {
        let (_, seed) = &seeds[rng.index(seeds.len())];
        let (_, other) = &seeds[rng.index(seeds.len())];
        let input = mutate(&mut rng, seed, other);
        if let Err(e) = run(&input) {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("failure-{i}"));
            std::fs::write(&file, &input).unwrap();
            panic!("{target}: iteration {i}: {e}\ninput saved to {}", file.display());
        }
    }
    eprintln!("{target}: {} seeds, {total} mutants, no invariant broken", seeds.len());
}

#[test]
fn event_envelopes() {
    fuzz("envelope", check_envelope);
}

#[test]
fn include_paths() {
    fuzz("include_path", check_include);
}

/// The harness itself must be able to fail: a checker with a planted bug is
/// caught within a short run.
#[test]
fn the_harness_finds_a_planted_bug() {
    fn buggy(path: &str) -> Result<(), String> {
        if path.contains("%2e%2e") { Err("found".into()) } else { Ok(()) }
    }
    let found = catch_unwind(|| fuzz("include_path", buggy));
    assert!(found.is_err(), "a traversal in a mutated include path is found");
}
