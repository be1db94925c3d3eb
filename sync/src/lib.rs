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
//! Nothing is implemented here yet; the store already exposes what the protocol reads.
