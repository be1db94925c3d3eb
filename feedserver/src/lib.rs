//! `cairn-feedserver`: the HTTP face of a Cairn instance.
//!
//! This crate will own, as the feed-server work lands: the ecosystem APIs (PyPI simple and
//! upload APIs, npm registry, Cargo sparse registry, raw files) served from
//! [`cairn_store::Store`], tokens and their scopes, the admin and status API, and the
//! enforcement of blocking vulnerability assessments on downloads.
//!
//! It never speaks the sync wire format. Nothing is implemented here yet.
