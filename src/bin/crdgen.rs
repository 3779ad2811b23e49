//! Writes the CRD manifests (`crds/*.yaml` and the chart's copy), or with
//! `--check` exits non-zero when the committed files differ from the code.

use std::{path::Path, process::ExitCode};

use tenant_config_controller::crd::{CRD_DIRS, rendered};

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("usage: crdgen [--check]   (unknown argument {other:?})");
            return ExitCode::from(2);
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for dir in CRD_DIRS {
        for (file, yaml) in rendered() {
            let path = root.join(dir).join(file);
            let current = std::fs::read_to_string(&path).ok();
            if current.as_deref() == Some(yaml.as_str()) {
                continue;
            }
            if check {
                stale.push(path.display().to_string());
            } else if let Err(e) =
                std::fs::create_dir_all(path.parent().unwrap()).and_then(|_| std::fs::write(&path, &yaml))
            {
                eprintln!("cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            } else {
                println!("wrote {}", path.display());
            }
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("CRDs out of date (run `cargo run --bin crdgen`): {}", stale.join(", "));
        ExitCode::FAILURE
    }
}
