//! `datx.toml`: what every command reads before it starts.
//!
//! Owns parsing and validation, and turns secrets named by `*_env` keys into values once,
//! at start. Anything wrong stops the start with the key's name and the problem; nothing
//! later has to second-guess the configuration. It must never log a secret.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::stream::check_institution;

/// The file every command reads when `--config` is not given.
pub const DEFAULT_FILE: &str = "datx.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// A local directory (relative paths are resolved against the configuration file's
    /// directory) or an `s3://bucket/prefix` URL.
    pub lake: String,
    pub max_body_bytes: usize,
    /// `None` when background compaction is off.
    pub compact_every: Option<Duration>,
    /// A partition whose files have not changed for this long has them merged.
    pub merge_after: Duration,
    /// Event bytes a compaction pass reads before it writes and commits: bounds its memory.
    pub compact_chunk_bytes: usize,
    /// How long the compaction lease on an `s3://` lake lasts without renewal: a compactor
    /// that dies holding it blocks compaction for at most this long.
    pub lease_ttl: Duration,
    /// How far this process's clock may be from the lake's before pushes are refused (503)
    /// and days are not sealed; `None` when off.
    pub clock_tolerance: Option<Duration>,
    pub institutions: BTreeMap<String, Institution>,
    pub sql: Sql,
    /// `None` when PostgreSQL clients are not served.
    pub postgres: Option<Postgres>,
    pub connections: Connections,
    /// Bearer token `GET /metrics` asks for; `None` leaves it open (it names institutions
    /// and counts, never records).
    pub metrics_token: Option<String>,
    /// The variable `[audit]` names for the key digests are signed with, and the key
    /// (base64 PKCS#8) when the variable is set. Only the compactor needs it: an auditor
    /// who verifies with the public key runs the same configuration without it.
    pub audit_signing_key_env: Option<String>,
    pub audit_signing_key: Option<String>,
}

impl Config {
    /// The signer of digests: `None` when `[audit]` names no key, an error when it names a
    /// variable that is not set (digests would silently go unsigned).
    pub fn audit_signer(&self) -> Result<Option<crate::eventlog::Signer>, String> {
        match (&self.audit_signing_key_env, &self.audit_signing_key) {
            (_, Some(key)) => Ok(Some(
                crate::eventlog::Signer::from_base64(key).expect("the key was checked on load"),
            )),
            (Some(variable), None) => Err(format!(
                "invalid configuration: audit.signing_key_env: the environment variable {variable} is not set"
            )),
            (None, None) => Ok(None),
        }
    }
}

/// What one HTTP client may hold: slow or idle clients are cut off, and the number of open
/// connections is capped, so a few stalled sockets cannot starve S-360.
#[derive(Debug, Clone)]
pub struct Connections {
    /// A request whose headers have not all arrived by then is answered by a closed
    /// connection; an idle keep-alive connection is closed after as long.
    pub header_timeout: Duration,
    /// A body that sends nothing for this long is abandoned (nothing of it is stored); so is
    /// an answer the client reads nothing of for as long.
    pub body_idle_timeout: Duration,
    /// A body still arriving after this long is abandoned, however it trickles.
    pub body_timeout: Duration,
    /// Connections open at once; more wait in the kernel's queue until one closes.
    pub max_connections: usize,
}

/// The `[sql]` table: who may query over HTTP, and what one query may cost.
#[derive(Debug, Clone)]
pub struct Sql {
    /// Bearer tokens for `POST /sql`; empty when SQL over HTTP is off.
    pub tokens: Vec<SqlToken>,
    /// A query still running after this long is cancelled.
    pub timeout: Duration,
    /// Memory one query may hold for joins, sorts and aggregations, and the largest batch
    /// of its answer.
    pub memory_limit: usize,
    /// Memory for answers on their way to clients, over every query of the process (HTTP
    /// and PostgreSQL): a query whose next batch does not fit waits for room.
    pub answer_memory: usize,
    /// Rows one HTTP answer may carry, so a careless `SELECT *` cannot exhaust the server.
    pub max_rows: usize,
    /// Queries that run at once over HTTP; more wait briefly, then get 503.
    pub max_concurrent: usize,
}

