//! One integration-test binary (one link step matters on small machines), one module per
//! capability. Tests drive the real `backhaul` binary against a real PostgreSQL cluster and
//! moto_server.

mod common;

mod alarms;
mod any_input;
mod backup_jobs;
mod backup_mongo;
mod backup_pg;
mod bad_input;
mod collisions;
mod config_errors;
mod data;
mod ecs;
mod encryption;
mod faults;
mod help;
mod human;
mod logs;
mod mongo_real;
mod notify;
mod object_lock;
mod refuse;
mod restore_dir;
mod restore_faithful;
mod restore_jobs;
mod restore_mongo;
mod s3_faults;
mod schedule_tz;
mod secret_hygiene;
mod secrets_at_rest;
mod soak;
mod status_check;
mod terminal;
mod trust;
