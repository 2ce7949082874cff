//! Where the gate's shared state lives: [`SharedState`], one trait with two implementations,
//! chosen at start. [`StateFile`] (`--state-dir`) shares it between the sidecars of one machine;
//! [`RedisStore`] (`--rate-limit-store redis://…`) between every sidecar of a fleet (issue 11).
//!
//! Both run the same decision code on the state ([`super::decide`] and friends): an update reads
//! the state, lets the gate change it, and writes it back atomically. The file does so under an
//! exclusive lock; Redis with a compare-and-set script (the write goes through only if nobody
//! wrote since the read, else the update runs again on the newer state), so Redis and the file
//! can never disagree on a rule. The gate falls back to the file when the store cannot be
//! reached and returns to it when it answers again.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::StoreSettings;

use super::file::StateFile;
use super::state::State;

/// A boxed future (the trait is used behind `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why shared state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// The state the gates of one origin and key share.
pub trait SharedState: Send + Sync + std::fmt::Debug {
    /// The state as stored (`None`: nothing stored, or not readable as state).
    fn load(&self) -> BoxFuture<'_, Result<Option<State>, StoreError>>;

    /// Reads the state (a fresh one when nothing is stored), runs `change` on it and stores the
    /// result atomically; `change` may run more than once (on a newer state each time) and must
    /// depend on nothing but the state. Returns the state as stored.
    fn update<'a>(
        &'a self,
        change: &'a mut (dyn FnMut(&mut State) + Send),
    ) -> BoxFuture<'a, Result<State, StoreError>>;

    /// Where it lives, for messages (no credentials).
    fn describe(&self) -> String;
}

impl SharedState for StateFile {
    fn load(&self) -> BoxFuture<'_, Result<Option<State>, StoreError>> {
        Box::pin(async move { Ok(self.read()) })
    }

    fn update<'a>(
        &'a self,
        change: &'a mut (dyn FnMut(&mut State) + Send),
    ) -> BoxFuture<'a, Result<State, StoreError>> {
        Box::pin(async move {
            let locked = self.lock().await.map_err(|e| StoreError(e.to_string()))?;
            let ((), state, written) = locked.update(|state| change(state));
            written.map_err(|e| StoreError(e.to_string()))?;
            Ok(state)
        })
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }
}

/// How long one operation on the store may take before the gate decides without it.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long stored state lives without a write (the longest window that matters is a day).
const STORE_TTL: Duration = Duration::from_secs(2 * 86_400);
/// Updates that lose the compare-and-set this many times in a row give up (the gate then
/// decides on the local state for this request).
const MAX_CAS_TRIES: usize = 32;

/// PBKDF2 rounds for the name of a key's state in the store.
const NAME_ROUNDS: u32 = 20_000;

/// The name of the state of `origin` and `key_id` in the store (issue 21.7): a slow derivation
/// (PBKDF2-HMAC-SHA256 with the origin in the salt), so that whoever can read the store cannot
/// test guesses of a weak API key against the names at the speed of SHA-256. The same on every
/// machine (the fleet shares it); a few milliseconds once per start, only with a store.
pub fn key_name(origin: &str, key_id: &str) -> String {
    use aws_lc_rs::pbkdf2;
    let rounds = std::num::NonZeroU32::new(NAME_ROUNDS).unwrap_or(std::num::NonZeroU32::MIN);
    let salt = format!("mcp-sidecar rate-limit state v2\0{origin}");
    let mut out = [0u8; 16];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt.as_bytes(), key_id.as_bytes(), &mut out);
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets the key to the new state only if it still holds what was read (empty: nothing).
const COMPARE_AND_SET: &str = r"
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// The gate's state in Redis or Valkey: one key per origin and key, named by [`key_name`]
/// (never the key itself).
pub struct RedisStore {
    connection: redis::aio::ConnectionManager,
    key: String,
    shown: String,
    script: redis::Script,
}

