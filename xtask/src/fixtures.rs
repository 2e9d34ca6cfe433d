//! `cargo xtask fixtures`: the PyTorch generators of the golden files.

use crate::run_checked;
use std::path::Path;
use std::process::Command;

/// (name, script): each script writes its own folder under `fixtures/`.
const GENERATORS: &[(&str, &str)] = &[
    ("core", "scripts/gen_core_fixtures.py"),
    ("data", "scripts/gen_data_fixtures.py"),
    ("zoo", "scripts/gen_zoo_fixtures.py"),
];

pub fn run(python: &Path, only: &[String]) -> anyhow::Result<()> {
    if let Some(bad) = only.iter().find(|o| !GENERATORS.iter().any(|(n, _)| n == o)) {
        anyhow::bail!("unknown generator {bad:?}: choose among core, data, zoo");
    }
    for (name, script) in GENERATORS {
        if only.is_empty() || only.iter().any(|o| o == name) {
            println!("generating {name} fixtures with {script}");
            run_checked(Command::new(python).arg(script))?;
        }
    }
    Ok(())
}
