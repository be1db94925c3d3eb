//! The status page at `/`: what a person wants to see of an instance at a glance, rendered on
//! the server (no script), refreshing itself every 10 s: replications (state and why, the
//! upstream, last run, lag, bytes, next run), feeds (type, entries, root, checkpoint age),
//! peers (key, whether the last run with them went through) and the newest runs of the log.
//! It shows no token, secret or peer address.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_store::admin::{duration_words as ago, ReplicationRecord};
use cairn_store::doc::Promotion;

use crate::pypi::escape;
use crate::{blocking, ApiError, FeedServer};

/// Runs of the log shown.
const LOG_ROWS: usize = 15;

/// Seconds between the page's own refreshes.
const REFRESH_SECS: u64 = 10;

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;color:#1b1b1b;background:#fff;margin:0 auto;max-width:76rem;padding:0 1rem 2rem}\
header{border-bottom:2px solid #1b1b1b;margin-bottom:1rem}h1{font-size:1.4rem;margin:.8rem 0 .2rem}h2{font-size:1.15rem;margin:1.6rem 0 .4rem}\
nav a{margin-right:1rem}a{color:#0b4f9c}table{border-collapse:collapse;width:100%;margin:.3rem 0}caption{text-align:left;color:#404040;padding:.2rem 0}\
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #c8c8c8;vertical-align:top}th{background:#f0f0f0}th[scope=row]{white-space:nowrap}\
td.n{text-align:right;font-variant-numeric:tabular-nums}code{font-size:.9em}.s{font-weight:600;padding:.05rem .4rem;border-radius:.25rem;white-space:nowrap}\
.ok{background:#dff3e3;color:#0f4a1c}.behind,.running{background:#fff1c9;color:#5c3d00}.failing{background:#fde2e2;color:#7a0c0c}\
.never,.incoming{background:#e8e8e8;color:#262626}.why{color:#303030}footer{margin-top:2rem;color:#404040;font-size:.9rem}";

/// The axum handler for `GET /`.
pub async fn page(State(server): State<Arc<FeedServer>>) -> Response {
    match render(&server).await {
        Ok(html) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn render(server: &Arc<FeedServer>) -> Result<String, ApiError> {
    let replications = server.replication_states();
    let s = server.clone();
    let (key, feeds, peers, log, transparency, promotions) = blocking(move || {
        let store = s.store();
        let mut feeds = Vec::new();
        for f in store.list_feeds()? {
            let summary = store.feed_summary(&f.name)?;
            let checkpoint = store.checkpoint(&f.name)?.map(|(cp, _)| cp.time);
            feeds.push((
                f.name.clone(),
                f.ecosystem().map(|e| e.to_string()).unwrap_or_default(),
                summary.root.count,
                summary.root.fingerprint.to_hex(),
                checkpoint,
                s.replicas.get(&f.name).cloned(),
            ));
        }
        let peers = store.peer_list()?;
        let log = store.replication_log(1000)?;
        let transparency = (
            store.log_size()?,
            store.log_seen_all()?,
            store.split_views()?,
        );
        Ok((
            store.identity().public_key(),
            feeds,
            peers,
            log,
            transparency,
            store.promotions(None, None)?,
        ))
    })
    .await?;
    let now_secs = crate::blocking::now_secs();
    let now_ms = now_secs.saturating_mul(1000);
    let ago_ms = |t: u64| ago(now_ms.saturating_sub(t) / 1000);

    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
<title>Cairn status: {short}</title><style>{STYLE}</style></head><body>\
<header><h1>Cairn instance <code>{short}</code></h1>\
<p>Key <code>{key}</code>. This page refreshes itself every {REFRESH_SECS} s.</p></header>\
<nav aria-label=\"Sections\"><a href=\"#replications\">Replications</a><a href=\"#feeds\">Feeds</a>\
<a href=\"#peers\">Peers</a><a href=\"#transparency\">Transparency</a>\
<a href=\"#promotions\">Promotions</a><a href=\"#log\">Recent runs</a></nav><main>",
        short = escape(&key.short()),
        key = escape(&key.to_string()),
    );

    // Replications.
    let attention = replications
        .iter()
        .filter(|r| !matches!(r["state"].as_str(), Some("ok" | "running" | "incoming")))
        .count();
    let _ = write!(
        h,
        "<section aria-labelledby=\"replications\"><h2 id=\"replications\">Replications</h2>"
    );
    if replications.is_empty() {
        h.push_str("<p>No replications are configured.</p>");
    } else {
        let _ = write!(
            h,
            "<table><caption>{} configured, {attention} needing attention</caption><thead><tr>\
<th scope=\"col\">Name</th><th scope=\"col\">State</th><th scope=\"col\">Mode</th><th scope=\"col\">Upstream</th>\
<th scope=\"col\">Feeds</th><th scope=\"col\">Last run</th><th scope=\"col\">Lag</th><th scope=\"col\">Bytes in / out</th>\
<th scope=\"col\">Next run</th></tr></thead><tbody>",
            replications.len()
        );
        for r in &replications {
            let state = r["state"].as_str().unwrap_or("unknown");
            let class = state.split(' ').next().unwrap_or("never");
            let reason = r["reason"].as_str().unwrap_or("");
            let last = match (r["last_ended_ms"].as_u64(), r["last_outcome"].as_str()) {
                (Some(t), Some(o)) => format!("{} ago, {o}", ago_ms(t)),
                _ => "none yet".into(),
            };
            let lag = r["lag_secs"]
                .as_u64()
                .map(ago)
                .unwrap_or_else(|| "no successful run".into());
            let next = match r["next_run_ms"].as_u64() {
                Some(t) if t > now_ms => format!("in {}", ago((t - now_ms) / 1000)),
                Some(_) => "due now".into(),
                None if r["interval_secs"].as_u64() == Some(0) => "on demand".into(),
                None => "after the first run".into(),
            };
            let feeds: Vec<&str> = r["feeds"]
                .as_array()
                .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr><th scope=\"row\">{name}</th><td><span class=\"s {class}\">{state}</span>{why}</td>\
<td>{mode} ({direction})</td><td>{peer}</td><td>{feeds}</td><td>{last}</td><td>{lag}</td>\
<td class=\"n\">{bin} / {bout}</td><td>{next}</td></tr>",
                name = escape(r["name"].as_str().unwrap_or("")),
                class = escape(class),
                state = escape(state),
                why = if reason.is_empty() {
                    String::new()
                } else {
                    format!("<div class=\"why\">{}</div>", escape(reason))
                },
                mode = escape(r["mode"].as_str().unwrap_or("")),
                direction = escape(r["direction"].as_str().unwrap_or("")),
                peer = escape(r["peer"].as_str().unwrap_or("")),
                feeds = escape(&feeds.join(", ")),
                bin = bytes(r["last_bytes_received"].as_u64().unwrap_or(0)),
                bout = bytes(r["last_bytes_sent"].as_u64().unwrap_or(0)),
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>");

    // Connectors, when any is configured.
    let connectors = server.connector_states();
    if !connectors.is_empty() {
        let _ = write!(
            h,
            "<section aria-labelledby=\"connectors\"><h2 id=\"connectors\">Connectors</h2>\
<table><caption>Feeds that answer for what they lack from an upstream registry</caption><thead><tr>\
<th scope=\"col\">Feed</th><th scope=\"col\">Upstream</th><th scope=\"col\">State</th>\
<th scope=\"col\">Last answer</th><th scope=\"col\">Files cached</th><th scope=\"col\">Refused</th></tr></thead><tbody>"
        );
        for c in &connectors {
            let (class, state) = match c.reachable {
                Some(true) => ("ok", "reachable".to_string()),
                Some(false) => (
                    "failing",
                    format!(
                        "unreachable: serving what is held{}",
                        c.last_error
                            .as_ref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                ),
                None => ("never", "not asked yet".to_string()),
            };
            let _ = write!(
                h,
                "<tr><th scope=\"row\">{feed}</th><td>{upstream}</td><td><span class=\"s {class}\">{state}</span></td>\
<td>{last}</td><td class=\"n\">{cached}</td><td class=\"n\">{refused}</td></tr>",
                feed = escape(&c.feed),
                upstream = escape(&c.upstream),
                state = escape(&state),
                last = c.last_ok_ms.map_or("never".into(), |t| format!("{} ago", ago_ms(t))),
                cached = c.files_cached,
                refused = c.refused,
            );
        }
        h.push_str("</tbody></table></section>");
    }

    // Feeds.
    let _ = write!(
        h,
        "<section aria-labelledby=\"feeds\"><h2 id=\"feeds\">Feeds</h2>"
    );
    if feeds.is_empty() {
        h.push_str("<p>No feeds yet: <code>cairn feed create NAME --type pypi</code>.</p>");
    } else {
        h.push_str(
            "<table><thead><tr><th scope=\"col\">Feed</th><th scope=\"col\">Type</th>\
<th scope=\"col\">Entries</th><th scope=\"col\">Root</th><th scope=\"col\">Checkpoint</th>\
<th scope=\"col\">Source</th></tr></thead><tbody>",
        );
        for (name, kind, count, root, checkpoint, replica_of) in &feeds {
            let _ = write!(
                h,
                "<tr><th scope=\"row\"><a href=\"/feeds/{n}/\">{n}</a></th><td>{kind}</td><td class=\"n\">{count}</td>\
<td><code title=\"{root}\">{short}</code></td><td>{cp}</td><td>{src}</td></tr>",
                n = escape(name),
                kind = escape(kind),
                root = escape(root),
                short = escape(root.get(..12).unwrap_or(root)),
                cp = checkpoint
                    .map(|t| format!("signed {} ago", ago(now_secs.saturating_sub(t))))
                    .unwrap_or_else(|| "none held".into()),
                src = replica_of
                    .as_deref()
                    .map(|p| format!("pulled from {}", escape(p)))
                    .unwrap_or_else(|| "published here".into()),
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>");

    // Peers.
    let _ = write!(
        h,
        "<section aria-labelledby=\"peers\"><h2 id=\"peers\">Peers</h2>"
    );
    if peers.is_empty() {
        h.push_str("<p>No peers added.</p>");
    } else {
        h.push_str(
            "<table><thead><tr><th scope=\"col\">Peer</th><th scope=\"col\">Key</th>\
<th scope=\"col\">Reachable</th></tr></thead><tbody>",
        );
        for p in &peers {
            // A run that received anything reached the peer, whatever its outcome.
            let reach = match log.iter().find(|r| r.peer == p.name) {
                None => "no run with it yet".to_owned(),
                Some(r) if r.bytes_received > 0 => {
                    format!("yes: the last run reached it {} ago", ago_ms(r.ended_ms))
                }
                Some(r) => format!(
                    "no: the last run, {} ago, did not reach it: {}",
                    ago_ms(r.ended_ms),
                    escape(&r.error)
                ),
            };
            let _ = write!(
                h,
                "<tr><th scope=\"row\">{}</th><td><code>{}</code></td><td>{reach}</td></tr>",
                escape(&p.name),
                escape(&p.key.to_string()),
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>");

    // The transparency log.
    let (size, seen, views) = transparency;
    let _ = write!(
        h,
        "<section aria-labelledby=\"transparency\"><h2 id=\"transparency\">Transparency</h2>\
<p>This instance's log holds {size} checkpoint(s) (<a href=\"/verify/v1/log/views\">views</a>).</p>"
    );
    if !views.is_empty() {
        let _ = write!(
            h,
            "<p role=\"alert\" class=\"s failing\">Split view: {} time(s) a log showed histories that no proof joins; \
its key signed different states for different sites.</p><ul>",
            views.len()
        );
        for v in &views {
            let _ = write!(
                h,
                "<li>log <code>{}</code>, via {}, {} ago: {}</li>",
                escape(&v.log[..12.min(v.log.len())]),
                escape(&v.via),
                ago(now_secs.saturating_sub(v.detected_ms / 1000)),
                escape(&v.reason)
            );
        }
        h.push_str("</ul>");
    }
    if seen.is_empty() {
        h.push_str("<p>No other log's head proven yet.</p>");
    } else {
        h.push_str(
            "<table><thead><tr><th scope=\"col\">Log</th><th scope=\"col\">Proven size</th>\
<th scope=\"col\">Signed</th></tr></thead><tbody>",
        );
        for s in &seen {
            let _ = write!(
                h,
                "<tr><th scope=\"row\"><code>{}</code></th><td>{}</td><td>{} ago</td></tr>",
                escape(&s.log.short()),
                s.head.size,
                ago(now_secs.saturating_sub(s.head.time))
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>");

    // Promotions, grouped by version (the newest promotion first).
    h.push_str(&promotions_section(&promotions, now_secs));

    // The log.
    let _ = write!(
        h,
        "<section aria-labelledby=\"log\"><h2 id=\"log\">Recent runs</h2>"
    );
    if log.is_empty() {
        h.push_str("<p>No replication runs yet.</p>");
    } else {
        h.push_str(
            "<table><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Replication</th>\
<th scope=\"col\">Peer</th><th scope=\"col\">Ended</th><th scope=\"col\">Took</th><th scope=\"col\">Outcome</th>\
<th scope=\"col\">Documents in / out</th><th scope=\"col\">Bytes in / out</th></tr></thead><tbody>",
        );
        for r in log.iter().take(LOG_ROWS) {
            h.push_str(&log_row(r, &ago_ms(r.ended_ms)));
        }
        h.push_str("</tbody></table>");
    }
    let _ = write!(
        h,
        "</section></main><footer>Cairn {} · <a href=\"/api/v1/instance\">instance API</a> · \
<a href=\"/metrics\">metrics</a></footer></body></html>",
        env!("CARGO_PKG_VERSION")
    );
    Ok(h)
}

/// Versions shown in the promotions section at most.
const PROMOTED_VERSIONS: usize = 50;

/// Each promoted version (newest first) with its promotions: from where to where, by whom,
/// when.
fn promotions_section(all: &[Promotion], now_secs: u64) -> String {
    let mut h = String::from(
        "<section aria-labelledby=\"promotions\"><h2 id=\"promotions\">Promotions</h2>",
    );
    if all.is_empty() {
        h.push_str("<p>No version has been promoted.</p></section>");
        return h;
    }
    let mut versions: Vec<(&str, &str)> = Vec::new();
    for p in all {
        if !versions.contains(&(p.name.as_str(), p.version.as_str())) {
            versions.push((&p.name, &p.version));
        }
    }
    h.push_str(
        "<table><thead><tr><th scope=\"col\">Package</th><th scope=\"col\">Version</th>\
<th scope=\"col\">History</th></tr></thead><tbody>",
    );
    for (name, version) in versions.iter().take(PROMOTED_VERSIONS) {
        let steps: Vec<String> = all
            .iter()
            .filter(|p| p.name == *name && p.version == *version)
            .map(|p| {
                format!(
                    "<code>{}</code> &rarr; <code>{}</code> by {}, {} ago",
                    escape(&p.from),
                    escape(&p.to),
                    escape(&p.by),
                    ago(now_secs.saturating_sub(p.time))
                )
            })
            .collect();
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
            escape(name),
            escape(version),
            steps.join("<br>")
        );
    }
    h.push_str("</tbody></table></section>");
    h
}

fn log_row(r: &ReplicationRecord, ended: &str) -> String {
    let outcome = if r.outcome == "ok" {
        "<span class=\"s ok\">ok</span>".to_owned()
    } else {
        format!(
            "<span class=\"s failing\">failed</span><div class=\"why\">{}</div>",
            escape(&r.error)
        )
    };
    format!(
        "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{ended} ago</td><td class=\"n\">{} ms</td>\
<td>{outcome}</td><td class=\"n\">{} / {}</td><td class=\"n\">{} / {}</td></tr>",
        r.seq,
        escape(&r.replication),
        escape(&r.peer),
        r.ended_ms.saturating_sub(r.started_ms),
        r.docs_received,
        r.docs_sent,
        bytes(r.bytes_received),
        bytes(r.bytes_sent),
    )
}

/// A byte count as a person reads it.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_words() {
        assert_eq!(ago(5), "5 s");
        assert_eq!(ago(600), "10 min");
        assert_eq!(ago(3 * 86_400), "3 d");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn log_rows_escape_what_peers_wrote() {
        let r = ReplicationRecord {
            replication: "<script>".into(),
            error: "<img src=x onerror=alert(1)>".into(),
            outcome: "failed".into(),
            ..ReplicationRecord::default()
        };
        let row = log_row(&r, "1 s");
        assert!(!row.contains("<script>") && !row.contains("<img"), "{row}");
        assert!(row.contains("&lt;img"), "{row}");
    }
}
