//! Publishing files as they are, the way `cairn push` and `POST /api/v1/feeds/FEED/files/FILE`
//! do: name and version come from the package file itself (wheel, sdist, npm tarball,
//! `.crate`) unless given, and the index entries are the ones the ecosystem's own client
//! would have produced (a wheel's PEP 658 metadata beside it, a crate's index line, a PyPI
//! project's first spelling, `latest` moved to an npm tarball's version).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;

use axum::http::StatusCode;
use cairn_store::package::{self, DigestingReader, PackageFormat};
use cairn_store::{names, Ecosystem, Hash, NewFile, NewPackage, PublishOutcome, Store};

use crate::ApiError;

/// One file to publish.
#[derive(Clone, Debug)]
pub struct PushFile {
    /// Where its bytes are.
    pub path: PathBuf,
    /// The name it is published under.
    pub file_name: String,
    /// How messages name it (the path the user gave).
    pub shown: String,
}

/// One version a push published or changed.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// Created, files added, or unchanged.
    pub outcome: PublishOutcome,
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Files given for it (companions not counted).
    pub files: usize,
    /// Its manifest.
    pub doc: Hash,
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// Publishes `files` to `feed`: every file is read and checked before anything is stored;
/// with `name` and `version` all files go into that version.
pub fn push(
    store: &Store,
    feed: &str,
    files: &[PushFile],
    name: Option<String>,
    version: Option<String>,
) -> Result<Vec<Pushed>, ApiError> {
    push_with(store, feed, files, name, version, &PushOptions::default())
}

/// What a push does besides [`push`]'s defaults.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Every file must be a package of this name (as the ecosystem compares names) and
    /// version, read from the file itself; anything else is refused before it is stored.
    pub expect: Option<(String, String)>,
    /// Metadata set on every version, over what the files give.
    pub metadata: BTreeMap<String, ciborium::Value>,
    /// Leave npm's `latest` where it is (a version cached from an upstream is not news).
    pub keep_tags: bool,
}

/// Whether `a` and `b` name one package in `ecosystem`.
pub(crate) fn same_package(ecosystem: Ecosystem, a: &str, b: &str) -> bool {
    match ecosystem {
        Ecosystem::Pypi => crate::versions::normalize_pypi(a) == crate::versions::normalize_pypi(b),
        Ecosystem::Cargo => crate::cargo::crate_key(a) == crate::cargo::crate_key(b),
        Ecosystem::Npm | Ecosystem::Raw => a == b,
    }
}

