//! The `datx` command line: parses arguments, loads the configuration, runs one command.
//!
//! Owns how results are shown to a person (tables, JSON lines) and exit codes. It must
//! never implement storage or HTTP behaviour itself: each command calls one module.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::TryStreamExt;
use uuid::Uuid;

use crate::compact::{Compactor, PassSummary};
use crate::config::Config;
use crate::eventlog::{ChainLink, EventFilter, EventLog, PublicKey, VerifyWith};
use crate::query::output::{Format, TextEncoder};
use crate::query::{Batches, QueryEngine, Visibility};
use crate::replay::{ReplayError, ReplayOptions, TargetAuth};
use crate::simulate::SimulateOptions;
use crate::store::Store;
use crate::stream::Stream;
use crate::tables::Table;

#[derive(Debug, Parser)]
#[command(
    name = "datx",
    version,
    about = "Receive S-360 webhooks into an immutable event log, the base of a SQL lake",
    long_about = "Receive S-360 webhooks into an immutable event log, the base of a SQL lake.\n\n\
        S-360 posts contacts, orders and ticket checks to /s360/{stream}/{institution}; datx \
        answers 200 only once the body is durably stored, byte for byte, with its envelope \
        (event id, stream, institution, received-at, SHA-256, record count).\n\n\
        Every command reads datx.toml from the working directory, or the file given with \
        --config. Set RUST_LOG (e.g. RUST_LOG=debug) for more detailed logs."
)]
pub struct Cli {
    /// Configuration file [default: datx.toml in the working directory]
    #[arg(long, global = true, value_name = "PATH", env = "DATX_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive S-360 pushes over HTTP, with /healthz and /metrics, until Ctrl-C or SIGTERM
    Serve,
    /// Run one compaction pass: every event not yet compacted lands in the Parquet tables
    Compact,
    /// Recompute every table from the whole event log into one new commit
    Rebuild,
    /// Run SQL over the tables of the latest compaction commit (read-only)
    #[command(
        long_about = "Run SQL over the tables of the latest compaction commit.\n\n\
        Tables: contacts, orders, order_movements, ticket_checks, rejects, each with the \
        partition columns institution and date; views: contacts_current and orders_current \
        (the latest body received per contact or order). Statements come from the argument, \
        from --file, or else from standard input, separated by ';'. Only reading statements \
        are run. The limits of [sql] in datx.toml (timeout, memory_limit) apply.\n\n\
        Exits 1 with DataFusion's message when a statement fails."
    )]
    Sql {
        /// One statement, e.g. "SELECT count(*) FROM ticket_checks"
        statement: Option<String>,
        /// Read statements from this file, e.g. queries/freshness.sql
        #[arg(short, long, value_name = "PATH", conflicts_with = "statement")]
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Inspect the raw event log
    #[command(subcommand)]
    Events(EventsCommand),
    /// Send stored events again, byte for byte, in received order, to an S-360 webhook URL
    #[command(
        long_about = "Send stored events again, byte for byte, in the order they were \
        received, to any endpoint that speaks the S-360 webhook contract: another datx \
        (its /s360), a fixed version of this one, a new system.\n\n\
        Each body goes to TO/{stream}/{institution}, or to TO with its {stream} and \
        {institution} replaced, in received order: up to --concurrency in flight, never two \
        of one stream and institution, so the target sees each stream's order too. \
        A refused body (not 2xx, or no answer) is tried again with a \
        growing wait; after --tries the replay stops with exit status 1, naming the event. \
        Stopped or killed, a replay run again with the same arguments goes on where it \
        stopped (the cursor is a file in the working directory, or --state). Delivery is \
        at least once: the bodies in flight at a kill (at most --concurrency) are sent \
        again, which datx, deduplicating by body, absorbs."
    )]
    Replay(ReplayArgs),
    /// Send realistic S-360 traffic for the institutions of datx.toml (no S-360 needed)
    #[command(
        long_about = "Send realistic S-360 traffic for the institutions of datx.toml, with \
        their configured credentials, so that a datx (this one, by default) receives what a \
        venue would send: contacts (sent again when they change), orders with operations and \
        movements (sales, reservations, refunds), and gate checks of sold tickets at \
        performances on the hour in the venue's zone.\n\n\
        Like S-360, it pushes each stream every --every in bodies of at most 50 records, and \
        sends a refused body again at the next push (12 times, then gives it up); it exits \
        with status 1 when a body was given up or still waits at the end. Each push \
        carries 15 minutes of a venue's activity, whatever --every is, so a demo with \
        --every 5s shows a busy venue. --backfill-since first sends the history from that \
        day, as a first-time synchronisation does. The same --seed gives the same history \
        (with --backfill-until fixing its end); live pushes take ids from the clock, so a \
        run started again never reuses one."
    )]
    Simulate(SimulateArgs),
    /// The status page's figures: each stream of each institution, arriving or not
    #[command(long_about = "The status page's figures on the command line.\n\n\
        For every stream of every institution of datx.toml: when a body was last received and \
        the state against the institution's expect_every (ok, late: no body for 2 intervals, \
        silent: 3, or unwatched: expect_every = \"off\"); bodies and records of the last 24 \
        hours; pushes refused by HTTP status; rows in rejects; events not yet in the tables \
        and the oldest of them; the last commit that took the stream's events.\n\n\
        The figures come from the running datx serve at this configuration's listen address \
        (or --from URL), with the [metrics] token when one is set. When none answers, they \
        are read from the lake, without refusals: only a running serve counts those. Exits \
        with status 1 when a stream is late or silent, for scripts.")]
    Status {
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
        /// The status page of a running datx serve [default: http://LISTEN/ of datx.toml]
        #[arg(long, value_name = "URL", conflicts_with = "lake")]
        from: Option<String>,
        /// Read the lake, even when a datx serve is running (refusals are then unknown)
        #[arg(long)]
        lake: bool,
    },
    /// The key that signs the digests of sealed event-log days
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print the public key of [audit] signing_key_env, for auditors to keep elsewhere
    PublicKey,
    /// Print a new signing key (base64 PKCS#8), to put in the variable signing_key_env names
    NewKey,
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// The target: http://host:port/s360, or a URL with {stream} and {institution} in it
    /// [default: http://LISTEN/s360, LISTEN from datx.toml]
    #[arg(long, value_name = "URL")]
    to: Option<String>,
    /// Time between two pushes of each stream (S-360 pushes every 15 minutes)
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_every)]
    every: Duration,
    /// Seed of the simulated world: the same seed gives the same records
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// First send the history from this day (YYYY-MM-DD), as a first-time synchronisation
    #[arg(long, value_name = "DATE")]
    backfill_since: Option<NaiveDate>,
    /// End the history at this instant (RFC 3339) instead of now, for a repeatable run
    #[arg(long, value_name = "INSTANT", requires = "backfill_since")]
    backfill_until: Option<DateTime<Utc>>,
    /// Stop after this many pushes [default: run until stopped]
    #[arg(long, value_name = "N")]
    pushes: Option<u64>,
    /// Simulate only this institution (repeat for more) [default: all of datx.toml]
    #[arg(long = "institution", value_name = "CODE")]
    institutions: Vec<String>,
}