/// The `[postgres]` table: where PostgreSQL clients connect. They sign in with the `[sql]`
/// tokens and get the same limits.
#[derive(Debug, Clone)]
pub struct Postgres {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key; without them a client asking for TLS is told
    /// no, and one that requires it cannot connect.
    pub tls: Option<PostgresTls>,
    /// Refuse clients that do not use TLS: the default once a certificate is configured, as
    /// passwords would otherwise travel in clear text.
    pub tls_required: bool,
    /// Sessions open at once; more wait in the kernel's queue until one closes.
    pub max_connections: usize,
    /// A session that sends nothing for this long is closed: BI tools keep pools of idle
    /// connections, and one that was forgotten must not hold its place forever.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct PostgresTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A bearer token and the institutions whose rows it may see.
#[derive(Clone)]
pub struct SqlToken {
    /// `sql` for the token of the `[sql]` table itself, else the `[sql.tokens.NAME]` name.
    pub name: String,
    pub token: String,
    /// `None` sees every institution.
    pub institutions: Option<BTreeSet<String>>,
}

impl std::fmt::Debug for SqlToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SqlToken {{ name: {:?}, token: ***, institutions: {:?} }}",
            self.name, self.institutions
        )
    }
}

#[derive(Debug, Clone)]
pub struct Institution {
    pub timezone: chrono_tz::Tz,
    pub auth: Auth,
    /// How often S-360 pushes each stream: a stream quiet for 2 of these is late, for 3
    /// silent. `None` (`expect_every = "off"`) for a venue that pushes rarely.
    pub expect_every: Option<Duration>,
}

/// How S-360 proves it speaks for an institution. Secrets are resolved values, never the
/// name of an environment variable.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic { user: String, password: String },
    ApiKey { header: String, key: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { user, .. } => write!(f, "Basic {{ user: {user:?}, password: *** }}"),
            Auth::ApiKey { header, .. } => write!(f, "ApiKey {{ header: {header:?}, key: *** }}"),
        }
    }
}

/// The file as written, before validation. Unknown keys are refused so that a typo such as
/// `pasword_env` stops the start instead of silently disabling a secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_lake")]
    lake: String,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    #[serde(default = "default_compact_every")]
    compact_every: String,
    #[serde(default = "default_merge_after")]
    merge_after: String,
    #[serde(default = "default_compact_chunk_bytes")]
    compact_chunk_bytes: u64,
    #[serde(default = "default_lease_ttl")]
    lease_ttl: String,
    #[serde(default = "default_clock_tolerance")]
    clock_tolerance: String,
    #[serde(default)]
    institutions: BTreeMap<String, RawInstitution>,
    #[serde(default)]
    sql: RawSql,
    postgres: Option<RawPostgres>,
    #[serde(default = "default_header_timeout")]
    header_timeout: String,
    #[serde(default = "default_body_idle_timeout")]
    body_idle_timeout: String,
    #[serde(default = "default_body_timeout")]
    body_timeout: String,
    #[serde(default = "default_max_connections")]
    max_connections: u64,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    audit: RawAudit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// The variable that holds the signing key: a key is never written in the file.
    signing_key_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    token: Option<String>,
    token_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSql {
    token: Option<String>,
    token_env: Option<String>,
    #[serde(default = "default_sql_timeout")]
    timeout: String,
    memory_limit: Option<String>,
    answer_memory: Option<String>,
    #[serde(default = "default_sql_max_rows")]
    max_rows: u64,
    #[serde(default = "default_sql_max_concurrent")]
    max_concurrent: u64,
    #[serde(default)]
    tokens: BTreeMap<String, RawSqlToken>,
}

