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

use crate::statedir::create_private_dir;
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
    /// Unix seconds when it was issued (to refresh at a point relative to its lifetime).
    pub issued_at: Option<u64>,
    /// The scopes granted (or, when the server did not say, the scopes asked for).
    pub scope: Option<String>,
    /// Bound to the entry's DPoP key (`token_type: DPoP`, RFC 9449): sent as `DPoP <token>`.
    pub dpop: bool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .field("expires_at", &self.expires_at)
            .field("issued_at", &self.issued_at)
            .field("scope", &self.scope)
            .field("dpop", &self.dpop)
            .finish()
    }
}

impl Tokens {
    /// Tells [`crate::secrets`] about these tokens, so no error or log line shows them.
    pub fn remember(&self) {
        crate::secrets::remember_as(crate::secrets::Slot::AccessToken, self.access_token.expose_secret());
        if let Some(r) = &self.refresh_token {
            crate::secrets::remember_as(crate::secrets::Slot::RefreshToken, r.expose_secret());
        }
    }
}

/// How the client authenticates at the token endpoint (A-22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenAuth {
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

impl TokenAuth {
    /// The RFC 7591 name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenAuth::None => "none",
            TokenAuth::ClientSecretBasic => "client_secret_basic",
            TokenAuth::ClientSecretPost => "client_secret_post",
        }
    }

    /// Parses an RFC 7591 name this client supports.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(TokenAuth::None),
            "client_secret_basic" => Some(TokenAuth::ClientSecretBasic),
            "client_secret_post" => Some(TokenAuth::ClientSecretPost),
            _ => None,
        }
    }
}

/// A client registration with one authorization server (from dynamic registration; a
/// pre-registered client's secret is never stored, it stays in its variable).
#[derive(Clone)]
pub struct Client {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub auth: TokenAuth,
    /// The loopback port of the registered redirect URI, tried first next time.
    pub port: Option<u16>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "[redacted]"))
            .field("auth", &self.auth)
            .field("port", &self.port)
            .finish()
    }
}

/// Everything stored for one server: the issuer its credentials belong to (A-23), the client
/// registered there, and the tokens.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The MCP endpoint, for `status`.
    pub server: String,
    pub issuer: Option<String>,
    /// Where refreshes go, and the RFC 8707 `resource` they name (learned at sign-in).
    pub token_endpoint: Option<String>,
    pub resource: Option<String>,
    pub client: Option<Client>,
    pub tokens: Option<Tokens>,
    /// The grant the tokens came from (`authorization_code`, `client_credentials`, …).
    pub grant: Option<String>,
    /// The DPoP private key (base64 PKCS#8), when the authorization server binds tokens.
    pub dpop_key: Option<SecretString>,
}

impl Entry {
    /// Tells [`crate::secrets`] about the tokens and the client secret stored here.
    pub fn remember_secrets(&self) {
        if let Some(t) = &self.tokens {
            t.remember();
        }
        if let Some(s) = self.client.as_ref().and_then(|c| c.client_secret.as_ref()) {
            crate::secrets::remember_as(crate::secrets::Slot::ClientSecret, s.expose_secret());
        }
        if let Some(k) = &self.dpop_key {
            crate::secrets::remember_as(crate::secrets::Slot::DpopKey, k.expose_secret());
        }
    }
}