impl RedisStore {
    /// A store for the state named `name` (the hash of origin and key). Connects lazily: the
    /// first update does, and the connection manager reconnects after failures.
    pub fn new(settings: &StoreSettings, name: &str) -> Result<RedisStore, StoreError> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())
            .map_err(|e| StoreError(format!("--rate-limit-store is not a Redis URL ({e})")))?;
        // The variable holds the password whole (issue 21.7: a password with a `:` was split as
        // user:password); a user, if any, is in the URL (redis://USER@HOST), which the
        // connection info has read already.
        if let Some(secret) = &settings.password {
            let redis = info.redis_settings().clone().set_password(secret.expose_secret());
            info = info.set_redis_settings(redis);
        }
        let client = match (&settings.ca_pem, settings.url.scheme()) {
            (Some(pem), "rediss") => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) },
            ),
            _ => redis::Client::open(info),
        }
        .map_err(|e| StoreError(format!("--rate-limit-store: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(STORE_TIMEOUT))
            .set_response_timeout(Some(STORE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError(format!("--rate-limit-store: {e}")))?;
        Ok(RedisStore {
            connection,
            key: format!("mcp-sidecar:ratelimit:{name}"),
            shown: crate::net::redact_url(&settings.url),
            script: redis::Script::new(COMPARE_AND_SET),
        })
    }

    async fn get(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("GET").arg(&self.key).query_async(&mut connection).await.map_err(failed)
    }
}

/// The deadlines stored in the store at `settings` (for `status`), of `origin` only when given;
/// with `clear`, removed (under the same compare-and-set as every update). Returns them.
pub async fn store_limits(
    settings: &StoreSettings,
    origin: Option<&str>,
    clear: bool,
) -> Result<Vec<super::file::StoredLimit>, StoreError> {
    let probe = RedisStore::new(settings, "")?;
    let mut connection = probe.connection.clone();
    let keys: Vec<String> = tokio::time::timeout(STORE_TIMEOUT * 4, async {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("mcp-sidecar:ratelimit:*")
                .arg("COUNT")
                .arg(200)
                .query_async(&mut connection)
                .await
                .map_err(failed)?;
            keys.extend(batch);
            if next == 0 {
                return Ok::<_, StoreError>(keys);
            }
            cursor = next;
        }
    })
    .await
    .map_err(|_| StoreError(format!("{} did not answer in time", probe.shown)))??;
    let now = super::state::now_ms();
    let mut found = Vec::new();
    for key in keys {
        let store = RedisStore {
            key,
            connection: probe.connection.clone(),
            shown: probe.shown.clone(),
            script: redis::Script::new(COMPARE_AND_SET),
        };
        let Some(state) = store.load().await? else { continue };
        let Some(limit) = super::file::active(&state, now).filter(|l| origin.is_none_or(|o| l.origin == o))
        else {
            continue;
        };
        if clear {
            store.update(&mut |state: &mut State| state.clear(now)).await?;
        }
        found.push(limit);
    }
    Ok(found)
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("at", &self.shown).finish_non_exhaustive()
    }
}

fn failed(e: redis::RedisError) -> StoreError {
    StoreError(crate::secrets::redact(&e.to_string()).into_owned())
}

impl SharedState for RedisStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<State>, StoreError>> {
        Box::pin(async move { Ok(self.get().await?.and_then(|raw| serde_json::from_slice(&raw).ok())) })
    }

    fn update<'a>(
        &'a self,
        change: &'a mut (dyn FnMut(&mut State) + Send),
    ) -> BoxFuture<'a, Result<State, StoreError>> {
        Box::pin(async move {
            let ttl = STORE_TTL.as_millis() as u64;
            for _ in 0..MAX_CAS_TRIES {
                let raw = self.get().await?;
                let mut state: State =
                    raw.as_deref().and_then(|r| serde_json::from_slice(r).ok()).unwrap_or_default();
                change(&mut state);
                let new = serde_json::to_vec(&state).unwrap_or_default();
                let mut connection = self.connection.clone();
                let stored: i64 = self
                    .script
                    .key(&self.key)
                    .arg(raw.unwrap_or_default())
                    .arg(new)
                    .arg(ttl)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(failed)?;
                if stored == 1 {
                    return Ok(state);
                }
            }
            // Issue 21.7: said as what it is (the store answers; it is too busy), not as an outage.
            Err(StoreError(format!(
                "it answers, but so many sidecars update it at once that {MAX_CAS_TRIES} tries in a row lost the race"
            )))
        })
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 21.7: the store's key names are a slow, origin-salted derivation of the key: the
    /// same for every process of one origin and key, different across origins and keys, and not
    /// the SHA-256 of the state files' names.
    #[test]
    fn store_key_names_are_a_slow_derivation() {
        let a = key_name("https://h", "inv_key");
        assert_eq!(a, key_name("https://h", "inv_key"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, key_name("https://h", "inv_kez"));
        assert_ne!(a, key_name("https://g", "inv_key"));
        assert_ne!(a[..24], crate::statedir::state_name("https://h", "inv_key"));
    }
}
