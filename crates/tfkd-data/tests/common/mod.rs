//! Helpers shared by the integration tests (fixture paths, the real-data folder).
#![allow(dead_code)]

use std::path::PathBuf;

pub mod http;

/// The committed fixtures (`fixtures/data/` at the repository root).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/data")
}

/// `$TFKD_DATA_DIR/<name>` when it exists; otherwise prints why the test skips and returns None.
pub fn real_data(name: &str) -> Option<PathBuf> {
    match std::env::var_os("TFKD_DATA_DIR") {
        None => {
            eprintln!("skipping: TFKD_DATA_DIR is not set (it points at the shared data folder)");
            None
        }
        Some(d) => {
            let p = PathBuf::from(d).join(name);
            if p.is_dir() {
                Some(p)
            } else {
                eprintln!("skipping: {} is not a folder", p.display());
                None
            }
        }
    }
}

/// Reads a gzip-compressed fixture file.
pub fn gunzip(name: &str) -> Vec<u8> {
    use std::io::Read;
    let f = std::fs::File::open(fixtures().join(name)).expect("fixture file");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f).read_to_end(&mut out).expect("gzip fixture");
    out
}
