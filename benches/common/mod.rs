//! Helpers shared by the benchmarks that compare datx with DuckDB.

#![allow(dead_code)] // each bench uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// Runs `datx compact` in `dir` (which holds the bench's `datx.toml`) and returns what it
/// printed; a failed pass stops the bench with its message.
pub fn datx_compact(dir: &Path) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_datx"))
        .arg("compact")
        .current_dir(dir)
        .output()
        .unwrap();
    succeeded(output)
}

/// `output` itself when its process exited with 0; otherwise stops the bench with its
/// standard error.
pub fn succeeded(output: Output) -> Output {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
