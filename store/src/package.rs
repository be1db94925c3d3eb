//! Reading a package file's own name, version and metadata: wheels (`*.dist-info/METADATA`),
//! sdists (`PKG-INFO`), npm tarballs (`package/package.json`) and crates (`Cargo.toml`), plus
//! the ecosystem digests clients check. Every read is bounded: metadata files larger than
//! [`MAX_METADATA_BYTES`] and archives with more than [`MAX_ARCHIVE_ENTRIES`] entries before
//! the metadata are refused, so a hostile archive costs little.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek};

use ciborium::Value;
use sha1::Digest as _;

use crate::doc::Ecosystem;

/// Largest metadata file read from an archive.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;
/// Archive entries scanned for the metadata file before giving up.
pub const MAX_ARCHIVE_ENTRIES: usize = 100_000;

/// The kinds of package file this module understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackageFormat {
    /// Python wheel (`.whl`, zip).
    Wheel,
    /// Python source distribution (`.tar.gz`).
    Sdist,
    /// npm tarball (`.tgz`).
    NpmTarball,
    /// Rust crate (`.crate`).
    Crate,
}

impl PackageFormat {
    /// Guesses the format from a file name and the feed's ecosystem.
    pub fn from_file_name(ecosystem: Ecosystem, name: &str) -> Option<PackageFormat> {
        match ecosystem {
            Ecosystem::Pypi if name.ends_with(".whl") => Some(PackageFormat::Wheel),
            Ecosystem::Pypi if name.ends_with(".tar.gz") => Some(PackageFormat::Sdist),
            Ecosystem::Npm if name.ends_with(".tgz") => Some(PackageFormat::NpmTarball),
            Ecosystem::Cargo if name.ends_with(".crate") => Some(PackageFormat::Crate),
            _ => None,
        }
    }
}

/// What a package file says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct PackageInfo {
    /// Package name as written in its metadata.
    pub name: String,
    /// Version.
    pub version: String,
    /// Selected metadata fields.
    pub metadata: BTreeMap<String, Value>,
}

/// Why a package file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// The archive itself is broken.
    #[error("{format} is not a readable archive: {detail}")]
    BadArchive {
        format: &'static str,
        detail: String,
    },
    /// The metadata file is missing.
    #[error("{format} has no {file}")]
    MissingMetadata {
        format: &'static str,
        file: &'static str,
    },
    /// The metadata file does not parse or lacks a field.
    #[error("{file} is invalid: {detail}")]
    BadMetadata { file: &'static str, detail: String },
}

fn bad_archive(format: &'static str) -> impl Fn(io::Error) -> PackageError {
    move |e| PackageError::BadArchive {
        format,
        detail: e.to_string(),
    }
}

/// Reads name, version and metadata from a package file.
pub fn inspect(format: PackageFormat, file: impl Read + Seek) -> Result<PackageInfo, PackageError> {
    match format {
        PackageFormat::Wheel => inspect_wheel(file),
        PackageFormat::Sdist => {
            let text = find_in_tar_gz(file, "sdist", |p| is_top_level_file(p, "PKG-INFO"))?.ok_or(
                PackageError::MissingMetadata {
                    format: "sdist",
                    file: "PKG-INFO",
                },
            )?;
            parse_core_metadata("PKG-INFO", &text)
        }
        PackageFormat::NpmTarball => {
            let text = find_in_tar_gz(file, "npm tarball", |p| {
                is_top_level_file(p, "package.json")
            })?
            .ok_or(PackageError::MissingMetadata {
                format: "npm tarball",
                file: "package/package.json",
            })?;
            parse_package_json(&text)
        }
        PackageFormat::Crate => {
            let text = find_in_tar_gz(file, "crate", |p| is_top_level_file(p, "Cargo.toml"))?
                .ok_or(PackageError::MissingMetadata {
                    format: "crate",
                    file: "Cargo.toml",
                })?;
            parse_cargo_toml(&text)
        }
    }
}

/// `dir/name` with exactly one directory level.
fn is_top_level_file(path: &str, name: &str) -> bool {
    let mut parts = path.trim_start_matches("./").split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(d), Some(n), None) if !d.is_empty() && n == name)
}

