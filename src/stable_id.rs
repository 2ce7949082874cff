//! Stable ids (issue 21.2): the same 64-bit hash of the same text in every process and every
//! build, for what is shared through the rate-limit state file and store (the server's buckets,
//! the routes of requests). A leaf: it imports nothing of the crate.

/// A stable 64-bit hash (FNV-1a) of some text: the same in every process and every build, since
/// bucket and route ids are shared through the state file and the store.
pub fn id_of(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// The route of a request: its method, and for `tools/call` and `prompts/get` the name.
pub fn route_of(method: &str, name: Option<&str>) -> u64 {
    id_of(&[method.as_bytes(), name.unwrap_or("").as_bytes()])
}

/// The id of a bucket the server names: `kind` (policy, resource, limit) and what it said.
pub fn bucket_id(kind: &str, said: &[u8]) -> u64 {
    id_of(&[kind.as_bytes(), said])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids are written to shared state: a build that hashed differently would not find what
    /// an older one wrote. These values are fixed.
    #[test]
    fn ids_are_the_same_in_every_build() {
        assert_eq!(route_of("tools/call", Some("search")), 12_766_777_078_301_177_739);
        assert_eq!(bucket_id("limit", &100u64.to_le_bytes()), 2_481_401_617_667_640_350);
        assert_ne!(id_of(&[b"a", b"b"]), id_of(&[b"ab"]), "parts are kept apart");
        assert_ne!(id_of(&[]), 0, "0 means none");
    }
}
