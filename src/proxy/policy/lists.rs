//! Cacheable lists of the stateless era: a `tools/list`, `prompts/list` or `resources/list`
//! result that carries `ttlMs` is reused, for this process, until that time is up, so a client
//! that lists on every turn does not spend the server's rate budget (issue 13.4). A list-changed
//! notification from the server forgets that list at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::envelope::{self, Envelope};
use crate::sync::Locked;

/// The longest a list is reused, whatever `ttlMs` says: a server's absurd value must not pin a
/// stale list for days.
pub const MAX_LIST_TTL: Duration = Duration::from_secs(60 * 60);

/// The most bytes of results kept at once (issue 21.12): past that the least recently used
/// lists go first. A server whose cursors change at every listing cannot grow memory for ever.
pub const MAX_LIST_CACHE_BYTES: usize = 16 << 20;

/// Lists kept: by method and cursor, the result (raw), until when it holds, and when it was
/// last used.
#[derive(Default)]
pub(in crate::proxy) struct ListCache {
    inner: Mutex<Lists>,
}

#[derive(Default)]
struct Lists {
    entries: HashMap<String, Kept>,
    /// The bytes of every result kept.
    bytes: usize,
    /// A counter for "last used".
    tick: u64,
}

struct Kept {
    result: Box<RawValue>,
    until: Instant,
    used: u64,
}

impl Lists {
    fn remove(&mut self, key: &str) {
        if let Some(kept) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(kept.result.get().len());
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&str, &Kept) -> bool) {
        let gone: Vec<String> =
            self.entries.iter().filter(|(k, v)| !keep(k, v)).map(|(k, _)| k.clone()).collect();
        for key in gone {
            self.remove(&key);
        }
    }
}

/// Whether `method` returns a cacheable list.
pub(in crate::proxy) fn cacheable(method: &str) -> bool {
    matches!(method, "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list")
}

/// The cache key of a list request: its method and the cursor it asks for.
pub(in crate::proxy) fn key(method: &str, params: &envelope::Params<'_>) -> String {
    format!("{method}\0{}", params.cursor.map_or("", RawValue::get))
}

/// How long a result may be reused: its `ttlMs`, if it is complete (T-31) and the time is not
/// zero, capped at [`MAX_LIST_TTL`].
fn lifetime(result: &RawValue) -> Option<Duration> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(default, borrow, rename = "resultType")]
        result_type: Option<std::borrow::Cow<'a, str>>,
        #[serde(default, rename = "ttlMs")]
        ttl_ms: Option<u64>,
    }
    let head: Head<'_> = serde_json::from_str(result.get()).ok()?;
    if head.result_type.as_deref().is_some_and(|t| t != "complete") {
        return None;
    }
    let ttl = Duration::from_millis(head.ttl_ms.filter(|ms| *ms > 0)?);
    Some(ttl.min(MAX_LIST_TTL))
}