fn read_bounded(r: impl Read, file: &'static str) -> Result<String, PackageError> {
    let mut buf = Vec::new();
    r.take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| PackageError::BadMetadata {
            file,
            detail: e.to_string(),
        })?;
    if buf.len() as u64 > MAX_METADATA_BYTES {
        return Err(PackageError::BadMetadata {
            file,
            detail: format!("larger than {MAX_METADATA_BYTES} bytes"),
        });
    }
    String::from_utf8(buf).map_err(|_| PackageError::BadMetadata {
        file,
        detail: "not utf-8".into(),
    })
}

/// Largest GNU long-name or long-link body, or PAX extension header, read from a tar.
pub const MAX_TAR_EXTENSION_BYTES: u64 = 64 << 10;
/// Decompressed bytes read from a tar.gz before giving up on finding the metadata file: a
/// few megabytes of gzip can hold gigabytes of zeros, and each is read to be skipped.
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

/// Reads at most `left` bytes, then fails: the decompression bound.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other(format!(
                "more than {MAX_DECOMPRESSED_BYTES} bytes decompressed before the metadata file"
            )));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The body of a tar extension entry (long name, long link, PAX header), bounded.
fn read_extension<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    format: &'static str,
) -> Result<Vec<u8>, PackageError> {
    let size = entry.header().size().map_err(bad_archive(format))?;
    if size > MAX_TAR_EXTENSION_BYTES {
        return Err(PackageError::BadArchive {
            format,
            detail: format!(
                "a tar extension header of {size} bytes (at most {MAX_TAR_EXTENSION_BYTES} are read)"
            ),
        });
    }
    let mut out = Vec::with_capacity(size as usize);
    entry
        .take(MAX_TAR_EXTENSION_BYTES)
        .read_to_end(&mut out)
        .map_err(bad_archive(format))?;
    Ok(out)
}

/// The text of the first regular file in a tar.gz whose path `wanted` accepts. Entries are
/// read raw, so the tar reader never buffers a long name, long link or PAX header itself;
/// they are read here, each bounded, and applied to the entry they describe. Entries,
/// decompressed bytes and the metadata file are bounded too.
fn find_in_tar_gz(
    r: impl Read,
    format: &'static str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Option<String>, PackageError> {
    let gz = flate2::read::GzDecoder::new(r);
    if gz.header().is_none() {
        return Err(PackageError::BadArchive {
            format,
            detail: "not gzip".into(),
        });
    }
    let mut archive = tar::Archive::new(Bounded {
        inner: gz,
        left: MAX_DECOMPRESSED_BYTES,
    });
    let entries = archive.entries().map_err(bad_archive(format))?.raw(true);
    let mut long_name: Option<String> = None;
    let mut pax_path: Option<String> = None;
    for (i, entry) in entries.enumerate() {
        if i >= MAX_ARCHIVE_ENTRIES {
            break;
        }
        let mut entry = entry.map_err(bad_archive(format))?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname() {
            let body = read_extension(&mut entry, format)?;
            let name = String::from_utf8_lossy(&body);
            long_name = Some(name.trim_end_matches('\0').to_owned());
            continue;
        }
        if kind.is_gnu_longlink() || kind.is_pax_global_extensions() {
            read_extension(&mut entry, format)?;
            continue;
        }
        if kind.is_pax_local_extensions() {
            let body = read_extension(&mut entry, format)?;
            for ext in tar::PaxExtensions::new(&body) {
                let ext = ext.map_err(bad_archive(format))?;
                if ext.key() == Ok("path") {
                    pax_path = ext.value().ok().map(str::to_owned);
                }
            }
            continue;
        }
        let path = match pax_path.take().or(long_name.take()) {
            Some(p) => p,
            None => entry
                .path()
                .map_err(bad_archive(format))?
                .to_string_lossy()
                .into_owned(),
        };
        if kind.is_file() && wanted(&path) {
            return read_bounded(entry, "metadata file").map(Some);
        }
    }
    Ok(None)
}

fn inspect_wheel(file: impl Read + Seek) -> Result<PackageInfo, PackageError> {
    parse_core_metadata("METADATA", &wheel_metadata(file)?)
}

