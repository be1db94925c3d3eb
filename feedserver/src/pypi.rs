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
    size: u64,
    sha256: String,
    metadata_sha256: Option<String>,
    requires_python: Option<String>,
    yanked: Option<String>,
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
    for m in server.manifests(&feed.name, |n| normalize_pypi(n) == project)? {
        if normalize_pypi(&m.name) != project {
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
                size: f.size,
                sha256: f.digests.get("sha256").cloned().unwrap_or_default(),
                metadata_sha256: m
                    .files
                    .iter()
                    .find(|c| c.name == companion)
                    .and_then(|c| c.digests.get("sha256").cloned()),
                requires_python: text("requires_python"),
                yanked: yanked.clone(),
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
    let (s, f, p) = (server.clone(), feed.clone(), project.to_owned());
    let key = format!("pypi-project {project} {json}");
    let body = blocking(move || s.rendered(&f, &key, || render_project(&s, &f, &p, json))).await?;
    let content_type = if json { JSON } else { HTML };
    Ok(([(header::CONTENT_TYPE, content_type)], body.to_string()).into_response())
}

fn render_project(
    server: &FeedServer,
    feed: &FeedRecord,
    project: &str,
    json: bool,
) -> Result<String, ApiError> {
    let files = listed_files(server, feed, project)?;
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
    serve_file(
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
    .await
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
