//! Cacheable lists of the stateless era: a `tools/list`, `prompts/list` or `resources/list`
//! result that carries `ttlMs` is reused, for this process, until that time is up, so a client
//! that lists on every turn does not spend the server's rate budget (issue 13.4). A list-changed
//! notification from the server forgets that list at once.

use super::*;

/// The longest a list is reused, whatever `ttlMs` says: a server's absurd value must not pin a
/// stale list for days.
pub const MAX_LIST_TTL: Duration = Duration::from_secs(60 * 60);

/// Lists kept: by method and cursor, the result (raw) and until when it holds.
#[derive(Default)]
pub(super) struct ListCache {
    entries: Mutex<HashMap<String, (Box<RawValue>, Instant)>>,
}

/// Whether `method` returns a cacheable list.
pub(super) fn cacheable(method: &str) -> bool {
    matches!(method, "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list")
}

/// The cache key of a list request: its method and the cursor it asks for.
pub(super) fn key(method: &str, params: &envelope::Params<'_>) -> String {
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
    pub(super) fn get(&self, key: &str) -> Option<Box<RawValue>> {
        let mut entries = self.entries.locked();
        match entries.get(key) {
            Some((result, until)) if Instant::now() < *until => Some(result.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps the result of a response (raw bytes) under `key` for its `ttlMs`.
    pub(super) fn put(&self, key: String, response: &[u8]) {
        let Ok(env) = Envelope::parse(response) else { return };
        let Some(result) = env.result else { return };
        let Some(ttl) = lifetime(result) else { return };
        let Some(until) = Instant::now().checked_add(ttl) else { return };
        self.entries.locked().insert(key, (result.to_owned(), until));
    }

    /// Forgets the lists a server notification says have changed.
    pub(super) fn changed(&self, notification: &str) {
        let method = match notification {
            "notifications/tools/list_changed" => "tools/list",
            "notifications/prompts/list_changed" => "prompts/list",
            "notifications/resources/list_changed" => "resources/",
            _ => return,
        };
        self.entries.locked().retain(|k, _| !k.starts_with(method));
    }

    /// Whether anything is cached (so that notifications need not be looked at otherwise).
    pub(super) fn is_empty(&self) -> bool {
        self.entries.locked().is_empty()
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