/// The text of a wheel's `*.dist-info/METADATA` (what PEP 658 serves beside the wheel).
pub fn wheel_metadata(file: impl Read + Seek) -> Result<String, PackageError> {
    let mut zip = zip::ZipArchive::new(file).map_err(|e| PackageError::BadArchive {
        format: "wheel",
        detail: e.to_string(),
    })?;
    let name = (0..zip.len().min(MAX_ARCHIVE_ENTRIES))
        .filter_map(|i| {
            zip.name_for_index(i)
                .and_then(|r| r.ok())
                .map(|n| n.into_owned())
        })
        .find(|n| {
            n.split_once('/')
                .is_some_and(|(d, f)| d.ends_with(".dist-info") && f == "METADATA")
        })
        .ok_or(PackageError::MissingMetadata {
            format: "wheel",
            file: "*.dist-info/METADATA",
        })?;
    let entry = zip.by_name(&name).map_err(|e| PackageError::BadArchive {
        format: "wheel",
        detail: e.to_string(),
    })?;
    read_bounded(entry, "METADATA")
}

/// Parses Python core metadata (the RFC 822-style headers of METADATA and PKG-INFO).
pub fn parse_core_metadata(file: &'static str, text: &str) -> Result<PackageInfo, PackageError> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            break; // the body (long description) follows
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    let name = get("name")
        .filter(|s| !s.is_empty())
        .ok_or(PackageError::BadMetadata {
            file,
            detail: "no Name field".into(),
        })?;
    let version = get("version")
        .filter(|s| !s.is_empty())
        .ok_or(PackageError::BadMetadata {
            file,
            detail: "no Version field".into(),
        })?;
    let mut metadata = BTreeMap::new();
    for (key, field) in [
        ("summary", "summary"),
        ("requires_python", "requires-python"),
        ("metadata_version", "metadata-version"),
        ("license", "license"),
    ] {
        if let Some(v) = get(field) {
            metadata.insert(key.to_owned(), Value::Text(v));
        }
    }
    let requires: Vec<Value> = fields
        .iter()
        .filter(|(k, _)| k == "requires-dist")
        .map(|(_, v)| Value::Text(v.clone()))
        .collect();
    if !requires.is_empty() {
        metadata.insert("requires_dist".into(), Value::Array(requires));
    }
    Ok(PackageInfo {
        name,
        version,
        metadata,
    })
}

/// Parses an npm `package.json`; the whole document (less `readme`) becomes metadata.
pub fn parse_package_json(text: &str) -> Result<PackageInfo, PackageError> {
    const FILE: &str = "package.json";
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| PackageError::BadMetadata {
            file: FILE,
            detail: e.to_string(),
        })?;
    let obj = json.as_object().ok_or(PackageError::BadMetadata {
        file: FILE,
        detail: "not an object".into(),
    })?;
    let field = |k: &str| {
        obj.get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| PackageError::BadMetadata {
                file: FILE,
                detail: format!("no `{k}` string"),
            })
    };
    let name = field("name")?;
    let version = field("version")?;
    let mut pj = obj.clone();
    pj.remove("readme");
    let mut metadata = BTreeMap::new();
    metadata.insert(
        "package_json".into(),
        json_to_cbor(&serde_json::Value::Object(pj)),
    );
    Ok(PackageInfo {
        name,
        version,
        metadata,
    })
}

/// Parses a crate's `Cargo.toml`.
pub fn parse_cargo_toml(text: &str) -> Result<PackageInfo, PackageError> {
    const FILE: &str = "Cargo.toml";
    let doc: toml::Table = toml::from_str(text).map_err(|e| PackageError::BadMetadata {
        file: FILE,
        detail: e.to_string(),
    })?;
    let package =
        doc.get("package")
            .and_then(|p| p.as_table())
            .ok_or(PackageError::BadMetadata {
                file: FILE,
                detail: "no [package] table".into(),
            })?;
    let field = |k: &str| {
        package
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| PackageError::BadMetadata {
                file: FILE,
                detail: format!("no package.{k} string"),
            })
    };
    let name = field("name")?;
    let version = field("version")?;
    let mut metadata = BTreeMap::new();
    for key in ["description", "license", "rust-version"] {
        if let Some(v) = package.get(key).and_then(|v| v.as_str()) {
            metadata.insert(key.replace('-', "_"), Value::Text(v.to_owned()));
        }
    }
    for key in ["dependencies", "build-dependencies", "features"] {
        if let Some(t) = doc.get(key) {
            let json = serde_json::to_value(t).unwrap_or(serde_json::Value::Null);
            metadata.insert(key.replace('-', "_"), json_to_cbor(&json));
        }
    }
    Ok(PackageInfo {
        name,
        version,
        metadata,
    })
}

