//! `cairn-sync`: the replication protocol between Cairn instances.
//!
//! This crate will own, as the replication work lands:
//! - `proto`: the sans-IO core (no sockets, no clock, no randomness of its own) that
//!   reconciles two feeds' Merkle summaries ([`cairn_store::Store::merkle_children`],
//!   [`cairn_store::Store::entries_under`]) and change logs
//!   ([`cairn_store::Store::changes_since`]) and plans blob transfers;
//! - `transport`: the QUIC driver (quinn + rustls) around that core;
//! - `replication`: configured replications (pull, push, mirror; incoming or outgoing) and
//!   the replication log.
//!
//! The normative description of the wire format is in `wire-spec/` at the repository root.
//! What exists: [`iblt`], the invertible Bloom lookup tables that find the entries two feeds
//! disagree on in one message whose size grows with the difference, not the feed.

pub mod iblt;
pub mod proto;
pub mod sim;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;