/// The file format; built from [`Entry`] only at the moment of writing.
#[derive(Serialize, Deserialize, Default)]
struct Wire {
    #[serde(default)]
    server: String,
    /// The secrets are in the OS keyring (`--token-store keyring`), not in this file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    keyring: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<WireClient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens: Option<WireTokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dpop_key: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WireClient {
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    auth: TokenAuth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

#[derive(Serialize, Deserialize)]
struct WireTokens {
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issued_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dpop: bool,
}

impl From<Wire> for Entry {
    fn from(w: Wire) -> Entry {
        Entry {
            server: w.server,
            issuer: w.issuer,
            token_endpoint: w.token_endpoint,
            resource: w.resource,
            client: w.client.map(|c| Client {
                client_id: c.client_id,
                client_secret: c.client_secret.map(SecretString::from),
                auth: c.auth,
                port: c.port,
            }),
            tokens: w.tokens.map(|t| Tokens {
                access_token: SecretString::from(t.access_token),
                refresh_token: t.refresh_token.map(SecretString::from),
                expires_at: t.expires_at,
                issued_at: t.issued_at,
                scope: t.scope,
                dpop: t.dpop,
            }),
            grant: w.grant,
            dpop_key: w.dpop_key.map(SecretString::from),
        }
    }
}

impl From<&Entry> for Wire {
    fn from(e: &Entry) -> Wire {
        Wire {
            server: e.server.clone(),
            keyring: false,
            issuer: e.issuer.clone(),
            token_endpoint: e.token_endpoint.clone(),
            resource: e.resource.clone(),
            client: e.client.as_ref().map(|c| WireClient {
                client_id: c.client_id.clone(),
                client_secret: c.client_secret.as_ref().map(|s| s.expose_secret().to_owned()),
                auth: c.auth,
                port: c.port,
            }),
            tokens: e.tokens.as_ref().map(|t| WireTokens {
                access_token: t.access_token.expose_secret().to_owned(),
                refresh_token: t.refresh_token.as_ref().map(|r| r.expose_secret().to_owned()),
                expires_at: t.expires_at,
                issued_at: t.issued_at,
                scope: t.scope.clone(),
                dpop: t.dpop,
            }),
            grant: e.grant.clone(),
            dpop_key: e.dpop_key.as_ref().map(|k| k.expose_secret().to_owned()),
        }
    }
}

pub use crate::statedir::exposed;

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "token file {path} is readable by other users: remove it (mcp-sidecar logout) or run {}",
        crate::statedir::fix_command(path)
    )]
    Exposed { path: PathBuf },
    #[error("token file {path} cannot be used ({reason}): remove it and sign in again")]
    Unreadable { path: PathBuf, reason: String },
    #[error("the OS keyring cannot be used ({reason}): unlock it, or use --token-store file")]
    Keyring { reason: String },
    #[error("tokens cannot be written to {dir} ({source}): check --state-dir")]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The token files under one state directory.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
    /// Save secrets in the OS keyring (reading follows what each file says).
    #[cfg_attr(not(feature = "keyring"), allow(dead_code))]
    keyring: bool,
}

/// The secrets of an entry, as kept in the OS keyring.
#[derive(Serialize, Deserialize, Default)]
#[cfg_attr(not(feature = "keyring"), allow(dead_code))]
struct Secrets {
    access_token: Option<String>,
    refresh_token: Option<String>,
    client_secret: Option<String>,
    #[serde(default)]
    dpop_key: Option<String>,
}

impl Wire {
    /// Moves the secrets out (blanking them here).
    #[cfg(feature = "keyring")]
    fn take_secrets(&mut self) -> Secrets {
        Secrets {
            access_token: self.tokens.as_mut().map(|t| std::mem::take(&mut t.access_token)),
            refresh_token: self.tokens.as_mut().and_then(|t| t.refresh_token.take()),
            client_secret: self.client.as_mut().and_then(|c| c.client_secret.take()),
            dpop_key: self.dpop_key.take(),
        }
    }

    fn put_secrets(&mut self, s: Secrets) {
        if let Some(t) = self.tokens.as_mut() {
            t.access_token = s.access_token.unwrap_or_default();
            t.refresh_token = s.refresh_token;
        }
        if let Some(c) = self.client.as_mut() {
            c.client_secret = s.client_secret;
        }
        if s.dpop_key.is_some() {
            self.dpop_key = s.dpop_key;
        }
    }
}

/// The OS keyring, under the service name `mcp-sidecar` and the entry's file name.
#[cfg(feature = "keyring")]
mod os_keyring {
    use std::sync::OnceLock;

    /// Sets the platform's credential store as the default, once, unless one is set already
    /// (tests set an in-memory one).
    pub fn ready() -> Result<(), String> {
        static READY: OnceLock<Result<(), String>> = OnceLock::new();
        READY
            .get_or_init(|| {
                if keyring_core::get_default_store().is_some() {
                    return Ok(());
                }
                #[cfg(all(unix, not(target_os = "macos")))]
                let store = zbus_secret_service_keyring_store::Store::new();
                #[cfg(target_os = "macos")]
                let store = apple_native_keyring_store::keychain::Store::new();
                #[cfg(target_os = "windows")]
                let store = windows_native_keyring_store::Store::new();
                let store = store.map_err(|e| e.to_string())?;
                keyring_core::set_default_store(store);
                Ok(())
            })
            .clone()
    }

