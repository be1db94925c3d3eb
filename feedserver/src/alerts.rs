//! Alerts: a webhook per instance (`[alerts]` in `cairn.toml`) told, by a JSON POST signed
//! with HMAC-SHA256, when a replication has failed `replication_failures` runs in a row, when
//! a feed's checkpoint is older than its limit, when `verify` finds problems, and when each
//! of these recovers. Delivery is retried with backoff; alerts wait in a bounded queue.
//!
//! A checkpoint is watched on the feeds whose checkpoint came from upstream (a spoke's); an
//! instance signs its own feeds' checkpoints when asked for them.
//!
//! The body is one JSON object: `event` (`replication.failing`, `replication.recovered`,
//! `checkpoint.stale`, `checkpoint.fresh`, `verify.problems`, `verify.ok`), `firing` (true
//! for a problem, false for its recovery), `subject` (the replication or feed; `verify` for
//! verify), `message` (in words), `instance` (the key fingerprint), `time` (Unix seconds) and
//! `details`. The header `X-Cairn-Signature: t=TIME,v1=HEX` carries HMAC-SHA256 with the
//! secret over `TIME.BODY`; a receiver recomputes it and refuses old times (replays).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use sha2::Digest;

use crate::FeedServer;

/// Alerts waiting for delivery at most; beyond, new ones are dropped (and logged).
const QUEUE: usize = 256;
/// Delivery attempts per alert.
const ATTEMPTS: u32 = 8;
/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// One delivery attempt (connect, send, answer) at most.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[alerts]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// `http://HOST:PORT/PATH` the alerts are POSTed to; none, no alerts.
    pub webhook: Option<String>,
    /// The HMAC key the body is signed with.
    #[serde(default)]
    pub secret: String,
    /// Failed runs in a row that make a replication alert.
    #[serde(default = "default_failures")]
    pub replication_failures: u32,
    /// A feed's checkpoint older than this (seconds) alerts.
    #[serde(default = "default_checkpoint_age")]
    pub checkpoint_max_age_secs: u64,
    /// Per feed, a limit of its own.
    #[serde(default)]
    pub feed_checkpoint_max_age_secs: BTreeMap<String, u64>,
    /// Seconds between looks at replications and checkpoints.
    #[serde(default = "default_check")]
    pub check_secs: u64,
}

impl Default for AlertsConfig {
    fn default() -> AlertsConfig {
        AlertsConfig {
            webhook: None,
            secret: String::new(),
            replication_failures: default_failures(),
            checkpoint_max_age_secs: default_checkpoint_age(),
            feed_checkpoint_max_age_secs: BTreeMap::new(),
            check_secs: default_check(),
        }
    }
}

fn default_failures() -> u32 {
    3
}
fn default_checkpoint_age() -> u64 {
    86_400
}
fn default_check() -> u64 {
    30
}

/// Where the webhook is, parsed.
#[derive(Clone, Debug)]
struct Target {
    authority: String,
    path: String,
}

fn parse_webhook(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("webhook `{url}`: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "webhook `{url}`: give host:port, without credentials"
        ));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        authority,
        path: path.to_owned(),
    })
}

impl AlertsConfig {
    /// Checks the configuration (the webhook's form).
    pub fn check(&self) -> Result<(), String> {
        if let Some(url) = &self.webhook {
            parse_webhook(url)?;
            if self.secret.is_empty() {
                return Err("[alerts] webhook needs a secret to sign with".into());
            }
        }
        if self.replication_failures == 0 {
            return Err("[alerts] replication_failures must be at least 1".into());
        }
        Ok(())
    }
}

/// One alert.
#[derive(Clone, Debug)]
struct Alert {
    event: &'static str,
    firing: bool,
    subject: String,
    message: String,
    details: serde_json::Value,
}

/// What is firing now, so that each problem alerts once and its recovery once.
#[derive(Debug, Default)]
struct Firing {
    replications: HashSet<String>,
    checkpoints: HashSet<String>,
    verify: bool,
}

/// The alerts of one instance: a queue to the webhook and what is firing.
#[derive(Debug)]
pub struct Alerter {
    config: AlertsConfig,
    instance: String,
    queue: tokio::sync::mpsc::Sender<Alert>,
    firing: parking_lot::Mutex<Firing>,
}

impl Alerter {
    fn send(&self, alert: Alert) {
        tracing::warn!(event = alert.event, subject = %alert.subject, "alert: {}", alert.message);
        if self.queue.try_send(alert).is_err() {
            tracing::error!("the alert queue is full; an alert was dropped");
        }
    }

    /// What `verify` found: alerts on problems, and when they are gone.
    pub fn verified(&self, problems: &[cairn_store::Problem]) {
        let firing = !problems.is_empty();
        let was = std::mem::replace(&mut self.firing.lock().verify, firing);
        if firing == was {
            return;
        }
        let message = if firing {
            format!(
                "verify found {} problem{}; the first: {} {}: {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems[0].kind,
                problems[0].subject,
                problems[0].detail
            )
        } else {
            "verify found no problems".to_owned()
        };
        self.send(Alert {
            event: if firing {
                "verify.problems"
            } else {
                "verify.ok"
            },
            firing,
            subject: "verify".into(),
            message,
            details: json!({ "problems": problems.iter().take(20).collect::<Vec<_>>() }),
        });
    }

