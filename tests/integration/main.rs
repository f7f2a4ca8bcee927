//! retentiond's integration tests: one binary, one module per area. Every
//! database test runs against a real PostgreSQL cluster started by `pg`.

mod chain;
mod emulators;
mod pg;
mod util;

mod ages;
mod audit;
mod azure;
mod bench;
mod blob;
mod config;
mod conformance;
mod daemon;
mod delete;
mod fault;
mod fuzz;
mod mask;
mod online;
mod policies;
mod proxy;
mod report;
mod s3;
mod scale;
mod trust;
mod verify;
