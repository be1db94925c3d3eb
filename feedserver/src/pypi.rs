//! PyPI feeds: the simple repository API and the legacy upload API.
//!
//! Under `/feeds/NAME/`:
//!
//! | path | what |
//! | --- | --- |
//! | `GET simple/` | every project (PEP 503 HTML or PEP 691 JSON, by `Accept`) |
//! | `GET simple/PROJECT/` | the project's files with `#sha256=` URLs, `requires-python`, PEP 658/714 metadata hashes, PEP 592 yanks; other spellings of the name redirect to the normalized one |
//! | `GET files/NAME/VERSION/FILE` | a file (and `FILE.metadata`, a wheel's METADATA) |
//! | `POST legacy/` | `twine upload` (multipart, `:action=file_upload`) |
//!
//! Project names are compared after PEP 503 normalization: an upload whose name differs from
//! a stored project only by case, `-`, `_` or `.` joins that project. A version that a
//! blocking assessment covers is listed as yanked with the vulnerability as the reason, and
//! its files answer 403.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Seek, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use cairn_store::doc::Ecosystem;
use cairn_store::names;
use cairn_store::package::{self, DigestingReader, PackageFormat};
use cairn_store::store::{FeedRecord, NewFile, NewPackage};
use sha2::Digest as _;

use crate::auth::Access;
use crate::blocking::{now_secs, Block};
use crate::connector::{Connector, UpstreamError};
use crate::versions::{compare, normalize_pypi};
use crate::{blocking, ApiError, FeedRequest, FeedServer};

const JSON: &str = "application/vnd.pypi.simple.v1+json";
const HTML: &str = "application/vnd.pypi.simple.v1+html";
/// Suffix of the PEP 658 companion file stored beside each wheel.
pub const METADATA_SUFFIX: &str = ".metadata";

/// Answers a request for `rest` (the path after `/feeds/NAME/`) of a PyPI feed.
pub(crate) async fn handle(
    server: &Arc<FeedServer>,
    req: FeedRequest<'_>,
    request: Request,
) -> Result<Response, ApiError> {
    let FeedRequest {
        feed,
        method,
        headers,
        rest,
    } = req;
    let segments: Vec<&str> = rest.split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["legacy"] | ["legacy", ""] | [""]) => upload(server, &feed, request).await,
        (&Method::GET, ["simple"] | ["simple", ""] | [""]) => {
            server.authorize(&headers, &feed.name, Access::Read)?;
            index(server, &feed, &headers).await
        }
        (&Method::GET, ["simple", project] | ["simple", project, ""]) => {
            server.authorize(&headers, &feed.name, Access::Read)?;
            let normalized = normalize_pypi(project);
            if *project != normalized || segments.len() == 2 {
                return Ok(Redirect::permanent(&format!(
                    "/feeds/{}/simple/{normalized}/",
                    feed.name
                ))
                .into_response());
            }
            project_page(server, &feed, &normalized, &headers).await
        }
        (&Method::GET | &Method::HEAD, ["files", name, version, file]) => {
            server.authorize(&headers, &feed.name, Access::Read)?;
            download(
                server,
                &feed,
                name,
                version,
                file,
                &headers,
                method == Method::HEAD,
            )
            .await
        }
        _ => Err(ApiError::not_found(format!(
            "no such PyPI resource `{rest}` in feed `{}`; the index is /feeds/{}/simple/",
            feed.name, feed.name
        ))),
    }
}

/// One file as the index lists it.
struct Listed {
    name: String,
    version: String,
    file: String,
    size: Option<u64>,
    sha256: String,
    metadata_sha256: Option<String>,
    requires_python: Option<String>,
    yanked: Option<String>,
    /// Cached from the feed's upstream.
    cached: bool,
}

/// Which format the client asked for.
fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let q = |mime: &str| -> f32 {
        accept
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let m = it.next()?.trim();
                (m == mime).then(|| {
                    it.find_map(|p| p.trim().strip_prefix("q=")?.parse::<f32>().ok())
                        .unwrap_or(1.0)
                })
            })
            .fold(0.0, f32::max)
    };
    let json = q(JSON);
    json > 0.0 && json >= q(HTML).max(q("text/html"))
}