    /// One look at the replications and checkpoints.
    async fn check(&self, server: &Arc<FeedServer>) {
        for r in server.replication_states() {
            let name = r["name"].as_str().unwrap_or("").to_owned();
            let failures = r["failures_in_a_row"].as_u64().unwrap_or(0);
            let failing = failures >= u64::from(self.config.replication_failures);
            let was = {
                let mut f = self.firing.lock();
                let was = f.replications.contains(&name);
                if failing {
                    f.replications.insert(name.clone());
                } else if failures == 0 {
                    f.replications.remove(&name);
                }
                was
            };
            if failing && !was {
                self.send(Alert {
                    event: "replication.failing",
                    firing: true,
                    message: format!(
                        "replication `{name}` with `{}` failed {failures} runs in a row: {}",
                        r["peer"].as_str().unwrap_or(""),
                        r["last_error"].as_str().unwrap_or("")
                    ),
                    subject: name,
                    details: r,
                });
            } else if was && failures == 0 {
                self.send(Alert {
                    event: "replication.recovered",
                    firing: false,
                    message: format!("replication `{name}` ran successfully again"),
                    subject: name,
                    details: r,
                });
            }
        }
        let s = server.clone();
        let held = crate::blocking(move || {
            let store = s.store();
            let me = store.identity().public_key();
            let mut out = Vec::new();
            for f in store.list_feeds()? {
                // Checkpoints from upstream only: this instance signs its own on demand.
                if let Some((cp, doc)) = store.checkpoint(&f.name)? {
                    if doc.signer() != me {
                        out.push((f.name, cp.time));
                    }
                }
            }
            Ok(out)
        })
        .await
        .unwrap_or_default();
        let now = crate::blocking::now_secs();
        for (feed, signed) in held {
            let limit = self
                .config
                .feed_checkpoint_max_age_secs
                .get(&feed)
                .copied()
                .unwrap_or(self.config.checkpoint_max_age_secs);
            let age = now.saturating_sub(signed);
            let stale = age > limit;
            let was = {
                let mut f = self.firing.lock();
                if stale {
                    !f.checkpoints.insert(feed.clone())
                } else {
                    f.checkpoints.remove(&feed)
                }
            };
            let details = json!({ "feed": feed, "age_secs": age, "limit_secs": limit, "signed_secs": signed });
            if stale && !was {
                self.send(Alert {
                    event: "checkpoint.stale",
                    firing: true,
                    message: format!(
                        "the checkpoint of feed `{feed}` is {} old, over its limit of {}",
                        cairn_store::admin::duration_words(age),
                        cairn_store::admin::duration_words(limit)
                    ),
                    subject: feed,
                    details,
                });
            } else if !stale && was {
                self.send(Alert {
                    event: "checkpoint.fresh",
                    firing: false,
                    message: format!("the checkpoint of feed `{feed}` is fresh again"),
                    subject: feed,
                    details,
                });
            }
        }
    }
}

/// Starts the alerts of `server` (a no-op without a webhook): the periodic look and the
/// delivery task. Returns the alerter `verify` reports to.
pub fn start(server: &Arc<FeedServer>, config: AlertsConfig) -> Option<Arc<Alerter>> {
    let target = parse_webhook(config.webhook.as_deref()?).ok()?;
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let alerter = Arc::new(Alerter {
        instance: server.store().identity().public_key().to_string(),
        queue: tx,
        firing: parking_lot::Mutex::default(),
        config,
    });
    tokio::spawn(deliver(
        rx,
        target,
        alerter.config.secret.clone(),
        alerter.instance.clone(),
    ));
    let (a, s) = (alerter.clone(), server.clone());
    tokio::spawn(async move {
        let every = Duration::from_secs(a.config.check_secs.max(1));
        loop {
            tokio::time::sleep(every).await;
            a.check(&s).await;
        }
    });
    Some(alerter)
}

async fn deliver(
    mut rx: tokio::sync::mpsc::Receiver<Alert>,
    target: Target,
    secret: String,
    instance: String,
) {
    while let Some(alert) = rx.recv().await {
        let time = crate::blocking::now_secs();
        let body = json!({
            "event": alert.event,
            "firing": alert.firing,
            "subject": alert.subject,
            "message": alert.message,
            "instance": instance,
            "time": time,
            "details": alert.details,
        })
        .to_string();
        let signature = format!(
            "t={time},v1={}",
            hex::encode(hmac_sha256(
                secret.as_bytes(),
                format!("{time}.{body}").as_bytes()
            ))
        );
        let mut wait = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, post(&target, &body, &signature)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => break,
                outcome => {
                    let why = match outcome {
                        Ok(Ok(status)) => format!("answered {status}"),
                        Ok(Err(e)) => e,
                        Err(_) => "timed out".into(),
                    };
                    if attempt == ATTEMPTS {
                        tracing::error!(event = alert.event, "giving up on the webhook: {why}");
                        break;
                    }
                    tracing::warn!(
                        event = alert.event,
                        attempt,
                        "the webhook failed: {why}; retrying in {wait:?}"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn post(target: &Target, body: &str, signature: &str) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect(&target.authority)
        .await
        .map_err(|e| format!("connecting to {}: {e}", target.authority))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let request = axum::http::Request::post(target.path.as_str())
        .header(axum::http::header::HOST, target.authority.as_str())
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .header("x-cairn-signature", signature)
        .body(axum::body::Body::from(body.to_owned()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    connection.abort();
    Ok(response.status().as_u16())
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = sha2::Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    sha2::Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn webhooks_are_plain_http_with_host_and_port() {
        let t = parse_webhook("http://127.0.0.1:9000/hooks/cairn").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:9000", "/hooks/cairn")
        );
        assert_eq!(parse_webhook("http://alerts.example").unwrap().path, "/");
        assert!(parse_webhook("https://x").is_err());
        assert!(parse_webhook("http://user:pw@x/").is_err());
        assert!(parse_webhook("http:///x").is_err());
    }
}
