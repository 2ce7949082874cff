//! Where OAuth tokens live: one file per server (origin + resource) under `--state-dir`.
//!
//! The directory is created 0700 and each file 0600, written to a temporary file and renamed, so
//! a reader sees the old tokens or the new ones, never half. A token file that other users can
//! read is refused, not used. Tokens are secrets: in memory they are [`SecretString`]s, `Debug`
//! never shows them, and they are exposed only to serialize them here. File names are hashes:
//! they say nothing about the server or the tokens.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::sync::create_private_dir;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Tokens for one server.
#[derive(Clone)]
pub struct Tokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// Unix seconds when the access token expires, if the server said.
    pub expires_at: Option<u64>,
    /// The scopes granted.
    pub scope: Option<String>,
    /// The client id the tokens were issued to, and the issuer that issued them.
    pub client_id: Option<String>,
    pub issuer: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("client_id", &self.client_id)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// The file format; built from [`Tokens`] only at the moment of writing.
#[derive(Serialize, Deserialize)]
struct Wire {
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
}

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "token file {path} is readable by other users: remove it (mcp-sidecar logout) or run chmod 600 on it"
    )]
    Exposed { path: PathBuf },
    #[error("token file {path} cannot be used ({reason}): remove it and sign in again")]
    Unreadable { path: PathBuf, reason: String },
    #[error("tokens cannot be written to {dir} ({source}): check --state-dir")]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The token files under one state directory.
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    /// The store under `state_dir/tokens`.
    pub fn new(state_dir: &Path) -> Self {
        TokenStore { dir: state_dir.join("tokens") }
    }

    /// The file for the server at `origin` protecting `resource`.
    fn path(&self, origin: &str, resource: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(origin.as_bytes());
        h.update([0]);
        h.update(resource.as_bytes());
        let name: String = h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.json"))
    }

    /// The stored tokens, or `None` if there are none.
    pub fn load(&self, origin: &str, resource: &str) -> Result<Option<Tokens>, StoreError> {
        let path = self.path(origin, resource);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Unreadable { path, reason: e.to_string() }),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(StoreError::Exposed { path });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let bytes = fs::read(&path)
            .map_err(|e| StoreError::Unreadable { path: path.clone(), reason: e.to_string() })?;
        let wire: Wire = serde_json::from_slice(&bytes)
            .map_err(|_| StoreError::Unreadable { path: path.clone(), reason: "not a token file".into() })?;
        Ok(Some(Tokens {
            access_token: SecretString::from(wire.access_token),
            refresh_token: wire.refresh_token.map(SecretString::from),
            expires_at: wire.expires_at,
            scope: wire.scope,
            client_id: wire.client_id,
            issuer: wire.issuer,
        }))
    }

    /// Stores `tokens` atomically, private to this user.
    pub fn save(&self, origin: &str, resource: &str, tokens: &Tokens) -> Result<(), StoreError> {
        let err = |source| StoreError::Write { dir: self.dir.clone(), source };
        create_private_dir(&self.dir).map_err(err)?;
        let wire = Wire {
            access_token: tokens.access_token.expose_secret().to_owned(),
            refresh_token: tokens.refresh_token.as_ref().map(|t| t.expose_secret().to_owned()),
            expires_at: tokens.expires_at,
            scope: tokens.scope.clone(),
            client_id: tokens.client_id.clone(),
            issuer: tokens.issuer.clone(),
        };
        let path = self.path(origin, resource);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let result = (|| {
            let mut file = options.open(&tmp)?;
            file.write_all(&serde_json::to_vec(&wire).unwrap_or_default())?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(err)
    }

    /// Forgets the tokens of one server. Missing tokens are not an error.
    pub fn remove(&self, origin: &str, resource: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.path(origin, resource)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Write { dir: self.dir.clone(), source: e })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mcp-sidecar-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn tokens() -> Tokens {
        Tokens {
            access_token: SecretString::from("at_SECRET_1".to_owned()),
            refresh_token: Some(SecretString::from("rt_SECRET_2".to_owned())),
            expires_at: Some(1_800_000_000),
            scope: Some("mcp:read".into()),
            client_id: Some("client-1".into()),
            issuer: Some("https://auth.example.com".into()),
        }
    }

    #[test]
    fn round_trip_one_entry_per_server() {
        let dir = temp("roundtrip");
        let store = TokenStore::new(&dir);
        assert!(store.load("https://a", "https://a/mcp").unwrap().is_none());
        store.save("https://a", "https://a/mcp", &tokens()).unwrap();
        let back = store.load("https://a", "https://a/mcp").unwrap().unwrap();
        assert_eq!(back.access_token.expose_secret(), "at_SECRET_1");
        assert_eq!(back.refresh_token.unwrap().expose_secret(), "rt_SECRET_2");
        assert_eq!(back.scope.as_deref(), Some("mcp:read"));
        assert!(
            store.load("https://a", "https://a/other").unwrap().is_none(),
            "another resource, another entry"
        );
        store.remove("https://a", "https://a/mcp").unwrap();
        store.remove("https://a", "https://a/mcp").unwrap();
        assert!(store.load("https://a", "https://a/mcp").unwrap().is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private_and_exposed_ones_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp("perms");
        let store = TokenStore::new(&dir);
        store.save("https://a", "r", &tokens()).unwrap();
        let path = store.path("https://a", "r");
        assert_eq!(fs::metadata(dir.join("tokens")).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> =
            fs::read_dir(dir.join("tokens")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = store.load("https://a", "r").unwrap_err();
        assert!(matches!(e, StoreError::Exposed { .. }) && e.to_string().contains("chmod 600"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn secrets_stay_out_of_debug_names_and_errors() {
        let dir = temp("secrets");
        let store = TokenStore::new(&dir);
        store.save("https://a", "r", &tokens()).unwrap();
        let shown = format!("{:?}", store.load("https://a", "r").unwrap().unwrap());
        assert!(!shown.contains("SECRET") && shown.contains("[redacted]"), "{shown}");
        let path = store.path("https://a", "r");
        assert!(!path.to_string_lossy().contains("https"));
        fs::write(&path, b"{broken").unwrap();
        let e = store.load("https://a", "r").unwrap_err().to_string();
        assert!(e.contains("sign in again"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