fn parse_every(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(every) if every >= Duration::from_millis(100) => Ok(every),
        Ok(_) => Err("must be at least 100ms".into()),
        Err(e) => Err(format!("{text:?} is not a duration such as 15m or 5s: {e}")),
    }
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The target: http://host:port/s360, or a URL with {stream} and {institution} in it
    #[arg(long, value_name = "URL")]
    to: String,
    #[command(flatten)]
    filter: FilterArgs,
    /// HTTP Basic credentials for the target
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "DATX_REPLAY_BASIC",
        hide_env_values = true
    )]
    basic: Option<String>,
    /// An API key header for the target
    #[arg(
        long,
        value_name = "HEADER:KEY",
        env = "DATX_REPLAY_API_KEY",
        hide_env_values = true,
        conflicts_with = "basic"
    )]
    api_key: Option<String>,
    /// Bodies per second at most [default: as fast as the target answers]
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Bodies in flight at once (never two of one stream and institution)
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Tries per body before the replay stops (waits double from 0.5 s to 30 s)
    #[arg(long, default_value_t = 8)]
    tries: u32,
    /// The cursor file [default: .datx-replay-HASH.json in the working directory, HASH from
    /// the target and filters]
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// List stored events, oldest first within each stream, institution and day
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Output format
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Print one event: its envelope as JSON, a blank line, then the body as stored
    Show {
        /// The event id (a UUID, as answered to S-360)
        id: Uuid,
        /// Print only the body, byte for byte (for piping or diffing)
        #[arg(long)]
        body: bool,
    },
    /// Check every body against its envelope and receipt, every sealed day against its
    /// digest, the chain of digests and its head, and every signature; exits with status 1
    /// and the list of what does not match. The format is written in docs/audit-format.md
    Verify {
        #[command(flatten)]
        filter: FilterArgs,
        /// The auditor's copy of a signing public key (hex, as `datx audit public-key`
        /// prints it), optionally with the days it signed: HEX@2026-01-01..2026-06-30
        /// (either end may be left out). Every digest, receipt, head and late arrival's
        /// record must carry a valid signature by a key whose period covers its day. Repeat
        /// it (or separate keys with commas) for the keys before and after a rotation
        #[arg(
            long,
            value_name = "HEX[@FROM..UNTIL]",
            env = "DATX_AUDIT_PUBLIC_KEY",
            value_delimiter = ','
        )]
        public_key: Vec<PublicKey>,
        /// Check without a public key: the lake against itself only, which anyone able to
        /// write to it can make pass. Without a key and without this, verify refuses
        #[arg(long, conflicts_with = "public_key")]
        unsigned: bool,
        /// The auditor's record of chain heads, kept outside the lake: every head it holds
        /// must still be in its chain (a chain may grow, never shrink or fork). Created
        /// when missing, and brought up to the chains' ends after a run without mismatches
        #[arg(long, value_name = "FILE")]
        heads: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// Only this stream
    #[arg(long, value_parser = parse_stream)]
    stream: Option<Stream>,
    /// Only this institution
    #[arg(long)]
    institution: Option<String>,
    /// Only events received at or after this date (YYYY-MM-DD, UTC) or instant (RFC 3339)
    #[arg(long, value_parser = parse_instant)]
    since: Option<DateTime<Utc>>,
    /// Only events received before this date (YYYY-MM-DD, UTC: that day excluded) or instant
    #[arg(long, value_parser = parse_instant)]
    until: Option<DateTime<Utc>>,
}