async fn index(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (s, f) = (server.clone(), feed.clone());
    let json = wants_json(headers);
    let key = format!("pypi-index {json}");
    // Rendered once per state of the feed: a listing does not decode every manifest again.
    let body = blocking(move || s.rendered(&f, &key, || render_index(&s, &f.name, json))).await?;
    let content_type = if json { JSON } else { HTML };
    Ok(([(header::CONTENT_TYPE, content_type)], body.to_string()).into_response())
}

fn render_index(server: &FeedServer, feed: &str, json: bool) -> Result<String, ApiError> {
    let mut projects: Vec<String> = server
        .manifests(feed, |_| true)?
        .into_iter()
        .map(|m| normalize_pypi(&m.name))
        .collect();
    projects.sort();
    projects.dedup();
    if json {
        let body = serde_json::json!({
            "meta": { "api-version": "1.1" },
            "projects": projects.iter().map(|p| serde_json::json!({ "name": p })).collect::<Vec<_>>(),
        });
        return Ok(body.to_string());
    }
    let mut html = String::from(
        "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.1\"><title>Simple index</title></head><body>\n",
    );
    for p in &projects {
        html.push_str(&format!("<a href=\"{p}/\">{p}</a><br>\n"));
    }
    html.push_str("</body></html>\n");
    Ok(html)
}

fn listed_files(
    server: &FeedServer,
    feed: &FeedRecord,
    project: &str,
) -> Result<Vec<Listed>, ApiError> {
    let blocks = server.blocklist.get(server.store())?;
    let now = now_secs();
    let mut out = Vec::new();
    let all = server.manifests(&feed.name, |n| normalize_pypi(n) == project)?;
    let hidden = server.hidden_cached(&feed.name, project, &all);
    for m in all {
        if normalize_pypi(&m.name) != project || hidden.hides(&m) {
            continue;
        }
        let text = |k: &str| match m.metadata.get(k) {
            Some(ciborium::Value::Text(t)) => Some(t.clone()),
            _ => None,
        };
        let yanked = blocks
            .check(&feed.name, Ecosystem::Pypi, &m.name, &m.version, now)
            .map(|b| format!("blocked: {} ({})", b.vulnerability, b.reason))
            .or_else(|| text("yanked"));
        for f in &m.files {
            if f.name.ends_with(METADATA_SUFFIX) {
                continue;
            }
            let companion = format!("{}{METADATA_SUFFIX}", f.name);
            out.push(Listed {
                name: m.name.clone(),
                version: m.version.clone(),
                file: f.name.clone(),
                size: Some(f.size),
                sha256: f.digests.get("sha256").cloned().unwrap_or_default(),
                metadata_sha256: m
                    .files
                    .iter()
                    .find(|c| c.name == companion)
                    .and_then(|c| c.digests.get("sha256").cloned()),
                requires_python: text("requires_python"),
                yanked: yanked.clone(),
                cached: crate::connector::is_cached(&m),
            });
        }
    }
    out.sort_by(|a, b| compare(&a.version, &b.version).then_with(|| a.file.cmp(&b.file)));
    Ok(out)
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn project_page(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    project: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let json = wants_json(headers);
    let content_type = if json { JSON } else { HTML };
    names::check_package_name(Ecosystem::Pypi, project)?;
    let (s, f, p) = (server.clone(), feed.clone(), project.to_owned());
    let upstream = blocking(move || s.upstream_for(&f, &p, |n| normalize_pypi(n) == p)).await?;
    if let Some(c) = upstream {
        let (body, note) = upstream_project_page(server, feed, project, json, &c).await?;
        let response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
        return Ok(crate::connector::with_note(response, note));
    }
    let (s, f, p) = (server.clone(), feed.clone(), project.to_owned());
    let key = format!("pypi-project {project} {json}");
    let body = blocking(move || {
        s.rendered(&f, &key, || {
            render_project(&f, &p, listed_files(&s, &f, &p)?, json)
        })
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, content_type)], body.to_string()).into_response())
}

/// A file the upstream lists for a project.
#[derive(Clone, Debug)]
struct UpstreamFile {
    file: String,
    version: String,
    url: reqwest::Url,
    sha256: Option<String>,
    requires_python: Option<String>,
    yanked: Option<String>,
    size: Option<u64>,
}

/// What the upstream can be asked for a project page in.
const UPSTREAM_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, text/html;q=0.5";

