//! End-to-end tests: the real `cairn` binary, run as separate processes on real data
//! directories. One test binary with modules.

mod alerts;
mod attacks;
mod bundles;
mod cli;
mod connectors;
mod crash;
mod feeds;
mod filtered;
mod link;
mod operations;
mod packaging;
mod promotion;
mod replication;
mod s3;
mod sites;
mod status;
mod upstreams;
mod util;
mod verifier;