/// What `cargo publish` sends as a crate's metadata (the registry web API's JSON: `name`,
/// `vers`, `deps`, `features`, `links`, `rust_version`), read from the normalized
/// `Cargo.toml` inside the `.crate` that `r` holds, so that a crate stored without cargo lists
/// the same way as one cargo published.
pub fn crate_publish_metadata(r: impl Read) -> Result<serde_json::Value, PackageError> {
    const FILE: &str = "Cargo.toml";
    let text = find_in_tar_gz(r, "crate", |p| is_top_level_file(p, FILE))?.ok_or(
        PackageError::MissingMetadata {
            format: "crate",
            file: FILE,
        },
    )?;
    let bad = |detail: String| PackageError::BadMetadata { file: FILE, detail };
    let doc: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let info = parse_cargo_toml(&text)?;
    let package = doc
        .get("package")
        .and_then(|p| p.as_table())
        .ok_or_else(|| bad("no [package] table".into()))?;
    let mut deps = Vec::new();
    let sections = [
        ("dependencies", "normal"),
        ("dev-dependencies", "dev"),
        ("dev_dependencies", "dev"),
        ("build-dependencies", "build"),
        ("build_dependencies", "build"),
    ];
    let mut add = |table: &toml::Table, target: Option<&str>| -> Result<(), PackageError> {
        for (section, kind) in sections {
            let Some(list) = table.get(section) else {
                continue;
            };
            let list = list
                .as_table()
                .ok_or_else(|| bad(format!("[{section}] is not a table")))?;
            for (key, spec) in list {
                deps.push(cargo_dep(key, spec, kind, target).map_err(&bad)?);
            }
        }
        Ok(())
    };
    add(&doc, None)?;
    if let Some(targets) = doc.get("target").and_then(|t| t.as_table()) {
        for (cfg, table) in targets {
            if let Some(table) = table.as_table() {
                add(table, Some(cfg))?;
            }
        }
    }
    let mut features = serde_json::Map::new();
    if let Some(table) = doc.get("features").and_then(|f| f.as_table()) {
        for (name, values) in table {
            let values: Vec<String> = values
                .as_array()
                .ok_or_else(|| bad(format!("feature `{name}` is not a list")))?
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(format!("feature `{name}` lists a value that is not text")))?;
            features.insert(name.clone(), serde_json::json!(values));
        }
    }
    let text_field = |k: &str| {
        package
            .get(k)
            .and_then(|v| v.as_str())
            .map_or(serde_json::Value::Null, |s| serde_json::json!(s))
    };
    Ok(serde_json::json!({
        "name": info.name,
        "vers": info.version,
        "deps": deps,
        "features": features,
        "links": text_field("links"),
        "rust_version": text_field("rust-version"),
    }))
}