/// The upstream's files of `project`, from its project page (PEP 691 JSON or PEP 503 HTML).
async fn upstream_files(
    c: &Connector,
    project: &str,
) -> Result<(reqwest::Url, Vec<UpstreamFile>), UpstreamError> {
    let url = c.url(&format!("{project}/"))?;
    let (body, kind) = c.metadata(&url, UPSTREAM_ACCEPT).await?;
    let files = parse_upstream_page(&body, &kind, &url, project).map_err(|e| c.refused(e))?;
    Ok((url, files))
}

/// The version in a file name of `project` (normalized): a wheel's second field, or what
/// follows the name in an sdist's.
fn version_in_file_name(project: &str, file: &str) -> Option<String> {
    if let Some(stem) = file.strip_suffix(".whl") {
        let mut parts = stem.split('-');
        let (name, version) = (parts.next()?, parts.next()?);
        return (normalize_pypi(name) == project).then(|| version.to_owned());
    }
    let stem = [".tar.gz", ".zip", ".tar.bz2", ".tgz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    stem.match_indices('-').find_map(|(i, _)| {
        (normalize_pypi(&stem[..i]) == project).then(|| stem[i + 1..].to_owned())
    })
}

fn parse_upstream_page(
    body: &[u8],
    kind: &str,
    page: &reqwest::Url,
    project: &str,
) -> Result<Vec<UpstreamFile>, UpstreamError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| UpstreamError::Refused(format!("{page} is not UTF-8")))?;
    // (label, href, requires-python, yanked, size) of each link.
    type Link = (String, String, Option<String>, Option<String>, Option<u64>);
    let mut raw: Vec<Link> = Vec::new();
    if kind.contains("json") {
        let doc: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| UpstreamError::Refused(format!("{page} is not JSON: {e}")))?;
        for f in doc["files"].as_array().into_iter().flatten() {
            let (Some(name), Some(href)) = (f["filename"].as_str(), f["url"].as_str()) else {
                continue;
            };
            let mut href = href.to_owned();
            if let Some(h) = f["hashes"]["sha256"].as_str() {
                if !href.contains('#') {
                    href = format!("{href}#sha256={h}");
                }
            }
            let yanked = match &f["yanked"] {
                serde_json::Value::String(r) => Some(r.clone()),
                serde_json::Value::Bool(true) => Some(String::new()),
                _ => None,
            };
            let rp = f["requires-python"].as_str().map(str::to_owned);
            raw.push((name.to_owned(), href, rp, yanked, f["size"].as_u64()));
        }
    } else {
        let lower = text.to_ascii_lowercase();
        let mut at = 0;
        while let Some(i) = lower[at..].find("<a ") {
            let start = at + i;
            let Some(end) = lower[start..].find('>').map(|e| start + e) else {
                break;
            };
            let tag = &text[start..end];
            let close = lower[end..].find("</a>").map_or(text.len(), |c| end + c);
            let label = unescape(text[end + 1..close].trim());
            at = close.min(text.len());
            let Some(href) = html_attr(tag, "href") else {
                continue;
            };
            raw.push((
                label,
                href,
                html_attr(tag, "data-requires-python"),
                html_attr(tag, "data-yanked"),
                None,
            ));
        }
    }
    let mut out = Vec::new();
    for (label, href, requires_python, yanked, size) in raw {
        if out.len() >= 100_000 {
            return Err(UpstreamError::Refused(format!(
                "{page} lists more than 100000 files"
            )));
        }
        let Ok(mut url) = page.join(&href) else {
            continue;
        };
        let sha256 = url.fragment().and_then(|f| {
            f.strip_prefix("sha256=")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_ascii_lowercase)
        });
        url.set_fragment(None);
        let file = if label.is_empty() {
            url.path_segments()
                .and_then(|mut s| s.next_back())
                .unwrap_or("")
                .to_owned()
        } else {
            label
        };
        if names::check_file_name(&file).is_err() {
            continue;
        }
        let Some(version) = version_in_file_name(project, &file) else {
            continue;
        };
        if names::check_version(&version).is_err() {
            continue;
        }
        out.push(UpstreamFile {
            file,
            version,
            url,
            sha256,
            requires_python,
            yanked,
            size,
        });
    }
    Ok(out)
}

