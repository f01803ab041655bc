//! Helpers shared by the benchmarks that compare datx with DuckDB.

#![allow(dead_code)] // each bench uses its own part

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
/// printed and the largest resident set it reached, in MiB; a failed pass stops the bench
/// with its message.
// The child is reaped by wait4, which also reports its own peak memory.
#[allow(clippy::zombie_processes)]
pub fn datx_compact(dir: &Path) -> (String, f64) {
    let child = Command::new(env!("CARGO_BIN_EXE_datx"))
        .arg("compact")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start datx compact: {e}")));
    let pid = child.id() as libc::pid_t;
    let (mut stdout, mut stderr) = (child.stdout.unwrap(), child.stderr.unwrap());
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut printed = String::new();
    let _ = stdout.read_to_string(&mut printed);
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 reaps the child started above and writes only the two values given.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        fail(&format!(
            "datx compact failed: {}",
            errors.join().unwrap_or_default()
        ));
    }
    (printed, usage.ru_maxrss as f64 / 1024.0)
}

/// `output` itself when its process exited with 0; otherwise stops the bench with its
/// standard error.
pub fn succeeded(output: Output) -> Output {
    if !output.status.success() {
        fail(&format!(
            "{} failed: {}",
            "a child process",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    output
}

/// The last line a reader printed, parsed: a progress bar or a warning before it does not
/// matter, and output that is not what the bench expects stops it with a message.
pub fn last_line<T: std::str::FromStr>(output: &Output, what: &str) -> T {
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().rev().find(|line| !line.trim().is_empty());
    last.and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| fail(&format!("expected {what} on the last line, got: {text:?}")))
}

/// Stops the bench with `message`, without a panic's backtrace.
pub fn fail(message: &str) -> ! {
    eprintln!("bench failed: {message}");
    std::process::exit(1)
}