/// One dependency as `cargo publish` describes it, from its `Cargo.toml` entry.
fn cargo_dep(
    key: &str,
    spec: &toml::Value,
    kind: &str,
    target: Option<&str>,
) -> Result<serde_json::Value, String> {
    let (req, table) = match spec {
        toml::Value::String(req) => (req.as_str(), None),
        toml::Value::Table(t) => (
            t.get("version").and_then(|v| v.as_str()).unwrap_or("*"),
            Some(t),
        ),
        _ => {
            return Err(format!(
                "dependency `{key}` is neither a version nor a table"
            ))
        }
    };
    let get = |k: &str| {
        table.and_then(|t| {
            t.get(k)
                .or_else(|| t.get(k.replace('-', "_").as_str()))
                .cloned()
        })
    };
    let features: Vec<String> = match get("features") {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("dependency `{key}` lists a feature that is not text"))?,
        Some(_) => return Err(format!("the features of dependency `{key}` are not a list")),
    };
    let flag = |k: &str, default: bool| get(k).and_then(|v| v.as_bool()).unwrap_or(default);
    let package = get("package").and_then(|v| v.as_str().map(str::to_owned));
    Ok(serde_json::json!({
        "name": package.as_deref().unwrap_or(key),
        "version_req": normalize_version_req(req),
        "features": features,
        "optional": flag("optional", false),
        "default_features": flag("default-features", true),
        "target": target,
        "kind": kind,
        "registry": get("registry-index").and_then(|v| v.as_str().map(str::to_owned)),
        "explicit_name_in_toml": package.is_some().then_some(key),
    }))
}

/// A version requirement as cargo writes it (`1.0` is `^1.0`, `>= 1, < 2` is `>=1, <2`).
fn normalize_version_req(req: &str) -> String {
    req.split(',')
        .map(|part| {
            let part = part.trim();
            let op_len = part
                .find(|c: char| !matches!(c, '<' | '>' | '=' | '~' | '^'))
                .unwrap_or(part.len());
            let (op, version) = (&part[..op_len], part[op_len..].trim());
            match op {
                "" if version == "*" || version.contains(['*', 'x', 'X']) => version.to_owned(),
                "" => format!("^{version}"),
                op => format!("{op}{version}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Converts JSON to CBOR values that deterministic encoding accepts (floats become text).
pub fn json_to_cbor(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Integer(i.into()),
            (_, Some(u)) => Value::Integer(u.into()),
            _ => Value::Text(n.to_string()),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_to_cbor).collect()),
        serde_json::Value::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::Text(k.clone()), json_to_cbor(v)))
                .collect(),
        ),
    }
}

/// Converts metadata back to JSON for display and APIs.
pub fn cbor_to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Integer(i) => {
            let i = i128::from(*i);
            i64::try_from(i)
                .map(serde_json::Value::from)
                .or_else(|_| u64::try_from(i).map(serde_json::Value::from))
                .unwrap_or_else(|_| serde_json::Value::String(i.to_string()))
        }
        Value::Text(s) => serde_json::Value::String(s.clone()),
        Value::Bytes(b) => serde_json::Value::String(hex::encode(b)),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(cbor_to_json).collect()),
        Value::Map(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = k
                        .as_text()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{k:?}"));
                    (key, cbor_to_json(v))
                })
                .collect(),
        ),
        other => serde_json::Value::String(format!("{other:?}")),
    }
}

/// Computes the digests an ecosystem's clients check while bytes stream past.
pub struct DigestingReader<R> {
    inner: R,
    sha256: Option<sha2::Sha256>,
    sha512: Option<sha2::Sha512>,
    sha1: Option<sha1::Sha1>,
}

impl<R> std::fmt::Debug for DigestingReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestingReader").finish_non_exhaustive()
    }
}

impl<R: Read> DigestingReader<R> {
    /// Wraps `inner`, computing what `ecosystem` needs: sha256 for PyPI and Cargo, sha512 and
    /// sha1 for npm, nothing for raw feeds (BLAKE3 is their digest).
    pub fn new(inner: R, ecosystem: Ecosystem) -> DigestingReader<R> {
        DigestingReader {
            inner,
            sha256: matches!(ecosystem, Ecosystem::Pypi | Ecosystem::Cargo).then(sha2::Sha256::new),
            sha512: (ecosystem == Ecosystem::Npm).then(sha2::Sha512::new),
            sha1: (ecosystem == Ecosystem::Npm).then(sha1::Sha1::new),
        }
    }

    /// The digests by algorithm name, lowercase hex.
    pub fn finish(self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(h) = self.sha256 {
            out.insert("sha256".into(), hex::encode(h.finalize()));
        }
        if let Some(h) = self.sha512 {
            out.insert("sha512".into(), hex::encode(h.finalize()));
        }
        if let Some(h) = self.sha1 {
            out.insert("sha1".into(), hex::encode(h.finalize()));
        }
        out
    }
}