/// The value of attribute `name` in an HTML start tag, unescaped.
fn html_attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before = lower[..at].chars().next_back();
        if !before.is_some_and(char::is_whitespace) {
            continue;
        }
        let rest = tag[from..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
            _ => rest.split(char::is_whitespace).next().unwrap_or(""),
        };
        return Some(unescape(value));
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// A project page of a feed with a connector: its files held here and the upstream's others,
/// every one under this feed's URLs; and whether the upstream answered.
async fn upstream_project_page(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    project: &str,
    json: bool,
    c: &Arc<Connector>,
) -> Result<(String, Option<&'static str>), ApiError> {
    let (listed, problem) =
        crate::connector::listing(upstream_files(c, project).await.map(|(_, f)| f));
    let note = problem.as_ref().map(UpstreamError::header);
    let (s, f, p) = (server.clone(), feed.clone(), project.to_owned());
    let upstream_url = c.config().upstream.clone();
    let body = blocking(move || {
        let mut files = listed_files(&s, &f, &p)?;
        let blocks = s.blocklist.get(s.store())?;
        let now = now_secs();
        // A version published here is listed with its own files only; one cached from the
        // upstream with all of the upstream's, and the upstream's yank.
        let held: std::collections::HashSet<String> =
            files.iter().map(|l| l.file.clone()).collect();
        let local: Vec<String> = files
            .iter()
            .filter(|l| !l.cached)
            .map(|l| l.version.clone())
            .collect();
        for l in files.iter_mut().filter(|l| l.cached && l.yanked.is_none()) {
            l.yanked = listed
                .iter()
                .find(|u| u.file == l.file)
                .and_then(|u| u.yanked.clone());
        }
        for u in listed {
            if held.contains(&u.file)
                || local.iter().any(|v| compare(v, &u.version).is_eq())
                || u.sha256.is_none()
            {
                continue;
            }
            let yanked = blocks
                .check(&f.name, Ecosystem::Pypi, &p, &u.version, now)
                .map(|b| format!("blocked: {} ({})", b.vulnerability, b.reason))
                .or(u.yanked);
            files.push(Listed {
                name: p.clone(),
                version: u.version,
                file: u.file,
                size: u.size,
                sha256: u.sha256.unwrap_or_default(),
                metadata_sha256: None,
                requires_python: u.requires_python,
                yanked,
                cached: false,
            });
        }
        files.sort_by(|a, b| compare(&a.version, &b.version).then_with(|| a.file.cmp(&b.file)));
        if let (true, Some(e)) = (files.is_empty(), problem) {
            return Err(e.api(&upstream_url));
        }
        render_project(&f, &p, files, json)
    })
    .await?;
    Ok((body, note))
}

/// Fetches `file` of `name` `version` from the upstream into the feed unless it is here
/// already; the (name, version) it is stored under.
async fn cache_from_upstream(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    c: &Arc<Connector>,
    name: &str,
    version: &str,
    file: &str,
) -> Result<(String, String), ApiError> {
    let project = normalize_pypi(name);
    let _one = c
        .one_at_a_time(&format!("{}/{project}/{file}", feed.name))
        .await;
    let (s, f, p, v, fl) = (
        server.clone(),
        feed.name.clone(),
        project.clone(),
        version.to_owned(),
        file.to_owned(),
    );
    // Stored meanwhile, or blocked: nothing to fetch.
    let held = blocking(move || {
        s.refuse_blocked(&f, Ecosystem::Pypi, &p, &v)?;
        // A version published here keeps its own files: the upstream's of it are not taken.
        // One cached from the upstream gets the upstream's other files as they are asked for.
        Ok(s.manifests(&f, |n| normalize_pypi(n) == p)?
            .into_iter()
            .find(|m| normalize_pypi(&m.name) == p && compare(&m.version, &v).is_eq())
            .map(|m| {
                let has = m.files.iter().any(|x| x.name == fl);
                (
                    m.name.clone(),
                    m.version.clone(),
                    has,
                    crate::connector::is_cached(&m),
                )
            }))
    })
    .await?;
    let held = match held {
        Some((n, v, true, _)) => Some((n, v)),
        Some((_, _, false, true)) | None => None,
        Some((n, v, false, false)) => {
            return Err(ApiError::not_found(format!(
                "{n} {v} is held here without `{file}`; files of a version held here are not taken from upstream"
            )))
        }
    };
    if let Some(found) = held {
        return Ok(found);
    }
    let upstream = &c.config().upstream;
    let (_, files) = upstream_files(c, &project)
        .await
        .map_err(|e| e.api(upstream))?;
    let Some(u) = files
        .into_iter()
        .find(|u| u.file == file && compare(&u.version, version).is_eq())
    else {
        return Err(ApiError::not_found(format!(
            "{name} {version} has no file `{file}` here or upstream"
        )));
    };
    let Some(published) = u.sha256.clone() else {
        return Err(c
            .refused(UpstreamError::Refused(format!(
                "{} has no sha256 upstream; it cannot be checked, so it is not cached",
                u.file
            )))
            .api(upstream));
    };
    let pushed = crate::connector::cache_file(
        server,
        c,
        &feed.name,
        crate::connector::ToCache {
            url: u.url,
            digest: crate::connector::Published::Sha256(published),
            file_name: file.to_owned(),
            expect: (project, version.to_owned()),
            metadata: BTreeMap::new(),
        },
    )
    .await?;
    Ok((pushed.name, pushed.version))
}

