//! The audit trail: signed, hash-chained records of every rule run.
//!
//! Every rule run writes a `run_intent` record before its first batch and a
//! `run_outcome` record after its last, so a run killed in between stays
//! visible. `run` also records the config it loaded. Plans write nothing.

pub mod checkpoint;
pub mod events;
pub mod holds;
pub mod key;
pub mod log;
pub mod record;
pub mod verify;

pub use key::Signer;
pub use log::{AuditError, AuditLog};
pub use record::{Event, Sealed};