impl ListCache {
    /// The cached result for `key`, if it still holds.
    pub(in crate::proxy) fn get(&self, key: &str) -> Option<Box<RawValue>> {
        let mut lists = self.inner.locked();
        lists.tick += 1;
        let tick = lists.tick;
        match lists.entries.get_mut(key) {
            Some(kept) if Instant::now() < kept.until => {
                kept.used = tick;
                Some(kept.result.clone())
            }
            Some(_) => {
                lists.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps the result of a response (raw bytes) under `key` for its `ttlMs`. Expired lists go
    /// first; a first page (no cursor) starts a new listing, so the pages of the old one go too;
    /// then the least recently used until all fits in [`MAX_LIST_CACHE_BYTES`].
    pub(in crate::proxy) fn put(&self, key: String, response: &[u8]) {
        let Ok(env) = Envelope::parse(response) else { return };
        let Some(result) = env.result else { return };
        let Some(ttl) = lifetime(result) else { return };
        let now = Instant::now();
        let Some(until) = now.checked_add(ttl) else { return };
        let size = result.get().len();
        if size > MAX_LIST_CACHE_BYTES {
            return;
        }
        let mut lists = self.inner.locked();
        lists.retain(|_, kept| now < kept.until);
        if let Some(method) = key.strip_suffix('\0') {
            let pages = format!("{method}\0");
            lists.retain(|k, _| !k.starts_with(&pages));
        }
        lists.remove(&key);
        while lists.bytes + size > MAX_LIST_CACHE_BYTES {
            let Some(oldest) = lists.entries.iter().min_by_key(|(_, kept)| kept.used).map(|(k, _)| k.clone())
            else {
                break;
            };
            lists.remove(&oldest);
        }
        lists.tick += 1;
        let used = lists.tick;
        lists.bytes += size;
        lists.entries.insert(key, Kept { result: result.to_owned(), until, used });
    }

    /// Forgets the lists a server notification says have changed.
    pub(in crate::proxy) fn changed(&self, notification: &str) {
        let method = match notification {
            "notifications/tools/list_changed" => "tools/list",
            "notifications/prompts/list_changed" => "prompts/list",
            "notifications/resources/list_changed" => "resources/",
            _ => return,
        };
        self.inner.locked().retain(|k, _| !k.starts_with(method));
    }

    /// Whether anything is cached (so that notifications need not be looked at otherwise).
    pub(in crate::proxy) fn is_empty(&self) -> bool {
        self.inner.locked().entries.is_empty()
    }

    /// The bytes of results kept (for tests).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.locked().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(result: &str) -> Vec<u8> {
        format!(r#"{{"jsonrpc":"2.0","id":1,"result":{result}}}"#).into_bytes()
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_is_reused_for_its_ttl_and_no_longer() {
        let cache = ListCache::default();
        cache.put("tools/list\0".into(), &response(r#"{"tools":[],"ttlMs":5000,"resultType":"complete"}"#));
        assert!(cache.get("tools/list\0").is_some());
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(cache.get("tools/list\0").is_some());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(cache.get("tools/list\0").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_zero_or_missing_ttls_and_unfinished_results_are_not_kept_long() {
        let cache = ListCache::default();
        cache.put("a".into(), &response(r#"{"tools":[],"ttlMs":18446744073709551615}"#));
        tokio::time::advance(MAX_LIST_TTL + Duration::from_millis(1)).await;
        assert!(cache.get("a").is_none(), "capped");
        for result in [
            r#"{"tools":[],"ttlMs":0}"#,
            r#"{"tools":[]}"#,
            r#"{"tools":[],"ttlMs":-5}"#,
            r#"{"resultType":"input_required","ttlMs":5000}"#,
        ] {
            cache.put("b".into(), &response(result));
            assert!(cache.get("b").is_none(), "{result}");
        }
        cache.put("b".into(), br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#);
        assert!(cache.get("b").is_none());
    }

    /// Issue 21.12: a server whose cursors change at every listing, with a long `ttlMs`: the
    /// pages of an old listing go when page 1 is fetched again, expired lists go at the next
    /// put, and the bytes kept never pass the cap (least recently used first).
    #[tokio::test(start_paused = true)]
    async fn the_cache_evicts_old_listings_expired_lists_and_past_its_cap() {
        let cache = ListCache::default();
        let page = |n: usize| response(&format!(r#"{{"tools":["{}"],"ttlMs":60000}}"#, "x".repeat(n)));
        for listing in 0..50 {
            cache.put("tools/list\0".into(), &page(1000));
            for p in 0..3 {
                cache.put(format!("tools/list\0\"c{listing}-{p}\""), &page(1000));
            }
            assert_eq!(cache.inner.locked().entries.len(), 4, "one listing kept, not {listing}");
        }
        // Expired lists go at the next put.
        cache.put("prompts/list\0".into(), &response(r#"{"prompts":[],"ttlMs":10}"#));
        tokio::time::advance(Duration::from_millis(20)).await;
        cache.put("resources/list\0".into(), &page(10));
        assert!(!cache.inner.locked().entries.contains_key("prompts/list\0"));
        // The cap: results of a quarter of it each; the least recently used go first.
        let quarter = MAX_LIST_CACHE_BYTES / 4;
        for k in ["a", "b", "c"] {
            cache.put(format!("tools/list\0\"{k}\""), &page(quarter));
        }
        assert!(cache.get("tools/list\0\"a\"").is_some());
        cache.put("tools/list\0\"d\"".into(), &page(quarter));
        cache.put("tools/list\0\"e\"".into(), &page(quarter));
        assert!(cache.bytes() <= MAX_LIST_CACHE_BYTES);
        assert!(cache.get("tools/list\0\"a\"").is_some(), "used last, so kept");
        assert!(cache.get("tools/list\0\"b\"").is_none(), "the least recently used went");
        // A result larger than the whole cap is not kept at all.
        cache.put("x".into(), &page(MAX_LIST_CACHE_BYTES + 1));
        assert!(cache.get("x").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_changed_notification_forgets_that_list() {
        let cache = ListCache::default();
        let r = response(r#"{"x":[],"ttlMs":60000}"#);
        for k in [
            "tools/list\0",
            "tools/list\0\"c2\"",
            "prompts/list\0",
            "resources/list\0",
            "resources/templates/list\0",
        ] {
            cache.put(k.into(), &r);
        }
        cache.changed("notifications/tools/list_changed");
        assert!(cache.get("tools/list\0").is_none() && cache.get("tools/list\0\"c2\"").is_none());
        assert!(cache.get("prompts/list\0").is_some());
        cache.changed("notifications/resources/list_changed");
        assert!(cache.get("resources/list\0").is_none() && cache.get("resources/templates/list\0").is_none());
        assert!(!cache.is_empty());
    }
}
