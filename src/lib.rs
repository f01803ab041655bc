//! datx: the receiving side of the S-360 data integration, turned into a lake.
//!
//! Data flows one way: HTTP (`receive`) -> `eventlog` -> `compact` (through `tables`, into
//! `commit`s) -> `query`. Each module knows only those below it; `store` is under all.

pub mod batch;
pub mod cli;
pub mod clock;
pub mod commit;
pub mod compact;
pub mod config;
pub mod connections;
pub mod eventlog;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod postgres;
pub mod query;
pub mod receive;
pub mod replay;
pub mod secret;
pub mod serve;
pub mod simulate;
pub mod status;
pub mod store;
pub mod stream;
pub mod tables;
