//! retentiond's integration tests: one binary, one module per area. Every
//! database test runs against a real PostgreSQL started by `pg`.

mod pg;
mod util;

mod smoke;