fn render_project(
    feed: &FeedRecord,
    project: &str,
    files: Vec<Listed>,
    json: bool,
) -> Result<String, ApiError> {
    if files.is_empty() {
        return Err(ApiError::not_found(format!(
            "no project `{project}` in feed `{}`",
            feed.name
        )));
    }
    let url = |l: &Listed| {
        format!(
            "/feeds/{}/files/{}/{}/{}",
            feed.name, l.name, l.version, l.file
        )
    };
    if json {
        let mut versions: Vec<String> = files.iter().map(|l| l.version.clone()).collect();
        versions.dedup();
        let body = serde_json::json!({
            "meta": { "api-version": "1.1" },
            "name": project,
            "versions": versions,
            "files": files.iter().map(|l| {
                let metadata = l.metadata_sha256.as_ref().map_or(serde_json::json!(false), |h| serde_json::json!({ "sha256": h }));
                serde_json::json!({
                    "filename": l.file,
                    "url": url(l),
                    "hashes": { "sha256": l.sha256 },
                    "requires-python": l.requires_python,
                    "core-metadata": metadata,
                    "dist-info-metadata": metadata,
                    "yanked": l.yanked.clone().map_or(serde_json::json!(false), serde_json::Value::String),
                    "size": l.size,
                })
            }).collect::<Vec<_>>(),
        });
        return Ok(body.to_string());
    }
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.1\"><title>Links for {project}</title></head><body>\n<h1>Links for {project}</h1>\n"
    );
    for l in &files {
        let mut attrs = String::new();
        if let Some(rp) = &l.requires_python {
            attrs.push_str(&format!(" data-requires-python=\"{}\"", escape(rp)));
        }
        if let Some(h) = &l.metadata_sha256 {
            attrs.push_str(&format!(
                " data-dist-info-metadata=\"sha256={h}\" data-core-metadata=\"sha256={h}\""
            ));
        }
        if let Some(y) = &l.yanked {
            attrs.push_str(&format!(" data-yanked=\"{}\"", escape(y)));
        }
        html.push_str(&format!(
            "<a href=\"{}#sha256={}\"{attrs}>{}</a><br>\n",
            escape(&url(l)),
            l.sha256,
            escape(&l.file)
        ));
    }
    html.push_str("</body></html>\n");
    Ok(html)
}

/// A download of a package file after the access, name and blocking checks.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_file(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    ecosystem: Ecosystem,
    name: &str,
    version: &str,
    file: &str,
    headers: &HeaderMap,
    head: bool,
    content_type: &'static str,
) -> Result<Response, ApiError> {
    names::check_package_name(ecosystem, name)?;
    names::check_version(version)?;
    names::check_file_name(file)?;
    let key = (
        feed.name.clone(),
        name.to_owned(),
        version.to_owned(),
        file.to_owned(),
    );
    let resolved = server
        .resolve_download(key, move |s, (f, n, v, file)| {
            let Some((_, manifest)) = s.store().manifest(&f, &n, &v)? else {
                return Err(ApiError::not_found(format!("{n} {v} is not in feed `{f}`")));
            };
            let Some(entry) = manifest.files.iter().find(|e| e.name == file) else {
                return Err(ApiError::not_found(format!("{n} {v} has no file `{file}`")));
            };
            if crate::connector::is_cached(&manifest) {
                let same = |x: &str| crate::push::same_package(ecosystem, x, &n);
                let all = s.manifests(&f, same)?;
                if s.hidden_cached(&f, &n, &all).hides(&manifest) {
                    return Err(ApiError::not_found(format!(
                        "{n} {v} came from the upstream, and `{n}` is published here"
                    )));
                }
            }
            let block = s
                .blocklist
                .get(s.store())?
                .check(&f, ecosystem, &n, &v, now_secs())
                .cloned();
            Ok(crate::Resolved {
                blob: entry.blob,
                size: entry.size,
                block,
            })
        })
        .await?;
    // The metadata of a blocked version stays readable, so resolvers can say why.
    if let Some(b) = resolved.block.filter(|_| !file.ends_with(METADATA_SUFFIX)) {
        server.metrics().blocked.fetch_add(1, Ordering::Relaxed);
        return Err(blocked(name, version, &b));
    }
    crate::body::blob_response(
        server,
        resolved.blob,
        resolved.size,
        headers,
        content_type,
        head,
    )
    .await
}

