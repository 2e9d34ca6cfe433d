//! Repository hygiene, checked by `cargo test`: every Rust file of tfkd's
//! own opens with a `//!` doc comment (vendored code under `crates/vendor`
//! keeps its upstream form), and no file names a path of a developer's
//! machine.

#[cfg(test)]
mod tests {
    use crate::project_root;
    use std::path::{Path, PathBuf};

    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name != ".ci" || name == "target" || name == "runs" || name == "results" {
                continue;
            }
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }

    fn repo_files() -> Vec<PathBuf> {
        let mut out = Vec::new();
        files(&project_root(), &mut out);
        out
    }

    #[test]
    fn every_rust_file_opens_with_a_module_doc() {
        let missing: Vec<String> = repo_files()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            // Vendored third-party code keeps its upstream form.
            .filter(|p| !p.starts_with(project_root().join("crates").join("vendor")))
            .filter(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                !text.trim_start().starts_with("//!")
            })
            .map(|p| p.display().to_string())
            .collect();
        assert!(missing.is_empty(), "files without a `//!` header:\n{}", missing.join("\n"));
    }

    #[test]
    fn no_machine_paths_in_the_repository() {
        // Spelled in pieces so this file does not match itself.
        let needles = [["/wo", "rk/"].concat(), ["/ro", "ot/"].concat(), ["/ho", "me/"].concat()];
        let mut hits = Vec::new();
        for path in repo_files() {
            let Ok(text) = std::fs::read_to_string(&path) else { continue }; // binary files
            for needle in &needles {
                if let Some(line) = text.lines().find(|l| l.contains(needle.as_str())) {
                    hits.push(format!("{}: {}", path.display(), line.trim()));
                }
            }
        }
        assert!(hits.is_empty(), "machine paths found:\n{}", hits.join("\n"));
    }
}