impl FilterArgs {
    fn into_filter(self) -> EventFilter {
        EventFilter {
            stream: self.stream,
            institution: self.institution,
            since: self.since,
            until: self.until,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusFormat {
    /// Aligned columns for reading
    Table,
    /// One JSON object per stream and institution, a line each, for scripts
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListFormat {
    /// Aligned columns for reading
    Table,
    /// One JSON envelope per line, for scripts
    Json,
    /// Comma-separated, with a header line, for spreadsheets
    Csv,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|rate| rate.is_finite() && *rate > 0.0 && *rate <= 1000.0)
        .ok_or_else(|| format!("{text:?} is not a rate between 0 and 1000 bodies per second"))
}

fn parse_stream(text: &str) -> Result<Stream, String> {
    text.parse()
        .map_err(|e: crate::stream::UnknownStream| e.to_string())
}

fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| format!("{text:?} is neither YYYY-MM-DD nor an RFC 3339 instant"))
}

/// Parses the command line, runs the command and maps failures to an exit status: 1 for a
/// failed check (`events verify`) or a failed statement (`sql`), 2 for anything that
/// stopped the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("datx: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can start");
    match runtime.block_on(run(cli.command, config)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("datx: {message}");
            ExitCode::from(2)
        }
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run(command: Command, config: Config) -> Result<ExitCode, String> {
    if matches!(
        command,
        Command::Serve | Command::Compact | Command::Rebuild
    ) {
        // They seal days: their digests must be signed if the configuration says so.
        config.audit_signer()?;
    }
    match command {
        Command::Serve => {
            crate::serve::serve(config)
                .await
                .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Compact | Command::Rebuild => {
            let store = Store::open(&config.lake).map_err(|e| e.to_string())?;
            store.check_create_only().await.map_err(|e| e.to_string())?;
            // The store's time, so that no day is sealed by a clock ahead of it.
            let clock = std::sync::Arc::new(crate::clock::ClockCheck::new(config.clock_tolerance));
            let probe = crate::health::LakeProbe::new(store.clone(), clock.clone());
            probe.writable().await?;
            let compactor = Compactor::new(store, &config).with_clock(clock);
            let summary = match command {
                Command::Rebuild => compactor.rebuild().await,
                _ => compactor.pass().await,
            }
            .map_err(|e| e.to_string())?;
            print_summary(&summary);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sql {
            statement,
            file,
            format,
        } => {
            let text = match (statement, file) {
                (Some(statement), _) => statement,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                (None, None) => std::io::read_to_string(std::io::stdin())
                    .map_err(|e| format!("cannot read standard input: {e}"))?,
            };
            let store = Store::open_existing(&config.lake).map_err(|e| e.to_string())?;
            let engine = QueryEngine::new(store, config.sql).map_err(|e| e.to_string())?;
            sql(&engine, &text, format).await
        }
        Command::Status { format, from, lake } => {
            let overview = match lake {
                true => None,
                false => {
                    let page =
                        from.unwrap_or_else(|| format!("http://{}/", local_address(config.listen)));
                    asked_of_serve(&page, config.metrics_token.as_deref()).await?
                }
            };
            let overview = match overview {
                Some(overview) => overview,
                None => {
                    let store = Store::open_existing(&config.lake).map_err(|e| e.to_string())?;
                    read_from_lake(&config, store).await?
                }
            };
            print_status(&overview, format)
        }
        Command::Events(events) => {
            let store = Store::open_existing(&config.lake).map_err(|e| e.to_string())?;
            let log = EventLog::new(store);
            match events {
                EventsCommand::List { filter, format } => {
                    list(&log, &filter.into_filter(), format).await
                }
                EventsCommand::Show { id, body } => show(&log, id, body).await,
                EventsCommand::Verify {
                    filter,
                    public_key,
                    unsigned,
                    heads,
                } => {
                    if public_key.is_empty() && !unsigned {
                        return Err("no --public-key: without the auditor's copy of the key, verify can show that the lake agrees with itself, not that it is what was received (anyone who can write to the lake can rewrite it to pass). Give --public-key HEX (datx audit public-key prints it), or --unsigned to check only that".into());
                    }
                    verify(&log, &filter.into_filter(), &public_key, heads.as_deref()).await
                }
            }
        }
        Command::Simulate(args) => {
            let options = SimulateOptions {
                to: args
                    .to
                    .unwrap_or_else(|| format!("http://{}/s360", config.listen)),
                every: args.every,
                seed: args.seed,
                backfill_since: args.backfill_since,
                backfill_until: args.backfill_until,
                pushes: args.pushes,
                institutions: args.institutions,
            };
            let summary = crate::simulate::simulate(&config, &options)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "sent {} bodies ({} records); {} refusals, {} bodies given up, {} still waiting",
                summary.bodies, summary.records, summary.refused, summary.given_up, summary.waiting
            );
            // Bodies that never arrived are a failed delivery, as they would be for S-360.
            Ok(match summary.given_up + summary.waiting {
                0 => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            })
        }
        Command::Replay(args) => {
            let store = Store::open_existing(&config.lake).map_err(|e| e.to_string())?;
            replay(&EventLog::new(store), args).await
        }
        Command::Audit(AuditCommand::NewKey) => {
            println!("{}", crate::eventlog::Signer::new_key());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::PublicKey) => match config.audit_signer()? {
            Some(signer) => {
                println!("{}", signer.public_key_hex());
                Ok(ExitCode::SUCCESS)
            }
            None => Err("no signing key: set [audit] signing_key_env in the configuration".into()),
        },
    }
}

/// The address to reach this configuration's `serve` at: its own, or the loopback one
/// when it listens on every interface.
fn local_address(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            (std::net::Ipv4Addr::LOCALHOST, listen.port()).into()
        }
        ip if ip.is_unspecified() => (std::net::Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// The overview a running `serve` gives at `page`; `None` when nothing listens there.
async fn asked_of_serve(
    page: &str,
    token: Option<&str>,
) -> Result<Option<crate::status::Overview>, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = client.get(page).header("accept", "application/json");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(e) if e.is_connect() => {
            eprintln!(
                "datx: no datx serve answers at {page}: figures read from the lake; refusals are counted by a running serve only"
            );
            return Ok(None);
        }
        Err(e) => return Err(format!("{page}: {e}")),
    };
    let status = answer.status();
    let body = answer.bytes().await.map_err(|e| format!("{page}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{page} answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        ));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| format!("{page} did not answer with datx status figures: {e}"))
}

/// The overview from the lake alone: the commit state and the log's recent days.
async fn read_from_lake(config: &Config, store: Store) -> Result<crate::status::Overview, String> {
    use crate::status::{SEEDED_DAYS, StatusBoard};
    let now = chrono::Utc::now();
    let log = EventLog::new(store.clone());
    // A stream with no body in the days read has been quiet at least that long.
    let board = StatusBoard::new(config, now - chrono::Duration::days(SEEDED_DAYS), None);
    let commits = crate::commit::CommitLog::new(store);
    let charted = board
        .seed(&log, &commits, now)
        .await
        .map_err(|e| e.to_string())?;
    board.count_records(&log, charted).await;
    Ok(board.overview(now))
}

fn print_status(
    overview: &crate::status::Overview,
    format: StatusFormat,
) -> Result<ExitCode, String> {
    use crate::status::State;
    use crate::status::page::ago;
    let mut out = std::io::stdout().lock();
    let age = |seconds: Option<f64>| seconds.map_or_else(|| "-".to_string(), |s| ago(s as i64));
    match format {
        StatusFormat::Json => {
            for source in &overview.sources {
                let line = serde_json::to_string(source).expect("a status serialises");
                writeln!(out, "{line}").map_err(|e| e.to_string())?;
            }
        }
        StatusFormat::Table => {
            writeln!(
                out,
                "{:<16} {:<13} {:<9} {:>10} {:>7} {:>8} {:>10} {:>8} {:>5} {:>17} {:>15}",
                "institution",
                "stream",
                "state",
                "last body",
                "bodies",
                "records",
                "refused",
                "rejects",
                "late",
                "not in tables",
                "last commit"
            )
            .map_err(|e| e.to_string())?;
            for source in &overview.sources {
                let refused = source.refusals_24h.as_ref().map_or_else(
                    || "?".to_string(),
                    |by_status| by_status.values().sum::<u64>().to_string(),
                );
                let pending = match source.pending_events {
                    0 => "0".to_string(),
                    events => format!("{events}, {}", age(source.oldest_pending_age_seconds)),
                };
                let commit = source.last_commit.map_or_else(
                    || "-".to_string(),
                    |c| match c.committed_at {
                        Some(at) => format!(
                            "#{}, {}",
                            c.version,
                            ago((overview.generated_at - at).num_seconds())
                        ),
                        None => format!("#{}", c.version),
                    },
                );
                writeln!(
                    out,
                    "{:<16} {:<13} {:<9} {:>10} {:>7} {:>8} {:>10} {:>8} {:>5} {:>17} {:>15}",
                    source.institution,
                    source.stream.as_str(),
                    source.state.name(),
                    age(source.last_body_age_seconds),
                    source.bodies_24h,
                    source.records_24h,
                    refused,
                    source.rejects,
                    source.late_arrivals,
                    pending,
                    commit
                )
                .map_err(|e| e.to_string())?;
            }
            writeln!(
                out,
                "\nbodies, records and refused: this hour and the 23 before (UTC); late: events stored in days already sealed (a receiver's clock was behind), taken in since; not in tables: events not yet committed, and the oldest's age"
            )
            .map_err(|e| e.to_string())?;
            if overview.refusals_since.is_none() {
                writeln!(
                    out,
                    "refused: ? when read from the lake; a running datx serve counts them"
                )
                .map_err(|e| e.to_string())?;
            }
        }
    }
    let quiet = overview
        .sources
        .iter()
        .any(|s| matches!(s.state, State::Late | State::Silent));
    Ok(if quiet {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn replay(log: &EventLog, args: ReplayArgs) -> Result<ExitCode, String> {
    let auth = match (args.basic, args.api_key) {
        (Some(basic), _) => {
            let (user, password) = basic.split_once(':').ok_or("--basic takes USER:PASSWORD")?;
            TargetAuth::Basic {
                user: user.into(),
                password: password.into(),
            }
        }
        (None, Some(api_key)) => {
            let (header, key) = api_key
                .split_once(':')
                .ok_or("--api-key takes HEADER:KEY")?;
            TargetAuth::ApiKey {
                header: header.trim().into(),
                key: key.trim().into(),
            }
        }
        (None, None) => TargetAuth::None,
    };
    let mut options = ReplayOptions {
        to: args.to,
        filter: args.filter.into_filter(),
        auth,
        rate: args.rate,
        concurrency: args.concurrency,
        tries: args.tries,
        cursor: PathBuf::new(),
    };
    options.cursor = args.state.unwrap_or_else(|| {
        let identity = options.identity(log.store().location());
        let hash = crate::eventlog::sha256_hex(identity.as_bytes());
        PathBuf::from(format!(".datx-replay-{}.json", &hash[..12]))
    });
    match crate::replay::replay(log, &options).await {
        Ok(summary) => {
            println!(
                "{} bodies ({} bytes) replayed in {:.1} s ({:.1}/s); {} delivered by an earlier run",
                summary.sent,
                summary.bytes,
                summary.seconds,
                summary.sent as f64 / summary.seconds.max(1e-9),
                summary.skipped
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ ReplayError::Refused { .. }) => {
            eprintln!("datx: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Runs each statement in turn and prints its answer; stops at the first that fails.
async fn sql(engine: &QueryEngine, text: &str, format: Format) -> Result<ExitCode, String> {
    let statements = match crate::query::statements(text) {
        Ok(statements) if statements.is_empty() => return Err("no SQL statement given".into()),
        Ok(statements) => statements,
        Err(e) => {
            eprintln!("datx: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut out = std::io::stdout().lock();
    let failed = |e: crate::query::QueryError| {
        eprintln!("datx: {e}");
        Ok(ExitCode::from(1))
    };
    let unwritable = |e: std::io::Error| format!("cannot write the answer: {e}");
    for statement in statements {
        let started = std::time::Instant::now();
        // CSV and JSON go out as they are produced; a table waits for its widest value.
        let Some(encoder) = TextEncoder::new(format) else {
            let answer = match engine
                .run(statement, vec![], Visibility::All, None, Batches)
                .await
            {
                Ok(answer) => answer,
                Err(e) => return failed(e),
            };
            let schema = answer.schema.clone();
            let batches = match answer.collect().await {
                Ok(batches) => batches,
                Err(e) => return failed(e),
            };
            let table =
                crate::query::output::table(&schema, &batches).map_err(|e| e.to_string())?;
            writeln!(out, "{table}").map_err(unwritable)?;
            out.flush().map_err(unwritable)?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "({rows} row{}, {seconds:.3} s)",
                if rows == 1 { "" } else { "s" }
            );
            continue;
        };
        let mut answer = match engine
            .run(statement, vec![], Visibility::All, None, encoder)
            .await
        {
            Ok(answer) => answer,
            Err(e) => return failed(e),
        };
        while let Some(chunk) = answer.next().await {
            match chunk {
                Ok(held) => out.write_all(&held.chunk).map_err(unwritable)?,
                Err(e) => return failed(e),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(summary: &PassSummary) {
    println!(
        "{} events consumed ({} duplicate bodies) in {:.2} s; {} files written, {} merged; {} commits, lake at version {}",
        summary.events,
        summary.duplicate_events,
        summary.seconds,
        summary.files_written,
        summary.files_merged,
        summary.commits,
        summary.version
    );
    for table in Table::ALL {
        let rows = summary.rows.get(table.name()).copied().unwrap_or(0);
        println!("  {:<16} {rows:>10} rows", table.name());
    }
    if summary.replaced_rows > 0 {
        println!(
            "  {} rows replaced an earlier row with the same unique key (the later one is kept)",
            summary.replaced_rows
        );
    }
}

async fn list(
    log: &EventLog,
    filter: &EventFilter,
    format: ListFormat,
) -> Result<ExitCode, String> {
    let mut out = std::io::stdout().lock();
    let write_error = |e: std::io::Error| e.to_string();
    match format {
        ListFormat::Table => writeln!(
            out,
            "{:<36}  {:<24}  {:<12}  {:<16}  {:>7}  {:>9}  SHA-256",
            "EVENT ID", "RECEIVED AT (UTC)", "STREAM", "INSTITUTION", "RECORDS", "BYTES"
        ),
        ListFormat::Csv => writeln!(
            out,
            "event_id,received_at,stream,institution,records,body_bytes,sha256"
        ),
        ListFormat::Json => Ok(()),
    }
    .map_err(write_error)?;
    let mut count = 0usize;
    let mut days = std::pin::pin!(log.list(filter));
    while let Some(keys) = days.try_next().await.map_err(|e| e.to_string())? {
        for key in keys {
            let envelope = match log.read_envelope(&key).await {
                Ok(envelope) => envelope,
                // One damaged event must not hide the others: `events verify` reports it.
                Err(e @ crate::eventlog::EventLogError::Corrupt { .. }) => {
                    eprintln!("datx: skipped {e}");
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            match format {
                ListFormat::Table => writeln!(
                    out,
                    "{:<36}  {:<24}  {:<12}  {:<16}  {:>7}  {:>9}  {}",
                    envelope.event_id,
                    envelope.received_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    envelope.stream,
                    envelope.institution,
                    envelope.records,
                    envelope.body_bytes,
                    envelope.sha256
                ),
                ListFormat::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&envelope).expect("an envelope serialises")
                ),
                // Stream names and institution codes hold no comma or quote.
                ListFormat::Csv => writeln!(
                    out,
                    "{},{},{},{},{},{},{}",
                    envelope.event_id,
                    envelope
                        .received_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    envelope.stream,
                    envelope.institution,
                    envelope.records,
                    envelope.body_bytes,
                    envelope.sha256
                ),
            }
            .map_err(write_error)?;
            count += 1;
        }
    }
    if let ListFormat::Table = format {
        eprintln!("{count} events");
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(log: &EventLog, id: Uuid, body_only: bool) -> Result<ExitCode, String> {
    let event = log.find(id).await.map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    if !body_only {
        let envelope =
            serde_json::to_string_pretty(&event.envelope).expect("an envelope serialises");
        writeln!(out, "{envelope}\n").map_err(|e| e.to_string())?;
    }
    out.write_all(&event.body).map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

async fn verify(
    log: &EventLog,
    filter: &EventFilter,
    public_keys: &[PublicKey],
    heads_file: Option<&std::path::Path>,
) -> Result<ExitCode, String> {
    let recorded_heads = match heads_file {
        Some(path) => read_heads_file(path)?,
        None => BTreeMap::new(),
    };
    // Which days must have a digest: those the compactor has recorded as digested.
    let (state, _) = crate::commit::CommitLog::new(log.store().clone())
        .load()
        .await
        .map_err(|e| e.to_string())?;
    let with = VerifyWith {
        keys: public_keys,
        digested: &state.digested,
        recorded_heads: &recorded_heads,
    };
    let report = log.verify(filter, &with).await.map_err(|e| e.to_string())?;
    for mismatch in &report.mismatches {
        println!("MISMATCH {}: {}", mismatch.key, mismatch.problem);
    }
    for (source, head) in &report.heads {
        println!("HEAD {source} {} {}", head.date, head.sha256);
    }
    let signed = !public_keys.is_empty();
    let signatures = match signed {
        true => format!("{} signatures verified", report.signatures),
        false => "signatures not checked (--unsigned)".to_string(),
    };
    let receipts = match (report.receipts_since, signed) {
        (None, _) => "no receipts (the lake records none signed)".to_string(),
        (Some(since), true) => format!(
            "{} receipts verified, required since {since}",
            report.receipts
        ),
        (Some(since), false) => format!("receipts required since {since}: present, not verified"),
    };
    let heads = match (heads_file, report.recorded_heads_found) {
        (Some(_), found) => format!(
            "{} chain heads checked, {found} of {} recorded heads still in their chains",
            report.heads_checked,
            recorded_heads.len()
        ),
        (None, _) => format!(
            "{} chain heads checked (no --heads file)",
            report.heads_checked
        ),
    };
    let late = match report.late_arrivals {
        0 => String::new(),
        n => format!(", {n} late arrivals recorded in sealed days"),
    };
    if let Some(path) = heads_file {
        // Only a run that checked whole chains with a key may move the auditor's record.
        let whole = filter.since.is_none() && filter.until.is_none();
        match report.mismatches.is_empty() && signed && whole {
            true => {
                let mut heads = recorded_heads;
                heads.extend(report.heads.clone());
                write_heads_file(path, &heads)?;
                println!("heads recorded in {}", path.display());
            }
            false => println!(
                "{} left as it was: only a run with --public-key over whole chains (no --since or --until) and without mismatches moves the recorded heads",
                path.display()
            ),
        }
    }
    // Said before the summary, which stays the last line.
    if !signed {
        println!(
            "UNSIGNED: this shows the lake agrees with itself, not that it is what was received: anyone able to write to the lake can rewrite it to pass. Check with --public-key for that."
        );
    }
    println!(
        "{} events ({} bytes) checked over {} days; {} sealed days checked against their digests and chain{late}; {signatures}; {receipts}; {heads}; {} mismatched",
        report.events,
        report.bytes,
        report.days,
        report.digests,
        report.mismatches.len()
    );
    Ok(if report.mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The auditor's record of chain heads: `{"heads": {"{stream}/{institution}": {"date":
/// "YYYY-MM-DD", "sha256": "..."}}}`; a file that does not exist yet records none.
fn read_heads_file(path: &std::path::Path) -> Result<BTreeMap<String, ChainLink>, String> {
    #[derive(serde::Deserialize)]
    struct HeadsFile {
        heads: BTreeMap<String, ChainLink>,
    }
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<HeadsFile>(&bytes)
            .map(|file| file.heads)
            .map_err(|e| {
                format!(
                    "--heads {}: not a file of recorded heads: {e}",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("--heads {}: {e}", path.display())),
    }
}

/// Writes the record of heads whole, through a temporary file renamed over it: a run cut
/// short leaves the previous record.
fn write_heads_file(
    path: &std::path::Path,
    heads: &BTreeMap<String, ChainLink>,
) -> Result<(), String> {
    let text =
        serde_json::to_vec_pretty(&serde_json::json!({ "heads": heads })).expect("heads serialise");
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("--heads {}: {e}", path.display()))
}
