//! Helpers shared by the benchmarks that compare datx with DuckDB.

#![allow(dead_code)] // each bench uses its own part

use std::path::{Path, PathBuf};

/// The Python that has duckdb: `DATX_TEST_PYTHON`, else the venv `.ci/run` makes.
pub fn python() -> PathBuf {
    std::env::var_os("DATX_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
            home.join(".cache/datx/venv/bin/python")
        })
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// A number from the environment, or `default` when the variable is unset or not a number.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A fresh directory for a bench's files: under `DATX_BENCH_DIR` (the disk to measure)
/// when set, else under the system's temporary directory.
pub fn bench_root() -> tempfile::TempDir {
    match std::env::var_os("DATX_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .unwrap()
}