/// The 403 for a blocked version.
pub(crate) fn blocked(name: &str, version: &str, b: &Block) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{name} {version} is blocked by {} (assessed {}): {}",
            b.vulnerability, b.assessment_type, b.reason
        ),
    )
}

async fn download(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    name: &str,
    version: &str,
    file: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    let content_type = if file.ends_with(METADATA_SUFFIX) {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    let served = serve_file(
        server,
        feed,
        Ecosystem::Pypi,
        name,
        version,
        file,
        headers,
        head,
        content_type,
    )
    .await;
    match served {
        Err(e) if e.status == StatusCode::NOT_FOUND && !file.ends_with(METADATA_SUFFIX) => {
            let project = normalize_pypi(name);
            let (s, f, p) = (server.clone(), feed.clone(), project.clone());
            let upstream =
                blocking(move || s.upstream_for(&f, &p, |n| normalize_pypi(n) == p)).await?;
            let Some(c) = upstream else {
                return Err(e);
            };
            let (name, version) =
                cache_from_upstream(server, feed, &c, name, version, file).await?;
            serve_file(
                server,
                feed,
                Ecosystem::Pypi,
                &name,
                &version,
                file,
                headers,
                head,
                content_type,
            )
            .await
        }
        other => other,
    }
}

/// A file received in a multipart upload, on disk, with the digests computed as it arrived.
pub(crate) struct Received {
    pub(crate) file: tempfile::NamedTempFile,
    pub(crate) file_name: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) blake2_256: String,
    pub(crate) md5: String,
}

async fn upload(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    request: Request,
) -> Result<Response, ApiError> {
    server.authorize(request.headers(), &feed.name, Access::Publish)?;
    server.check_writable(&feed.name)?;
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("expected a multipart upload: {e}")))?;
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut received: Option<Received> = None;
    let tmp_dir = server.store().dir().join("tmp");
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        let name = field.name().unwrap_or("").to_owned();
        if name == "content" {
            let file_name = field.file_name().unwrap_or("").to_owned();
            received = Some(receive_file(server, field, file_name, &tmp_dir).await?);
        } else {
            let value = field.text().await.map_err(multipart_error)?;
            fields.insert(name, value);
        }
    }
    match fields.get(":action").map(String::as_str) {
        Some("file_upload") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported :action `{other}`; only file_upload is served"
            )))
        }
        None => return Err(ApiError::bad_request("the upload has no :action field")),
    }
    let received = received
        .ok_or_else(|| ApiError::bad_request("the upload has no file (field `content`)"))?;
    for (field, actual) in [
        ("sha256_digest", &received.sha256),
        ("blake2_256_digest", &received.blake2_256),
        ("md5_digest", &received.md5),
    ] {
        if let Some(declared) = fields.get(field).filter(|d| !d.is_empty()) {
            if !declared.eq_ignore_ascii_case(actual) {
                return Err(ApiError::bad_request(format!(
                    "{} does not match its {field}: declared {declared}, received {actual}; the upload was damaged",
                    received.file_name
                )));
            }
        }
    }
    let (s, feed_name) = (server.clone(), feed.name.clone());
    let form_name = fields.get("name").cloned().unwrap_or_default();
    let form_version = fields.get("version").cloned().unwrap_or_default();
    let outcome =
        blocking(move || publish_upload(&s, &feed_name, received, &form_name, &form_version))
            .await?;
    Ok((StatusCode::OK, outcome).into_response())
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let status = if status.is_server_error() {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(
        status,
        format!("the upload is malformed or cut short: {}", e.body_text()),
    )
}