    fn entry(name: &str) -> Result<keyring_core::Entry, String> {
        ready()?;
        keyring_core::Entry::new("mcp-sidecar", name).map_err(|e| e.to_string())
    }

    pub fn set(name: &str, value: &str) -> Result<(), String> {
        entry(name)?.set_password(value).map_err(|e| e.to_string())
    }

    pub fn get(name: &str) -> Result<Option<String>, String> {
        match entry(name)?.get_password() {
            Ok(v) => Ok(Some(v)),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn delete(name: &str) -> Result<(), String> {
        match entry(name)?.delete_credential() {
            Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The two locks of a server's entry (issue 21.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Held while the entry is read, refreshed and written: refresh tokens rotate, so two
    /// processes must not spend one. Never held across a wait for a person.
    Entry,
    /// Held through a browser or device sign-in, so that processes that need one wait for the
    /// first instead of opening a browser each; a refresh never waits for it.
    SignIn,
}

impl TokenStore {
    /// The store under `state_dir/tokens`.
    pub fn new(state_dir: &Path) -> Self {
        TokenStore { dir: state_dir.join("tokens"), keyring: false }
    }

    /// The store that saves secrets in the OS keyring (`--token-store keyring`; built with the
    /// `keyring` feature). Fails when the keyring cannot be reached.
    #[cfg(feature = "keyring")]
    pub fn with_keyring(state_dir: &Path) -> Result<Self, StoreError> {
        os_keyring::ready().map_err(|reason| StoreError::Keyring { reason })?;
        Ok(TokenStore { dir: state_dir.join("tokens"), keyring: true })
    }

    #[cfg(feature = "keyring")]
    fn keyring_name(path: &Path) -> String {
        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
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

    /// Whether anything is stored for the server (a `stat`; the keyring is only read by
    /// [`TokenStore::load`], which a file entry points to).
    pub fn has(&self, origin: &str, resource: &str) -> bool {
        fs::symlink_metadata(self.path(origin, resource)).is_ok()
    }

    /// What is stored for the server, or `None` if nothing is.
    pub fn load(&self, origin: &str, resource: &str) -> Result<Option<Entry>, StoreError> {
        self.load_path(self.path(origin, resource))
    }

    fn load_path(&self, path: PathBuf) -> Result<Option<Entry>, StoreError> {
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Unreadable { path, reason: e.to_string() }),
        };
        if exposed(&path, &meta) {
            return Err(StoreError::Exposed { path });
        }
        let bytes = fs::read(&path)
            .map_err(|e| StoreError::Unreadable { path: path.clone(), reason: e.to_string() })?;
        let mut wire: Wire = serde_json::from_slice(&bytes)
            .map_err(|_| StoreError::Unreadable { path: path.clone(), reason: "not a token file".into() })?;
        if wire.keyring {
            wire.put_secrets(Self::keyring_get(&path)?);
        }
        Ok(Some(wire.into()))
    }

    /// With `--token-store keyring`: moves the secrets of `wire` into the OS keyring.
    #[cfg(feature = "keyring")]
    fn seal(&self, path: &Path, wire: &mut Wire) -> Result<(), StoreError> {
        if self.keyring {
            let secrets = serde_json::to_string(&wire.take_secrets()).unwrap_or_default();
            os_keyring::set(&Self::keyring_name(path), &secrets)
                .map_err(|reason| StoreError::Keyring { reason })?;
            wire.keyring = true;
        }
        Ok(())
    }

    #[cfg(not(feature = "keyring"))]
    fn seal(&self, _path: &Path, _wire: &mut Wire) -> Result<(), StoreError> {
        Ok(())
    }

    #[cfg(feature = "keyring")]
    fn keyring_get(path: &Path) -> Result<Secrets, StoreError> {
        let unreadable = |reason: String| StoreError::Unreadable { path: path.to_owned(), reason };
        let text = os_keyring::get(&Self::keyring_name(path))
            .map_err(|e| unreadable(format!("the OS keyring failed: {e}")))?
            .ok_or_else(|| unreadable("its secrets are no longer in the OS keyring".into()))?;
        serde_json::from_str(&text)
            .map_err(|_| unreadable("the OS keyring entry is not mcp-sidecar's".into()))
    }

    #[cfg(not(feature = "keyring"))]
    fn keyring_get(path: &Path) -> Result<Secrets, StoreError> {
        Err(StoreError::Unreadable {
            path: path.to_owned(),
            reason: "its secrets are in the OS keyring, and this build has no keyring support (--features keyring)"
                .into(),
        })
    }

    /// Stores `entry` atomically, private to this user.
    pub fn save(&self, origin: &str, resource: &str, entry: &Entry) -> Result<(), StoreError> {
        let err = |source| StoreError::Write { dir: self.dir.clone(), source };
        create_private_dir(&self.dir).map_err(err)?;
        let mut wire = Wire::from(entry);
        let path = self.path(origin, resource);
        self.seal(&path, &mut wire)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut options = fs::OpenOptions::new();
        crate::statedir::owner_only(options.write(true).create(true).truncate(true));
        let result = (|| {
            let mut file = options.open(&tmp)?;
            // Before a byte is written (Windows: it inherited the directory's access).
            crate::statedir::restrict(&tmp)?;
            file.write_all(&serde_json::to_vec(&wire).unwrap_or_default())?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(err)
    }

    /// Takes one of the locks of one server's entry across processes (see [`Lock`]), held until
    /// the returned file is dropped; `None` while another process holds it (issue 21.9: the wait
    /// is the caller's, bounded, never a blocking `flock` without end). Does file I/O: call it off
    /// the async threads.
    pub fn try_lock(
        &self,
        origin: &str,
        resource: &str,
        which: Lock,
    ) -> Result<Option<fs::File>, StoreError> {
        let err = |source| StoreError::Write { dir: self.dir.clone(), source };
        create_private_dir(&self.dir).map_err(err)?;
        let mut options = fs::OpenOptions::new();
        crate::statedir::owner_only(options.read(true).write(true).create(true).truncate(false));
        let extension = match which {
            Lock::Entry => "lock",
            Lock::SignIn => "signin.lock",
        };
        let file = options.open(self.path(origin, resource).with_extension(extension)).map_err(err)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(err(e)),
        }
    }

    /// Every entry stored, with its file, for `status`.
    pub fn all(&self) -> Vec<(PathBuf, Result<Entry, StoreError>)> {
        let Ok(dir) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut paths: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|p| match self.load_path(p.clone()) {
                Ok(Some(e)) => Some((p, Ok(e))),
                Ok(None) => None,
                Err(e) => Some((p, Err(e))),
            })
            .collect()
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Forgets the tokens of one server. Missing tokens are not an error. The lock file stays:
    /// another sidecar may hold it, and deleting it would let the next one lock a new file of
    /// the same name while the first still holds the old one (two renewals at once).
    pub fn remove(&self, origin: &str, resource: &str) -> Result<(), StoreError> {
        #[cfg(feature = "keyring")]
        {
            // Only entries whose file says so have secrets in the keyring.
            let path = self.path(origin, resource);
            let in_keyring = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Wire>(&b).ok())
                .is_some_and(|w| w.keyring);
            if in_keyring {
                let _ = os_keyring::delete(&Self::keyring_name(&path));
            }
        }
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

    fn tokens() -> Entry {
        Entry {
            server: "https://a/mcp".into(),
            issuer: Some("https://auth.example.com".into()),
            token_endpoint: Some("https://auth.example.com/token".into()),
            resource: Some("https://a/mcp".into()),
            client: Some(Client {
                client_id: "client-1".into(),
                client_secret: Some(SecretString::from("cs_SECRET_3".to_owned())),
                auth: TokenAuth::ClientSecretPost,
                port: Some(4242),
            }),
            tokens: Some(Tokens {
                access_token: SecretString::from("at_SECRET_1".to_owned()),
                refresh_token: Some(SecretString::from("rt_SECRET_2".to_owned())),
                expires_at: Some(1_800_000_000),
                issued_at: Some(1_799_996_400),
                scope: Some("mcp:read".into()),
                dpop: true,
            }),
            grant: Some("device_code".into()),
            dpop_key: Some(SecretString::from("dk_SECRET_4".to_owned())),
        }
    }

    #[test]
    fn round_trip_one_entry_per_server() {
        let dir = temp("roundtrip");
        let store = TokenStore::new(&dir);
        assert!(store.load("https://a", "https://a/mcp").unwrap().is_none());
        store.save("https://a", "https://a/mcp", &tokens()).unwrap();
        let back = store.load("https://a", "https://a/mcp").unwrap().unwrap();
        let client = back.client.unwrap();
        assert_eq!(client.client_secret.unwrap().expose_secret(), "cs_SECRET_3");
        assert_eq!((client.auth, client.port), (TokenAuth::ClientSecretPost, Some(4242)));
        // Issue 14: the grant, the binding and the DPoP key come back.
        assert_eq!(back.grant.as_deref(), Some("device_code"));
        assert_eq!(back.dpop_key.as_ref().unwrap().expose_secret(), "dk_SECRET_4");
        assert!(back.tokens.as_ref().unwrap().dpop);
        let t = back.tokens.unwrap();
        assert_eq!(t.access_token.expose_secret(), "at_SECRET_1");
        assert_eq!(t.refresh_token.unwrap().expose_secret(), "rt_SECRET_2");
        assert_eq!(t.scope.as_deref(), Some("mcp:read"));
        assert_eq!(store.all().len(), 1);
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
        drop(store.try_lock("https://a", "r", Lock::Entry).unwrap().expect("free"));
        let lock = path.with_extension("lock");
        assert_eq!(fs::metadata(&lock).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> =
            fs::read_dir(dir.join("tokens")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "the entry and its lock, no temporary file left behind: {names:?}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = store.load("https://a", "r").unwrap_err();
        assert!(matches!(e, StoreError::Exposed { .. }) && e.to_string().contains("chmod 600"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issue 10.12: `logout` while another sidecar holds the lock must not let a third one take
    /// the same lock: the lock file is kept.
    #[test]
    fn removing_an_entry_keeps_the_lock_file_another_process_may_hold() {
        let dir = temp("lock-kept");
        let store = TokenStore::new(&dir);
        store.save("https://a", "r", &tokens()).unwrap();
        let held = store.try_lock("https://a", "r", Lock::Entry).unwrap().expect("free");
        assert!(store.try_lock("https://a", "r", Lock::Entry).unwrap().is_none(), "held: not taken twice");
        store.remove("https://a", "r").unwrap();
        assert!(store.load("https://a", "r").unwrap().is_none(), "the tokens are gone");
        let lock_path = store.path("https://a", "r").with_extension("lock");
        let other = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .unwrap();
        assert!(
            matches!(other.try_lock(), Err(fs::TryLockError::WouldBlock)),
            "a second holder got the lock while the first still holds it"
        );
        drop(held);
        assert!(other.try_lock().is_ok());
        let _ = fs::remove_dir_all(&dir);
    }

    #[cfg(feature = "keyring")]
    #[test]
    fn with_the_keyring_feature_secrets_live_in_the_os_keyring_not_the_file() {
        keyring_core::set_default_store(keyring_core::mock::Store::new().unwrap());
        let dir = temp("keyring");
        let store = TokenStore::with_keyring(&dir).unwrap();
        store.save("https://a", "r", &tokens()).unwrap();
        let path = store.path("https://a", "r");
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("SECRET") && text.contains("\"keyring\":true"), "{text}");
        assert!(text.contains("client-1") && text.contains("mcp:read"), "metadata stays in the file: {text}");
        // Any store reads it back (the file says where the secrets are).
        let back = TokenStore::new(&dir).load("https://a", "r").unwrap().unwrap();
        assert_eq!(back.tokens.as_ref().unwrap().access_token.expose_secret(), "at_SECRET_1");
        assert_eq!(back.tokens.unwrap().refresh_token.unwrap().expose_secret(), "rt_SECRET_2");
        assert_eq!(back.client.unwrap().client_secret.unwrap().expose_secret(), "cs_SECRET_3");
        // Gone from the keyring: the file cannot be used, and says why.
        os_keyring::delete(&TokenStore::keyring_name(&path)).unwrap();
        let e = store.load("https://a", "r").unwrap_err().to_string();
        assert!(e.contains("no longer in the OS keyring"), "{e}");
        store.remove("https://a", "r").unwrap();
        assert!(store.load("https://a", "r").unwrap().is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[cfg(not(feature = "keyring"))]
    #[test]
    fn without_the_keyring_feature_a_keyring_entry_is_explained() {
        let dir = temp("nokeyring");
        let store = TokenStore::new(&dir);
        store.save("https://a", "r", &tokens()).unwrap();
        let path = store.path("https://a", "r");
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        v["keyring"] = serde_json::json!(true);
        fs::write(&path, v.to_string()).unwrap();
        let e = store.load("https://a", "r").unwrap_err().to_string();
        assert!(e.contains("--features keyring"), "{e}");
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
