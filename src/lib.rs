//! retentiond makes published data-retention promises true, and provable.
//!
//! The data flows in one direction:
//!
//! 1. [`config`] parses and validates `retention.toml` into rules, guards and
//!    holds, pointing at the exact line of any mistake.
//! 2. [`plan`] computes each rule's cutoff (`now - keep`, from the store's
//!    clock) and counts what would go, what guards and holds protect, and
//!    whether a safety check would refuse the run. It changes nothing.
//! 3. [`engine`] executes a rule in short, idempotent batches, re-checking the
//!    full predicate in every statement, and stops between batches when asked.
//! 4. [`audit`] writes a signed, hash-chained intent record before the first
//!    batch and an outcome record after the last.
//!
//! Stores live in [`store`]: one module per kind behind a narrow interface.
#![warn(missing_docs)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod plan;
pub mod report;
pub mod store;