pub(crate) async fn receive_file(
    server: &Arc<FeedServer>,
    mut field: axum::extract::multipart::Field<'_>,
    file_name: String,
    tmp_dir: &std::path::Path,
) -> Result<Received, ApiError> {
    names::check_file_name(&file_name)?;
    let internal = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("writing the upload: {e}"),
        )
    };
    std::fs::create_dir_all(tmp_dir).map_err(internal)?;
    let mut file = tempfile::NamedTempFile::new_in(tmp_dir).map_err(internal)?;
    let mut sha256 = sha2::Sha256::new();
    let mut blake2 = blake2::Blake2b::<blake2::digest::consts::U32>::new();
    let mut md5 = md5::Md5::new();
    let mut size = 0u64;
    let limit = server.config().max_upload_bytes();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{file_name} is larger than the {} MiB upload limit",
                    server.config().max_upload_mib
                ),
            ));
        }
        sha256.update(&chunk);
        blake2.update(&chunk);
        md5.update(&chunk);
        file.write_all(&chunk).map_err(internal)?;
    }
    server
        .metrics()
        .bytes_received
        .fetch_add(size, Ordering::Relaxed);
    Ok(Received {
        file,
        file_name,
        size,
        sha256: hex::encode(sha256.finalize()),
        blake2_256: hex::encode(blake2.finalize()),
        md5: hex::encode(md5.finalize()),
    })
}

