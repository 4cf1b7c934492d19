//! The dump tools, one module each. A source spawns its tool, hands out its output and
//! checks how it ended; it knows nothing about storage.

pub mod child;
pub mod mongo;
pub mod pg_archive;
pub mod pg_probe;
pub mod pg_toc;
pub mod postgres;
pub mod psql_session;
pub mod sql_lex;
