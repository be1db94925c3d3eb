//! Instance identity: the ed25519 key pair that signs this instance's documents and (later)
//! identifies it to peers. The secret key lives in `identity/instance.key` (32 raw bytes,
//! mode 0600); the public key's fingerprint is what peers pin.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::doc::PublicKey;

/// Why the identity could not be created or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// No key file; the data directory has not been initialised.
    #[error("no instance key at {path}; run `cairn init` first")]
    Missing { path: PathBuf },
    /// `init` on a directory that already has a key.
    #[error("an instance key already exists at {path}; refusing to replace it")]
    Exists { path: PathBuf },
    /// The key file is not 32 bytes.
    #[error("instance key file {path} is corrupt (expected 32 bytes, found {len})")]
    Corrupt { path: PathBuf, len: usize },
    /// The key file is readable by others.
    #[error("instance key file {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)")]
    Permissions { path: PathBuf, mode: u32 },
    /// The operating system gave no randomness.
    #[error("could not get randomness for a new key: {0}")]
    Random(String),
    /// Filesystem failure.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The instance's signing key.
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// Where the secret key is kept inside a data directory.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity").join("instance.key")
}

/// Where the key of a move to a new key waits until the move is committed.
pub fn next_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity").join("instance.key.next")
}

impl Identity {
    /// Creates a fresh key pair in `data_dir`; fails if one exists.
    pub fn create(data_dir: &Path) -> Result<Identity, IdentityError> {
        let path = key_path(data_dir);
        if path.exists() {
            return Err(IdentityError::Exists { path });
        }
        Identity::create_at(data_dir, &path)
    }

    /// Creates the key an instance is moving to, beside its current one
    /// (`identity/instance.key.next`), replacing any left by an unfinished move.
    pub fn create_next(data_dir: &Path) -> Result<Identity, IdentityError> {
        Identity::create_at(data_dir, &next_key_path(data_dir))
    }

    /// The key an unfinished move was going to, if there is one.
    pub fn load_next(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = next_key_path(data_dir);
        if !path.exists() {
            return Ok(None);
        }
        Identity::load_from(&path).map(Some)
    }

    /// Makes the next key the instance key (the old one is gone).
    pub fn commit_next(data_dir: &Path) -> Result<(), IdentityError> {
        let (next, path) = (next_key_path(data_dir), key_path(data_dir));
        fs::rename(&next, &path).map_err(|source| IdentityError::Io {
            action: "renaming to",
            path: path.clone(),
            source,
        })?;
        let dir = path.parent().unwrap_or(data_dir);
        crate::blob::sync_dir(dir).map_err(|source| IdentityError::Io {
            action: "syncing",
            path: dir.to_owned(),
            source,
        })
    }

    /// Drops the key of a move that did not happen.
    pub fn discard_next(data_dir: &Path) -> Result<(), IdentityError> {
        let next = next_key_path(data_dir);
        fs::remove_file(&next).map_err(|source| IdentityError::Io {
            action: "removing",
            path: next,
            source,
        })
    }

    fn create_at(data_dir: &Path, path: &Path) -> Result<Identity, IdentityError> {
        let path = path.to_owned();
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&seed);
        let dir = path.parent().unwrap_or(data_dir);
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| IdentityError::Io {
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let tmp = dir.join("instance.key.tmp");
        {
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io("creating", &tmp))?;
            f.write_all(&seed).map_err(io("writing", &tmp))?;
            f.sync_all().map_err(io("syncing", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io("renaming to", &path))?;
        crate::blob::sync_dir(dir).map_err(io("syncing", dir))?;
        Ok(Identity { key })
    }

    /// Loads the key from `data_dir`, refusing a file that others can read.
    pub fn load(data_dir: &Path) -> Result<Identity, IdentityError> {
        Identity::load_from(&key_path(data_dir))
    }

    fn load_from(path: &Path) -> Result<Identity, IdentityError> {
        let path = path.to_owned();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::Missing { path })
            }
            Err(source) => {
                return Err(IdentityError::Io {
                    action: "reading",
                    path,
                    source,
                })
            }
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path)
                .map_err(|source| IdentityError::Io {
                    action: "reading",
                    path: path.clone(),
                    source,
                })?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Permissions { path, mode });
            }
        }
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::Corrupt {
                path: path.clone(),
                len: bytes.len(),
            })?;
        Ok(Identity {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Wraps an existing key (tests, tools).
    pub fn from_signing_key(key: SigningKey) -> Identity {
        Identity { key }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.key)
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::create(dir.path()).unwrap();
        let b = Identity::load(dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert!(matches!(
            Identity::create(dir.path()),
            Err(IdentityError::Exists { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(key_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            fs::set_permissions(key_path(dir.path()), fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                Identity::load(dir.path()),
                Err(IdentityError::Permissions { .. })
            ));
        }
    }

    #[test]
    fn missing_and_corrupt_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::Missing { .. })
        ));
        Identity::create(dir.path()).unwrap();
        fs::write(key_path(dir.path()), b"short").unwrap();
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::Corrupt { len: 5, .. })
        ));
    }
}