fn publish_upload(
    server: &FeedServer,
    feed: &str,
    mut received: Received,
    form_name: &str,
    form_version: &str,
) -> Result<String, ApiError> {
    let format =
        PackageFormat::from_file_name(Ecosystem::Pypi, &received.file_name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{} is neither a wheel (.whl) nor an sdist (.tar.gz)",
                received.file_name
            ))
        })?;
    let io = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the upload: {e}"),
        )
    };
    let bad_package =
        |e: package::PackageError| ApiError::bad_request(format!("{}: {e}", received.file_name));
    let handle = received.file.as_file_mut();
    handle.rewind().map_err(io)?;
    let info = package::inspect(format, BufReader::new(&mut *handle)).map_err(bad_package)?;
    let metadata_text = if format == PackageFormat::Wheel {
        handle.rewind().map_err(io)?;
        Some(package::wheel_metadata(BufReader::new(&mut *handle)).map_err(bad_package)?)
    } else {
        None
    };
    if !form_name.is_empty() && normalize_pypi(form_name) != normalize_pypi(&info.name) {
        return Err(ApiError::bad_request(format!(
            "the upload names project `{form_name}` but {} is `{}`",
            received.file_name, info.name
        )));
    }
    if !form_version.is_empty() && compare(form_version, &info.version).is_ne() {
        return Err(ApiError::bad_request(format!(
            "the upload names version {form_version} but {} is version {}",
            received.file_name, info.version
        )));
    }
    // A project keeps the spelling it was first published with.
    let normalized = normalize_pypi(&info.name);
    let name = server
        .manifests(feed, |n| normalize_pypi(n) == normalized)?
        .into_iter()
        .find(|m| normalize_pypi(&m.name) == normalized)
        .map_or(info.name.clone(), |m| m.name);
    names::check_package_name(Ecosystem::Pypi, &name)?;
    names::check_version(&info.version)?;
    let store = server.store();
    handle.rewind().map_err(io)?;
    let mut reader = DigestingReader::new(
        File::open(received.file.path()).map_err(io)?,
        Ecosystem::Pypi,
    );
    let stored = store.put_blob(&mut reader)?;
    if stored.size != received.size {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored {} bytes of {}", stored.size, received.size),
        ));
    }
    let mut files = vec![NewFile {
        name: received.file_name.clone(),
        blob: stored.hash,
        size: stored.size,
        digests: reader.finish(),
    }];
    let mut pins = vec![stored];
    if let Some(text) = metadata_text {
        let mut reader = DigestingReader::new(text.as_bytes(), Ecosystem::Pypi);
        let stored = store.put_blob(&mut reader)?;
        files.push(NewFile {
            name: format!("{}{METADATA_SUFFIX}", received.file_name),
            blob: stored.hash,
            size: stored.size,
            digests: reader.finish(),
        });
        pins.push(stored);
    }
    let published = store.publish(
        feed,
        NewPackage {
            name: name.clone(),
            version: info.version.clone(),
            files,
            metadata: info.metadata,
        },
    )?;
    drop(pins);
    tracing::info!(feed, %name, version = %info.version, file = %received.file_name, "published");
    Ok(format!(
        "published {} {} ({}, manifest {})\n",
        name, info.version, received.file_name, published.doc
    ))
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("file_name", &self.file_name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> reqwest::Url {
        reqwest::Url::parse("http://up.example/simple/cairn-beta/").unwrap()
    }

    #[test]
    fn versions_are_read_from_wheel_and_sdist_names_of_the_project_only() {
        let v = |f| version_in_file_name("cairn-beta", f);
        assert_eq!(
            v("Cairn_Beta-2.0.0-py3-none-any.whl").as_deref(),
            Some("2.0.0")
        );
        assert_eq!(v("cairn-beta-2.0.0rc1.tar.gz").as_deref(), Some("2.0.0rc1"));
        assert_eq!(v("cairn.beta-1.0.zip").as_deref(), Some("1.0"));
        assert_eq!(v("evil-2.0.0-py3-none-any.whl"), None);
        assert_eq!(v("cairn-beta-evil-9.9.tar.gz").as_deref(), Some("evil-9.9"));
        assert_eq!(v("cairn-beta.exe"), None);
    }

    #[test]
    fn an_html_page_is_read_with_relative_links_hashes_and_attributes() {
        let html = r#"<html><body>
<a href="../../packages/cairn_beta-2.0.0-py3-none-any.whl#sha256=F0575D2FE3B6C07C11974FB7DD598B4E1328A3EFE14B52AA3F1323F3506F10DF" data-requires-python="&gt;=3.7" data-yanked="broken &amp; old">cairn_beta-2.0.0-py3-none-any.whl</a><br>
<A HREF='/x/cairn-beta-1.0.tar.gz#md5=00'>cairn-beta-1.0.tar.gz</A>
<a href="https://files.example/evil-1.0-py3-none-any.whl#sha256=0000000000000000000000000000000000000000000000000000000000000000">evil-1.0-py3-none-any.whl</a>
<a href="../x/../../bad name.whl">bad/name.whl</a>
<a data-x="é" href="cairn_beta-3.0-py3-none-any.whl">é</a>
<a href="nothing
"#;
        let files =
            parse_upstream_page(html.as_bytes(), "text/html", &page(), "cairn-beta").unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(
            files[0].url.as_str(),
            "http://up.example/packages/cairn_beta-2.0.0-py3-none-any.whl"
        );
        assert_eq!(
            files[0].sha256.as_deref(),
            Some("f0575d2fe3b6c07c11974fb7dd598b4e1328a3efe14b52aa3f1323f3506f10df")
        );
        assert_eq!(files[0].requires_python.as_deref(), Some(">=3.7"));
        assert_eq!(files[0].yanked.as_deref(), Some("broken & old"));
        assert_eq!(
            files[1].url.as_str(),
            "http://up.example/x/cairn-beta-1.0.tar.gz"
        );
        assert_eq!(files[1].sha256, None, "only a sha256 is taken");
    }

    #[test]
    fn a_json_page_is_read_and_garbage_is_refused_without_a_panic() {
        let json = r#"{"meta":{"api-version":"1.1"},"name":"cairn-beta","files":[
{"filename":"cairn_beta-2.0.0-py3-none-any.whl","url":"https://files.example/a/cairn_beta-2.0.0-py3-none-any.whl","hashes":{"sha256":"f0575d2fe3b6c07c11974fb7dd598b4e1328a3efe14b52aa3f1323f3506f10df"},"yanked":true,"size":1115},
{"filename":7},{"url":"x"}]}"#;
        let files = parse_upstream_page(json.as_bytes(), JSON, &page(), "cairn-beta").unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].size, Some(1115));
        assert_eq!(files[0].yanked.as_deref(), Some(""));
        assert!(files[0].sha256.is_some());
        assert!(parse_upstream_page(b"{", JSON, &page(), "cairn-beta").is_err());
        assert!(parse_upstream_page(&[0xff, 0xfe], "text/html", &page(), "x").is_err());
        for junk in [
            "<a ",
            "<a href=",
            "<a href='",
            "<a>",
            "<a href=\"\">",
            "</a><a ",
        ] {
            let _ = parse_upstream_page(junk.as_bytes(), "text/html", &page(), "cairn-beta");
        }
    }
}
