use std::process::ExitCode;

fn main() -> ExitCode {
    // Bodies, answers and Parquet files pass through in buffers of megabytes. Mapped and
    // unmapped on their own, such buffers go back to the system once freed; by default
    // glibc raises its threshold for that after the first large free and keeps the later
    // ones on its heaps, where a process that bounds what it holds still grows (twelve slow
    // readers of large answers: 315-396 MiB resident against 198 MiB with the threshold
    // fixed, for an answer budget of 96 MiB).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    datx::cli::main()
}