/// [`push`] with `options`.
pub fn push_with(
    store: &Store,
    feed: &str,
    files: &[PushFile],
    name: Option<String>,
    version: Option<String>,
    options: &PushOptions,
) -> Result<Vec<Pushed>, ApiError> {
    let ecosystem = store
        .feed(feed)?
        .ecosystem()
        .ok_or_else(|| bad("cannot push to the system feed".into()))?;
    if name.is_some() != version.is_some() {
        return Err(bad("give both --name and --version, or neither".into()));
    }
    // PyPI projects already in the feed, by normalized name.
    let mut spellings = BTreeMap::new();
    if ecosystem == Ecosystem::Pypi {
        for entry in store.entries(feed)? {
            if let Some((n, _)) = names::split_package_key(&entry.key) {
                spellings.insert(crate::versions::normalize_pypi(n), n.to_owned());
            }
        }
    }
    let open =
        |f: &PushFile| File::open(&f.path).map_err(|e| bad(format!("opening {}: {e}", f.shown)));
    // Check every input before storing anything.
    let mut plans = Vec::new();
    for f in files {
        names::check_file_name(&f.file_name)?;
        let meta =
            std::fs::metadata(&f.path).map_err(|e| bad(format!("reading {}: {e}", f.shown)))?;
        if !meta.is_file() {
            return Err(bad(format!("{} is not a regular file", f.shown)));
        }
        let mut companion = None;
        let mut stored_name = f.file_name.clone();
        let (pkg_name, pkg_version, metadata) = match (&name, &version) {
            (Some(n), Some(v)) => (n.clone(), v.clone(), BTreeMap::new()),
            _ => {
                let format = detect_format(ecosystem, &f.file_name).ok_or_else(|| {
                    bad(format!(
                        "cannot tell the name and version of {}; pass --name and --version",
                        f.shown
                    ))
                })?;
                let info = package::inspect(format, BufReader::new(open(f)?))
                    .map_err(|e| bad(format!("reading package metadata from {}: {e}", f.shown)))?;
                let mut metadata = info.metadata;
                if ecosystem == Ecosystem::Cargo && format == PackageFormat::Crate {
                    // What cargo would have sent had it published the file: the sparse index
                    // lists a crate by it.
                    let bytes = std::fs::read(&f.path)
                        .map_err(|e| bad(format!("reading {}: {e}", f.shown)))?;
                    let mut digesting = DigestingReader::new(&bytes[..], ecosystem);
                    io::copy(&mut digesting, &mut io::sink())
                        .map_err(|e| bad(format!("reading {}: {e}", f.shown)))?;
                    let cksum = digesting.finish().remove("sha256").unwrap_or_default();
                    let (key, line) = crate::cargo::pushed_crate_metadata(&bytes[..], &cksum)
                        .map_err(|e| {
                            bad(format!("reading the crate metadata of {}: {e}", f.shown))
                        })?;
                    metadata.insert(key, line);
                }
                if ecosystem == Ecosystem::Npm && format == PackageFormat::NpmTarball {
                    // `npm publish` tags what it publishes `latest`.
                    if !options.keep_tags {
                        let (key, tags) = crate::npm::publish_tag_metadata();
                        metadata.insert(key, tags);
                    }
                    // Under the name the registry gives it (`npm pack` names a scoped
                    // package's tarball `scope-name-1.0.0.tgz`; the registry `name-1.0.0.tgz`).
                    stored_name = crate::npm::tarball_name(&info.name, &info.version);
                }
                if ecosystem == Ecosystem::Pypi && format == PackageFormat::Wheel {
                    // The core metadata beside the wheel (PEP 658), as an upload stores it.
                    let text = package::wheel_metadata(BufReader::new(open(f)?)).map_err(|e| {
                        bad(format!("reading the core metadata of {}: {e}", f.shown))
                    })?;
                    let suffix = crate::pypi::METADATA_SUFFIX;
                    companion = Some((format!("{}{suffix}", f.file_name), text));
                }
                (info.name, info.version, metadata)
            }
        };
        if let Some((n, v)) = &options.expect {
            // PEP 440 equality, local version label included (`1.0` is not `1.0+evil`).
            let local = |v: &str| v.split_once('+').map(|(_, l)| l.to_ascii_lowercase());
            let same_version = match ecosystem {
                Ecosystem::Pypi => {
                    crate::versions::compare(v, &pkg_version).is_eq()
                        && local(v) == local(&pkg_version)
                }
                _ => *v == pkg_version,
            };
            // A crate is named exactly as its index line names it (its file is named so).
            let same_name = match ecosystem {
                Ecosystem::Cargo => *n == pkg_name,
                _ => same_package(ecosystem, n, &pkg_name),
            };
            if !same_name || !same_version {
                return Err(bad(format!(
                    "{} is {pkg_name} {pkg_version}, not {n} {v}",
                    f.shown
                )));
            }
        }
        let mut metadata = metadata;
        metadata.extend(options.metadata.clone());
        // A PyPI project keeps the spelling it was first published with, as an upload's.
        let pkg_name = spellings
            .get(&crate::versions::normalize_pypi(&pkg_name))
            .cloned()
            .unwrap_or(pkg_name);
        names::check_package_name(ecosystem, &pkg_name)?;
        names::check_version(&pkg_version)?;
        plans.push((f, stored_name, pkg_name, pkg_version, metadata, companion));
    }
    let mut pins = Vec::new();
    let mut packages: Vec<NewPackage> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    for (f, stored_name, pkg_name, pkg_version, metadata, companion) in plans {
        let mut reader = DigestingReader::new(open(f)?, ecosystem);
        let stored = store.put_blob(&mut reader)?;
        let mut new_files = vec![NewFile {
            name: stored_name,
            blob: stored.hash,
            size: stored.size,
            digests: reader.finish(),
        }];
        pins.push(stored);
        if let Some((name, text)) = companion {
            let mut reader = DigestingReader::new(text.as_bytes(), ecosystem);
            let stored = store.put_blob(&mut reader)?;
            new_files.push(NewFile {
                name,
                blob: stored.hash,
                size: stored.size,
                digests: reader.finish(),
            });
            pins.push(stored);
        }
        match packages
            .iter()
            .position(|p| p.name == pkg_name && p.version == pkg_version)
        {
            Some(i) => {
                packages[i].files.extend(new_files);
                packages[i].metadata.extend(metadata);
                counts[i] += 1;
            }
            None => {
                packages.push(NewPackage {
                    name: pkg_name,
                    version: pkg_version,
                    files: new_files,
                    metadata,
                });
                counts.push(1);
            }
        }
    }
    let names: Vec<(String, String)> = packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    let tagged: Vec<bool> = packages
        .iter()
        .map(|p| ecosystem == Ecosystem::Npm && p.metadata.contains_key(crate::npm::TAGS))
        .collect();
    let results = store.publish_many(feed, packages)?;
    drop(pins);
    // The versions that had `latest` before lose it, as after `npm publish`.
    for (((name, version), r), tagged) in names.iter().zip(&results).zip(tagged) {
        if tagged && r.outcome == PublishOutcome::Created {
            let moved = crate::npm::untag_after_push(store, feed, name, version)?;
            if !moved.is_empty() {
                store.amend_metadata(feed, &moved)?;
            }
        }
    }
    Ok(names
        .into_iter()
        .zip(counts)
        .zip(results)
        .map(|(((name, version), files), r)| Pushed {
            outcome: r.outcome,
            name,
            version,
            files,
            doc: r.doc,
        })
        .collect())
}

impl Pushed {
    /// The line `cairn push` prints for it.
    pub fn line(&self) -> String {
        let what = match self.outcome {
            PublishOutcome::Created => "published",
            PublishOutcome::FilesAdded => "added files to",
            PublishOutcome::Unchanged => "unchanged",
        };
        format!(
            "{what} {} {} ({} file{}) manifest {}",
            self.name,
            self.version,
            self.files,
            if self.files == 1 { "" } else { "s" },
            self.doc.short()
        )
    }
}

fn detect_format(ecosystem: Ecosystem, file_name: &str) -> Option<PackageFormat> {
    PackageFormat::from_file_name(ecosystem, file_name).or_else(|| {
        // A raw feed may hold package files too; read them by their extension.
        Ecosystem::ALL
            .into_iter()
            .find_map(|e| PackageFormat::from_file_name(e, file_name))
    })
}
