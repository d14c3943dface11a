//! Integration tests: real `kvd` and `kvctl` processes on loopback.
//!
//! Every process a test starts is stopped by PID (see `harness::Kvd`), every
//! wait is bounded, and randomised tests print their seed.

mod backup;
mod bad_input;
mod cluster;
mod compression;
mod crash;
mod cross_core;
mod cut_off_leader;
mod harness;
mod http;
mod http_client;
mod http_fuzz;
mod kvbench;
mod kvctl;
mod lifecycle;
mod load;
mod local_cluster;
mod membership;
mod memory;
mod metrics;
mod notify;
mod openmetrics;
mod replication;
mod resp;
mod ttl;