impl<R: Read> Read for DigestingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = &buf[..n];
        if let Some(h) = self.sha256.as_mut() {
            h.update(data);
        }
        if let Some(h) = self.sha512.as_mut() {
            h.update(data);
        }
        if let Some(h) = self.sha1.as_mut() {
            h.update(data);
        }
        Ok(n)
    }
}

/// Test and benchmark helpers that build small real package files.
pub mod fixtures {
    use std::io::Write;

    /// A gzip-compressed tar of `files` (path, bytes).
    pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            // Paths here are fixed test names; a failure is a bug in the caller.
            #[allow(clippy::unwrap_used)]
            tar.append_data(&mut h, path, *data).unwrap();
        }
        #[allow(clippy::unwrap_used)]
        tar.into_inner().unwrap().finish().unwrap()
    }

    /// A minimal wheel for `name` `version`.
    pub fn wheel(name: &str, version: &str, requires: &[&str]) -> Vec<u8> {
        wheel_with_payload(name, version, requires, &[])
    }

    /// A wheel for `name` `version` that also carries `payload` (stored uncompressed, so the
    /// wheel's size follows it) as `MODULE/data.bin`.
    #[allow(clippy::unwrap_used)]
    pub fn wheel_with_payload(
        name: &str,
        version: &str,
        requires: &[&str],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        let module = name.replace('-', "_");
        zip.start_file(format!("{module}/__init__.py"), opts)
            .unwrap();
        zip.write_all(format!("VERSION = '{version}'\n").as_bytes())
            .unwrap();
        if !payload.is_empty() {
            let stored = opts.compression_method(zip::CompressionMethod::Stored);
            zip.start_file(format!("{module}/data.bin"), stored)
                .unwrap();
            zip.write_all(payload).unwrap();
        }
        let dist = format!("{module}-{version}.dist-info");
        let mut meta = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: test package {name}\n");
        for r in requires {
            meta.push_str(&format!("Requires-Dist: {r}\n"));
        }
        zip.start_file(format!("{dist}/METADATA"), opts).unwrap();
        zip.write_all(meta.as_bytes()).unwrap();
        zip.start_file(format!("{dist}/WHEEL"), opts).unwrap();
        zip.write_all(b"Wheel-Version: 1.0\nGenerator: cairn-fixtures\nRoot-Is-Purelib: true\nTag: py3-none-any\n").unwrap();
        zip.start_file(format!("{dist}/RECORD"), opts).unwrap();
        zip.finish().unwrap().into_inner()
    }

    /// A minimal sdist.
    pub fn sdist(name: &str, version: &str) -> Vec<u8> {
        let top = format!("{name}-{version}");
        let pkg_info = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n");
        tar_gz(&[(&format!("{top}/PKG-INFO"), pkg_info.as_bytes())])
    }

    /// A minimal npm tarball.
    pub fn npm_tarball(name: &str, version: &str) -> Vec<u8> {
        let pj = format!(
            r#"{{"name":"{name}","version":"{version}","description":"t","main":"index.js"}}"#
        );
        tar_gz(&[
            ("package/package.json", pj.as_bytes()),
            ("package/index.js", b"module.exports = 1;\n"),
        ])
    }

    /// A minimal .crate.
    pub fn crate_file(name: &str, version: &str) -> Vec<u8> {
        let top = format!("{name}-{version}");
        let toml = format!("[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\ndescription = \"t\"\n\n[dependencies]\n");
        tar_gz(&[
            (&format!("{top}/Cargo.toml"), toml.as_bytes()),
            (&format!("{top}/src/lib.rs"), b"pub fn f() {}\n"),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn version_requirements_are_written_as_cargo_writes_them() {
        for (req, cargo) in [
            ("1.0", "^1.0"),
            ("^1.2.3", "^1.2.3"),
            (">= 1.1, < 2", ">=1.1, <2"),
            ("=0.1.3", "=0.1.3"),
            ("~ 0.3", "~0.3"),
            ("*", "*"),
            ("1.*", "1.*"),
        ] {
            assert_eq!(normalize_version_req(req), cargo, "{req}");
        }
    }

    #[test]
    fn reads_each_format() {
        let w = inspect(
            PackageFormat::Wheel,
            Cursor::new(fixtures::wheel("my-pkg", "1.2.0", &["dep>=1"])),
        )
        .unwrap();
        assert_eq!((w.name.as_str(), w.version.as_str()), ("my-pkg", "1.2.0"));
        assert_eq!(
            w.metadata["requires_dist"],
            Value::Array(vec![Value::Text("dep>=1".into())])
        );
        // With a payload: as large as it, and still read the same way.
        let big = fixtures::wheel_with_payload("my-pkg", "1.2.0", &[], &[7u8; 100_000]);
        assert!(big.len() > 100_000, "{}", big.len());
        let w = inspect(PackageFormat::Wheel, Cursor::new(big)).unwrap();
        assert_eq!((w.name.as_str(), w.version.as_str()), ("my-pkg", "1.2.0"));
        let s = inspect(
            PackageFormat::Sdist,
            Cursor::new(fixtures::sdist("my-pkg", "1.2.0")),
        )
        .unwrap();
        assert_eq!(s.version, "1.2.0");
        let n = inspect(
            PackageFormat::NpmTarball,
            Cursor::new(fixtures::npm_tarball("@acme/x", "0.1.0")),
        )
        .unwrap();
        assert_eq!(n.name, "@acme/x");
        let c = inspect(
            PackageFormat::Crate,
            Cursor::new(fixtures::crate_file("foo", "0.3.1")),
        )
        .unwrap();
        assert_eq!((c.name.as_str(), c.version.as_str()), ("foo", "0.3.1"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Real package files with bytes changed: the tar formats are changed before
        /// compression (so the damage reaches the tar reader), wheels as they are. Reading them
        /// never panics.
        #[test]
        fn mutated_packages_never_panic(
            pick in 0usize..4,
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..24),
        ) {
            let (format, bytes) = match pick {
                0 => (PackageFormat::Wheel, fixtures::wheel("p", "1.0", &["d"])),
                1 => (PackageFormat::Sdist, gunzip(&fixtures::sdist("p", "1.0"))),
                2 => (PackageFormat::NpmTarball, gunzip(&fixtures::npm_tarball("p", "1.0.0"))),
                _ => (PackageFormat::Crate, gunzip(&fixtures::crate_file("p", "1.0.0"))),
            };
            let mut bytes = bytes;
            for (at, byte) in edits {
                let i = at % bytes.len();
                bytes[i] ^= byte | 1;
            }
            if format != PackageFormat::Wheel {
                use std::io::Write;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&bytes).unwrap();
                bytes = gz.finish().unwrap();
            }
            let _ = inspect(format, Cursor::new(bytes));
        }
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn malformed_archives_are_clear_errors() {
        let err = inspect(
            PackageFormat::NpmTarball,
            Cursor::new(b"not gzip at all".to_vec()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not gzip"), "{err}");
        let err = inspect(PackageFormat::Wheel, Cursor::new(b"PK garbage".to_vec())).unwrap_err();
        assert!(matches!(err, PackageError::BadArchive { .. }));
        let mut truncated = fixtures::crate_file("foo", "1.0.0");
        truncated.truncate(truncated.len() / 2);
        assert!(inspect(PackageFormat::Crate, Cursor::new(truncated)).is_err());
        let err = inspect(
            PackageFormat::Sdist,
            Cursor::new(fixtures::npm_tarball("x", "1")),
        )
        .unwrap_err();
        assert!(matches!(err, PackageError::MissingMetadata { .. }));
        let err = parse_core_metadata("METADATA", "Name: x\n").unwrap_err();
        assert!(err.to_string().contains("no Version"));
    }

    #[test]
    fn digests_match_known_values() {
        let mut r = DigestingReader::new(&b"abc"[..], Ecosystem::Npm);
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        let d = r.finish();
        assert_eq!(d["sha1"], "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert!(d["sha512"].starts_with("ddaf35a193617aba"));
        let mut r = DigestingReader::new(&b"abc"[..], Ecosystem::Pypi);
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(
            r.finish()["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let r = DigestingReader::new(&b""[..], Ecosystem::Raw);
        assert!(r.finish().is_empty());
    }
}
