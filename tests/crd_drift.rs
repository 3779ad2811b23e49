//! The committed CRDs (`crds/` and the chart's copy) equal what the code generates.

use tenant_config_controller::crd::{CRD_DIRS, rendered};

#[test]
fn committed_crds_match_the_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in CRD_DIRS {
        for (file, yaml) in rendered() {
            let path = root.join(dir).join(file);
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(committed == yaml, "{} is stale: run `cargo run --bin crdgen`", path.display());
        }
    }
}
