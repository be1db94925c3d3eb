//! The responder's side: who may connect, what their tokens let them do, how many
//! connections a peer may hold, and the log record of every run a peer drives here.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_store::{PublicKey, Store};

use super::run::{log_incoming, now_ms};
use crate::proto::{Authorizer, Limits, Refusal};
use crate::transport::{self, RunLimits};
use crate::wire::{code, Mode};

/// Tokens decide what an incoming peer may replicate: `replicate:FEED` lets it pull,
/// `replicate-write:FEED` also push and mirror. A feed this instance pulls from a peer takes no
/// writes from any other.
pub struct TokenAuthorizer {
    store: Arc<Store>,
    /// Feeds pulled from a peer here, with that peer.
    pull_replicas: HashMap<String, String>,
}

impl std::fmt::Debug for TokenAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthorizer")
            .field("pull_replicas", &self.pull_replicas)
            .finish_non_exhaustive()
    }
}

impl TokenAuthorizer {
    /// Checks tokens against `store`; `pull_replicas` (see [`super::pull_replicas`]) take no
    /// writes.
    pub fn new(store: Arc<Store>, pull_replicas: HashMap<String, String>) -> TokenAuthorizer {
        TokenAuthorizer {
            store,
            pull_replicas,
        }
    }
}

impl Authorizer for TokenAuthorizer {
    fn authorize(&self, token: &str, feed: &str, mode: Mode) -> Result<(), Refusal> {
        let info = match self.store.token_check(token) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(Refusal::new(
                    code::UNAUTHORIZED,
                    "missing or invalid replication token",
                ))
            }
            Err(e) => return Err(Refusal::new(code::INTERNAL, e.to_string())),
        };
        if !info.may_replicate(feed) {
            return Err(Refusal::new(
                code::UNAUTHORIZED,
                format!("the token does not allow replicating `{feed}`"),
            ));
        }
        if mode == Mode::Pull {
            return Ok(());
        }
        if !info.may_replicate_write(feed) {
            return Err(Refusal::new(
                code::MODE_NOT_ALLOWED,
                format!(
                    "the token allows pulling `{feed}` but not a {}; writing needs a `replicate-write:` scope",
                    mode.name()
                ),
            ));
        }
        if let Some(upstream) = self.pull_replicas.get(feed) {
            return Err(Refusal::new(
                code::MODE_NOT_ALLOWED,
                format!("`{feed}` is a pull replica of `{upstream}` here; write to `{upstream}`"),
            ));
        }
        Ok(())
    }

    fn peer_allowed(&self, peer: &PublicKey) -> bool {
        is_known_peer(&self.store, peer)
    }
}

/// Whether `key` belongs to a peer added here.
pub(crate) fn is_known_peer(store: &Store, key: &PublicKey) -> bool {
    store
        .peer_list()
        .map(|peers| peers.iter().any(|p| p.key == *key))
        .unwrap_or(false)
}

/// The connections each peer holds open to this instance.
type OpenConnections =
    Arc<parking_lot::Mutex<HashMap<PublicKey, Vec<(u64, transport::Connection)>>>>;

/// One of a peer's open connections, counted while it lives. A peer holds a few at most: when
/// it opens one more, its oldest is closed (a peer that crashed leaves connections that would
/// otherwise lock it out until they time out).
struct ConnectionSlot {
    open: OpenConnections,
    key: PublicKey,
    id: u64,
}

impl ConnectionSlot {
    fn take(
        open: &OpenConnections,
        key: PublicKey,
        conn: &transport::Connection,
        max: usize,
    ) -> ConnectionSlot {
        let mut map = open.lock();
        let list = map.entry(key).or_default();
        while list.len() >= max.max(1) {
            let (_, oldest) = list.remove(0);
            tracing::debug!(peer = %key.short(), "closing the oldest of its connections for a new one");
            transport::close_with(
                &oldest,
                code::PROTOCOL,
                "replaced by a newer connection from the same peer",
            );
        }
        let id = conn.stable_id() as u64;
        list.push((id, conn.clone()));
        ConnectionSlot {
            open: open.clone(),
            key,
            id,
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self.open.lock();
        if let Some(list) = map.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

/// What the accept loop needs.
pub(crate) struct Responder {
    pub store: Arc<Store>,
    pub pull_replicas: HashMap<String, String>,
    pub run_limits: RunLimits,
    pub session_limits: Limits,
    pub max_peer_connections: usize,
    /// Shared by every connection this instance answers.
    pub send_budget: transport::SendBudget,
}

/// Accepts connections on `endpoint` until it closes and answers each one's runs, logging
/// every run.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, responder: Responder) {
    let responder = Arc::new(responder);
    let open: OpenConnections = Arc::default();
    while let Some(incoming) = endpoint.accept().await {
        let responder = responder.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Some(key) = transport::peer_key(&conn) else {
                return;
            };
            // A peer holds a few connections at most: each can make this side buffer up to
            // its flow-control window.
            let _slot = ConnectionSlot::take(&open, key, &conn, responder.max_peer_connections);
            let store = &responder.store;
            let peer = store
                .peer_list()
                .ok()
                .and_then(|peers| peers.into_iter().find(|p| p.key == key).map(|p| p.name))
                .unwrap_or_else(|| "unknown".into());
            let auth = TokenAuthorizer::new(store.clone(), responder.pull_replicas.clone());
            let mut started = now_ms();
            transport::serve_connection(
                store,
                &conn,
                &auth,
                responder.run_limits,
                responder.session_limits,
                &responder.send_budget,
                |result| {
                    log_incoming(store, &peer, started, &result);
                    started = now_ms();
                },
            )
            .await;
        });
    }
}