impl Default for RawSql {
    fn default() -> RawSql {
        RawSql {
            token: None,
            token_env: None,
            timeout: default_sql_timeout(),
            memory_limit: None,
            answer_memory: None,
            max_rows: default_sql_max_rows(),
            max_concurrent: default_sql_max_concurrent(),
            tokens: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    /// Required: a `[postgres]` table without an address would be a listener nobody asked
    /// for, or a typo.
    listen: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_required: Option<bool>,
    #[serde(default = "default_postgres_max_connections")]
    max_connections: u64,
    #[serde(default = "default_postgres_idle_timeout")]
    idle_timeout: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSqlToken {
    token: Option<String>,
    token_env: Option<String>,
    institutions: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstitution {
    #[serde(default = "default_timezone")]
    timezone: String,
    #[serde(default = "default_expect_every")]
    expect_every: String,
    /// Required: `auth = "none"` must be written out for a venue to be open.
    auth: Option<String>,
    user: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    header: Option<String>,
    key: Option<String>,
    key_env: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8360".into()
}
fn default_lake() -> String {
    "lake".into()
}
fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_compact_every() -> String {
    "60s".into()
}
fn default_compact_chunk_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_lease_ttl() -> String {
    "60s".into()
}
fn default_clock_tolerance() -> String {
    "5m".into()
}
fn default_merge_after() -> String {
    "1h".into()
}
fn default_sql_timeout() -> String {
    "30s".into()
}
fn default_sql_max_rows() -> u64 {
    100_000
}
fn default_sql_max_concurrent() -> u64 {
    4
}
fn default_postgres_max_connections() -> u64 {
    64
}
fn default_postgres_idle_timeout() -> String {
    "1h".into()
}
fn default_header_timeout() -> String {
    "30s".into()
}
fn default_body_idle_timeout() -> String {
    "60s".into()
}
fn default_body_timeout() -> String {
    "5m".into()
}
fn default_max_connections() -> u64 {
    1024
}
fn default_expect_every() -> String {
    "15m".into()
}
fn default_timezone() -> String {
    "UTC".into()
}

impl Config {
    /// Reads `path`; when `path` is the implicit default and the file does not exist, every
    /// key takes its default (no institutions are then declared).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let explicit = path.is_some();
        let path = path.unwrap_or(Path::new(DEFAULT_FILE));
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let base_dir = path.parent().unwrap_or(Path::new(""));
        Config::parse(&text, path, base_dir, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text`; `env` looks secrets up by variable name.
    pub fn parse(
        text: &str,
        path: &Path,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            problem,
        };

        let listen = raw.listen.parse().map_err(|e| {
            invalid(
                "listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:8360: {e}",
                    raw.listen
                ),
            )
        })?;
        let lake = resolve_lake(&raw.lake, base_dir).map_err(|p| invalid("lake", p))?;
        if raw.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be more than 0".into()));
        }
        let max_body_bytes = usize::try_from(raw.max_body_bytes)
            .map_err(|_| invalid("max_body_bytes", "too large for this machine".into()))?;
        let compact_every = match raw.compact_every.trim() {
            "off" => None,
            text => match humantime::parse_duration(text) {
                Ok(every) if every.is_zero() => {
                    return Err(invalid(
                        "compact_every",
                        "must be longer than 0; write \"off\" to disable".into(),
                    ));
                }
                Ok(every) => Some(every),
                Err(e) => {
                    return Err(invalid(
                        "compact_every",
                        format!("{text:?} is not a duration such as \"60s\" or \"off\": {e}"),
                    ));
                }
            },
        };

        let merge_after = humantime::parse_duration(raw.merge_after.trim()).map_err(|e| {
            invalid(
                "merge_after",
                format!(
                    "{:?} is not a duration such as \"1h\": {e}",
                    raw.merge_after
                ),
            )
        })?;
        if raw.compact_chunk_bytes == 0 {
            return Err(invalid("compact_chunk_bytes", "must be more than 0".into()));
        }
        let compact_chunk_bytes = usize::try_from(raw.compact_chunk_bytes)
            .map_err(|_| invalid("compact_chunk_bytes", "too large for this machine".into()))?;
        let lease_ttl = positive_duration(&raw.lease_ttl).map_err(|p| invalid("lease_ttl", p))?;
        let clock_tolerance = match raw.clock_tolerance.trim() {
            "off" => None,
            text => Some(positive_duration(text).map_err(|p| {
                invalid(
                    "clock_tolerance",
                    format!("{p}; write \"off\" to accept any clock"),
                )
            })?),
        };

        let mut institutions = BTreeMap::new();
        for (code, raw_institution) in raw.institutions {
            let prefix = format!("institutions.{code}");
            check_institution(&code).map_err(|e| invalid(&prefix, e.to_string()))?;
            let institution = raw_institution
                .validate(env)
                .map_err(|(key, problem)| invalid(&format!("{prefix}.{key}"), problem))?;
            institutions.insert(code, institution);
        }
        let sql = raw
            .sql
            .validate(&institutions, env)
            .map_err(|(key, problem)| invalid(&format!("sql.{key}"), problem))?;
        let postgres = raw
            .postgres
            .map(|postgres| postgres.validate(&sql, base_dir))
            .transpose()
            .map_err(|(key, problem)| invalid(&format!("postgres.{key}"), problem))?;
        let connections = Connections {
            header_timeout: positive_duration(&raw.header_timeout)
                .map_err(|p| invalid("header_timeout", p))?,
            body_idle_timeout: positive_duration(&raw.body_idle_timeout)
                .map_err(|p| invalid("body_idle_timeout", p))?,
            body_timeout: positive_duration(&raw.body_timeout)
                .map_err(|p| invalid("body_timeout", p))?,
            max_connections: positive_count(raw.max_connections)
                .map_err(|p| invalid("max_connections", p))?,
        };
        let metrics = raw.metrics;
        let metrics_token = match (&metrics.token, &metrics.token_env) {
            (None, None) => None,
            _ => Some(
                secret(
                    ("token", &metrics.token),
                    ("token_env", &metrics.token_env),
                    env,
                )
                .map_err(|(key, problem)| invalid(&format!("metrics.{key}"), problem))?,
            ),
        };

        let audit_signing_key_env = raw.audit.signing_key_env;
        let audit_signing_key = match audit_signing_key_env.as_deref().and_then(env) {
            None => None,
            Some(key) => {
                crate::eventlog::Signer::from_base64(&key).map_err(|problem| {
                    let variable = audit_signing_key_env.as_deref().unwrap_or_default();
                    invalid("audit.signing_key_env", format!("{variable} {problem}"))
                })?;
                Some(key)
            }
        };

        Ok(Config {
            listen,
            lake,
            max_body_bytes,
            compact_every,
            merge_after,
            compact_chunk_bytes,
            lease_ttl,
            clock_tolerance,
            institutions,
            sql,
            postgres,
            connections,
            metrics_token,
            audit_signing_key_env,
            audit_signing_key,
        })
    }
}

/// A count of more than zero that fits this machine.
fn positive_count(count: u64) -> Result<usize, String> {
    usize::try_from(count)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| "must be more than 0".to_string())
}

/// A duration such as `"30s"`, longer than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration longer than 0 such as \"30s\""))
}

/// Local paths become absolute against the configuration file's directory, so the same
/// file gives the same lake from any working directory.
fn resolve_lake(lake: &str, base_dir: &Path) -> Result<String, String> {
    if lake.trim().is_empty() {
        return Err("must name a directory or an s3://bucket/prefix URL".into());
    }
    if lake.contains("://") {
        return if lake.starts_with("s3://") {
            Ok(lake.to_string())
        } else {
            Err(format!(
                "{lake:?}: only local directories and s3:// URLs are supported"
            ))
        };
    }
    let path = base_dir.join(lake);
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map_err(|e| format!("cannot resolve {lake:?}: {e}"))?
            .join(path)
    };
    Ok(path.to_string_lossy().into_owned())
}

impl RawInstitution {
    /// Returns the resolved institution, or the failing key (relative to the institution)
    /// and the problem.
    fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Institution, (&'static str, String)> {
        let timezone = self.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
            (
                "timezone",
                format!(
                    "{:?} is not an IANA time zone such as \"Europe/Zurich\"",
                    self.timezone
                ),
            )
        })?;
        let Some(mode) = self.auth.as_deref() else {
            return Err((
                "auth",
                "is missing: write auth = \"none\" to accept pushes without credentials, or \"basic\" or \"api_key\"".into(),
            ));
        };
        let auth = match mode {
            "none" => {
                self.refuse_secret_keys(&[
                    "user",
                    "password",
                    "password_env",
                    "header",
                    "key",
                    "key_env",
                ])?;
                Auth::None
            }
            "basic" => {
                self.refuse_secret_keys(&["header", "key", "key_env"])?;
                let user = self
                    .user
                    .clone()
                    .filter(|u| !u.is_empty())
                    .ok_or(("user", "auth = \"basic\" needs a user".to_string()))?;
                if user.contains(':') {
                    return Err(("user", "a Basic user name cannot contain ':'".into()));
                }
                let password = secret(
                    ("password", &self.password),
                    ("password_env", &self.password_env),
                    env,
                )?;
                Auth::Basic { user, password }
            }
            "api_key" => {
                self.refuse_secret_keys(&["user", "password", "password_env"])?;
                let header = self.header.clone().ok_or((
                    "header",
                    "auth = \"api_key\" needs the header's name".to_string(),
                ))?;
                if warp::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err((
                        "header",
                        format!("{header:?} is not a valid HTTP header name"),
                    ));
                }
                let key = secret(("key", &self.key), ("key_env", &self.key_env), env)?;
                Auth::ApiKey {
                    header: header.to_ascii_lowercase(),
                    key,
                }
            }
            other => {
                return Err((
                    "auth",
                    format!("{other:?} is not one of \"none\", \"basic\", \"api_key\""),
                ));
            }
        };
        let expect_every = match self.expect_every.trim() {
            "off" => None,
            every => Some(positive_duration(every).map_err(|p| {
                (
                    "expect_every",
                    format!("{p}; write \"off\" for a venue that pushes rarely"),
                )
            })?),
        };
        Ok(Institution {
            timezone,
            auth,
            expect_every,
        })
    }

    /// Keys that belong to another auth mode are refused rather than ignored: a password
    /// left under `auth = "none"` means the operator believes the venue is protected.
    fn refuse_secret_keys(&self, keys: &[&'static str]) -> Result<(), (&'static str, String)> {
        for &key in keys {
            let present = match key {
                "user" => self.user.is_some(),
                "password" => self.password.is_some(),
                "password_env" => self.password_env.is_some(),
                "header" => self.header.is_some(),
                "key" => self.key.is_some(),
                "key_env" => self.key_env.is_some(),
                _ => unreachable!("unknown key {key}"),
            };
            if present {
                let mode = self.auth.as_deref().unwrap_or_default();
                return Err((key, format!("does not apply to auth = {mode:?}")));
            }
        }
        Ok(())
    }
}

impl RawPostgres {
    /// Returns the resolved table, or the failing key (relative to `postgres`) and the
    /// problem. Relative certificate paths are resolved against `base_dir`.
    fn validate(self, sql: &Sql, base_dir: &Path) -> Result<Postgres, (String, String)> {
        let listen = self.listen.parse().map_err(|e| {
            (
                "listen".to_string(),
                format!(
                    "{:?} is not an address such as 127.0.0.1:8361: {e}",
                    self.listen
                ),
            )
        })?;
        if sql.tokens.is_empty() {
            return Err((
                "listen".into(),
                "PostgreSQL clients sign in with the [sql] tokens, and there are none: give [sql] a token_env or add [sql.tokens.NAME]".into(),
            ));
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(PostgresTls {
                cert: base_dir.join(cert),
                key: base_dir.join(key),
            }),
            (Some(_), None) => {
                return Err(("tls_key".into(), "is needed with tls_cert".into()));
            }
            (None, Some(_)) => {
                return Err(("tls_cert".into(), "is needed with tls_key".into()));
            }
        };
        let tls_required = match (self.tls_required, &tls) {
            (Some(true), None) => {
                return Err(("tls_required".into(), "needs tls_cert and tls_key".into()));
            }
            (Some(required), _) => required,
            (None, tls) => tls.is_some(),
        };
        Ok(Postgres {
            listen,
            tls,
            tls_required,
            max_connections: positive_count(self.max_connections)
                .map_err(|p| ("max_connections".to_string(), p))?,
            idle_timeout: positive_duration(&self.idle_timeout)
                .map_err(|p| ("idle_timeout".to_string(), p))?,
        })
    }
}

/// The name of the `[sql]` table's own token, in logs and metrics.
pub const SQL_TABLE_TOKEN: &str = "sql";

/// The PostgreSQL user name of the `[sql]` table's own token.
pub const POSTGRES_USER_OF_SQL_TOKEN: &str = "datx";

impl RawSql {
    /// Returns the resolved table, or the failing key (relative to `sql`) and the problem.
    fn validate(
        self,
        institutions: &BTreeMap<String, Institution>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Sql, (String, String)> {
        let timeout =
            positive_duration(&self.timeout).map_err(|problem| ("timeout".to_string(), problem))?;
        let size = |key: &str, text: &Option<String>| match text {
            None => Ok(None),
            Some(text) => parse_size(text).map(Some).ok_or_else(|| {
                let problem = format!("{text:?} is not a size such as \"512MiB\"");
                (key.to_string(), problem)
            }),
        };
        let max_rows =
            positive_count(self.max_rows).map_err(|problem| ("max_rows".to_string(), problem))?;
        let max_concurrent = positive_count(self.max_concurrent)
            .map_err(|problem| ("max_concurrent".to_string(), problem))?;
        let machine = machine_memory();
        let memory_limit = size("memory_limit", &self.memory_limit)?
            .unwrap_or_else(|| default_memory_limit(machine, max_concurrent));
        let answer_memory = size("answer_memory", &self.answer_memory)?
            .unwrap_or_else(|| default_answer_memory(machine, memory_limit, max_concurrent));

        let mut tokens = Vec::new();
        if self.token.is_some() || self.token_env.is_some() {
            let token = secret(("token", &self.token), ("token_env", &self.token_env), env)
                .map_err(|(key, problem)| (key.to_string(), problem))?;
            tokens.push(SqlToken {
                name: SQL_TABLE_TOKEN.into(),
                token,
                institutions: None,
            });
        }
        for (name, raw) in self.tokens {
            let at = |key: &str| format!("tokens.{name}.{key}");
            // Both names stand for the [sql] table's own token (in the logs, and as the
            // PostgreSQL user): a scoped token by either name would be taken for it.
            if name == SQL_TABLE_TOKEN || name == POSTGRES_USER_OF_SQL_TOKEN {
                let problem = format!(
                    "{name:?} names the [sql] table's own token (`{SQL_TABLE_TOKEN}` in the logs, user `{POSTGRES_USER_OF_SQL_TOKEN}` over PostgreSQL): give this token another name"
                );
                return Err((format!("tokens.{name}"), problem));
            }
            let token = secret(("token", &raw.token), ("token_env", &raw.token_env), env)
                .map_err(|(key, problem)| (at(key), problem))?;
            let visible = match raw.institutions {
                None => None,
                Some(list) if list.is_empty() => {
                    let problem = "an empty list would see nothing; leave the key out to see every institution";
                    return Err((at("institutions"), problem.into()));
                }
                Some(list) => {
                    if let Some(unknown) = list.iter().find(|c| !institutions.contains_key(*c)) {
                        let problem = format!("{unknown:?} is not a declared institution");
                        return Err((at("institutions"), problem));
                    }
                    Some(list.into_iter().collect())
                }
            };
            tokens.push(SqlToken {
                name,
                token,
                institutions: visible,
            });
        }
        // Two names for one secret would make the token's scope depend on which is found first.
        for (i, token) in tokens.iter().enumerate() {
            if let Some(twin) = tokens[..i].iter().find(|t| t.token == token.token) {
                let problem = format!("has the same secret as {:?}", twin.name);
                return Err((format!("tokens.{}", token.name), problem));
            }
        }
        Ok(Sql {
            tokens,
            timeout,
            memory_limit,
            answer_memory,
            max_rows,
            max_concurrent,
        })
    }
}

/// One query's memory when `sql.memory_limit` is not set: the queries that may run at once
/// share a quarter of the machine for their work, and as much again is the default
/// `answer_memory`, so SQL takes at most half of it and receiving always has the rest (but
/// on a machine under 512 MiB, where each query gets the 32 MiB it needs at least).
fn default_memory_limit(machine: usize, max_concurrent: usize) -> usize {
    (machine / 4 / max_concurrent).max(32 << 20)
}

/// The answers' memory when `sql.answer_memory` is not set: one query's share per query
/// that may run, within a quarter of the machine (and never under one query's share).
fn default_answer_memory(machine: usize, memory_limit: usize, max_concurrent: usize) -> usize {
    memory_limit
        .saturating_mul(max_concurrent)
        .min(machine / 4)
        .max(memory_limit)
}

/// The memory this process may use: the cgroup's limit when there is one (a container),
/// else the machine's. 8 GiB when neither can be read.
fn machine_memory() -> usize {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok());
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    match (cgroup, machine) {
        (Some(limit), Some(machine)) => limit.min(machine),
        (limit, machine) => limit.or(machine).unwrap_or(8 << 30),
    }
}

/// `"512MiB"`, `"2GiB"`, `"1.5GB"` or a plain byte count, as bytes.
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * scale;
    (bytes >= 1.0 && bytes < usize::MAX as f64).then_some(bytes as usize)
}

/// A secret given inline or through an environment variable, exactly one of the two.
fn secret(
    (inline_key, inline): (&'static str, &Option<String>),
    (env_key, env_name): (&'static str, &Option<String>),
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (&'static str, String)> {
    let value = match (inline, env_name) {
        (Some(_), Some(_)) => {
            return Err((
                env_key,
                format!("give either `{inline_key}` or `{env_key}`, not both"),
            ));
        }
        (Some(value), None) => value.clone(),
        (None, Some(name)) => {
            env(name).ok_or((env_key, format!("environment variable {name} is not set")))?
        }
        (None, None) => {
            return Err((inline_key, format!("is required (or `{env_key}`)")));
        }
    };
    if value.is_empty() {
        return Err((inline_key, "must not be empty".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("datx.toml"), Path::new("/srv"), &|name| {
            (name == "SET").then(|| "s3cret".to_string())
        })
    }

    fn problem(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_takes_every_default() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8360");
        assert_eq!(config.lake, "/srv/lake");
        assert_eq!(config.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(config.compact_every, Some(Duration::from_secs(60)));
        assert!(config.institutions.is_empty());
    }

    #[test]
    fn the_three_auth_modes_resolve_their_secrets() {
        let config = parse(
            r#"
            compact_every = "off"
            lake = "s3://bucket/prefix"
            [institutions.a]
            timezone = "Europe/Zurich"
            auth = "none"
            [institutions.b]
            auth = "basic"
            user = "s360"
            password_env = "SET"
            [institutions.c]
            auth = "api_key"
            header = "X-Api-Key"
            key = "inline"
            "#,
        )
        .unwrap();
        assert_eq!(config.compact_every, None);
        assert_eq!(config.lake, "s3://bucket/prefix");
        assert_eq!(config.institutions["a"].timezone, chrono_tz::Europe::Zurich);
        assert_eq!(config.institutions["a"].auth, Auth::None);
        assert_eq!(
            config.institutions["b"].auth,
            Auth::Basic {
                user: "s360".into(),
                password: "s3cret".into()
            }
        );
        assert_eq!(
            config.institutions["c"].auth,
            Auth::ApiKey {
                header: "x-api-key".into(),
                key: "inline".into()
            }
        );
        assert!(!format!("{:?}", config.institutions["b"]).contains("s3cret"));
    }

    #[test]
    fn sql_tokens_carry_their_institutions() {
        let config = parse(
            r#"
            [institutions.a]
            auth = "none"
            [institutions.b]
            auth = "none"
            [sql]
            token_env = "SET"
            timeout = "5s"
            memory_limit = "512MiB"
            [sql.tokens.venue_a]
            token = "only-a"
            institutions = ["a"]
            "#,
        )
        .unwrap();
        let sql = &config.sql;
        assert_eq!(sql.timeout, Duration::from_secs(5));
        assert_eq!(sql.memory_limit, 512 * 1024 * 1024);
        assert_eq!(sql.tokens.len(), 2);
        assert_eq!(
            (sql.tokens[0].token.as_str(), &sql.tokens[0].institutions),
            ("s3cret", &None)
        );
        let only_a = BTreeSet::from(["a".to_string()]);
        assert_eq!(sql.tokens[1].institutions, Some(only_a));
        assert!(parse("").unwrap().sql.tokens.is_empty());
        assert_eq!(parse_size("1.5GB"), Some(1_500_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("3 parsecs"), None);
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let cases = [
            ("listen = \"nowhere\"", "`listen`"),
            ("max_body_bytes = 0", "`max_body_bytes`"),
            ("compact_every = \"soon\"", "`compact_every`"),
            ("lake = \"ftp://x\"", "`lake`"),
            ("[institutions.\"a/b\"]", "`institutions.a/b`"),
            (
                "[institutions.v]\ntimezone = \"Mars/Base\"\nauth = \"none\"",
                "`institutions.v.timezone`",
            ),
            (
                "[institutions.v]\nauth = \"token\"",
                "`institutions.v.auth`",
            ),
            (
                "[institutions.v]\nauth = \"basic\"\npassword = \"p\"",
                "`institutions.v.user`",
            ),
            (
                "[institutions.v]\nauth = \"basic\"\nuser = \"u\"\npassword_env = \"UNSET\"",
                "environment variable UNSET is not set",
            ),
            (
                "[institutions.v]\nauth = \"api_key\"\nkey = \"k\"",
                "`institutions.v.header`",
            ),
            (
                "[institutions.v]\nauth = \"api_key\"\nheader = \"bad header\"\nkey = \"k\"",
                "`institutions.v.header`",
            ),
            (
                "[institutions.v]\nauth = \"none\"\npassword = \"p\"",
                "`institutions.v.password`",
            ),
            (
                "[institutions.v]\ntimezone = \"UTC\"",
                "`institutions.v.auth`: is missing",
            ),
            ("[sql]\ntimeout = \"0s\"", "`sql.timeout`"),
            (
                "[institutions.v]\nauth = \"none\"\nexpect_every = \"often\"",
                "`institutions.v.expect_every`",
            ),
            ("[postgres]\nlisten = \"127.0.0.1:0\"", "`postgres.listen`"),
            (
                "[sql]\ntoken = \"t\"\n[postgres]\nlisten = \"127.0.0.1:0\"\ntls_required = true",
                "`postgres.tls_required`",
            ),
            ("[sql]\nmax_concurrent = 0", "`sql.max_concurrent`"),
            ("header_timeout = \"0s\"", "`header_timeout`"),
            ("body_idle_timeout = \"soon\"", "`body_idle_timeout`"),
            ("max_connections = 0", "`max_connections`"),
            ("[metrics]\ntoken_env = \"UNSET\"", "`metrics.token_env`"),
            ("[sql]\nmemory_limit = \"lots\"", "`sql.memory_limit`"),
            (
                "[sql.tokens.t]\ntoken = \"x\"\ninstitutions = [\"nowhere\"]",
                "`sql.tokens.t.institutions`",
            ),
            (
                "[sql]\ntoken = \"x\"\n[sql.tokens.t]\ntoken = \"x\"",
                "`sql.tokens.t`",
            ),
            ("[sql.tokens.t]\ninstitutions = []", "`sql.tokens.t.token`"),
            // Scoped or not, a token may not take the [sql] table's own names.
            (
                "[institutions.v]\nauth = \"none\"\n[sql.tokens.sql]\ntoken = \"x\"\ninstitutions = [\"v\"]",
                "`sql.tokens.sql`: \"sql\" names the [sql] table's own token",
            ),
            ("[sql.tokens.datx]\ntoken = \"x\"", "`sql.tokens.datx`"),
        ];
        for (text, expected) in cases {
            let message = problem(text);
            assert!(message.contains(expected), "{text:?} gave {message:?}");
        }
        assert!(problem("[institutions.v]\npasword_env = \"X\"").contains("pasword_env"));
    }
}
