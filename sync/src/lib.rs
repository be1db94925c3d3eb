//! `cairn-sync`: the replication protocol between Cairn instances.
//!
//! Read it top down:
//! - [`replication`]: configured replications (pull, push, mirror; outgoing or incoming) end
//!   to end: configuration, schedule, warm connections, one run, the responder's tokens, the
//!   replication log, and the control socket;
//! - [`transport`]: the QUIC driver (quinn + rustls) that runs a session over a connection:
//!   streams, flow control, deadlines, progress; [`congestion`]: its default congestion
//!   controller;
//! - [`proto`]: the sans-IO core (no sockets, no clock, no randomness of its own) that
//!   reconciles two feeds' Merkle summaries and change logs, verifies what it receives and
//!   plans blob transfers;
//! - [`wire`]: the frames and their CBOR encoding; [`iblt`]: the invertible Bloom lookup
//!   tables of the sketch path; [`sim`]: a deterministic network for tests.
//!
//! The normative description of the wire format is in `wire-spec/` at the repository root.

pub mod congestion;
pub mod iblt;
pub mod proto;
pub mod replication;
pub mod sim;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;
