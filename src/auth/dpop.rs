//! DPoP (RFC 9449): access tokens bound to a key only this sidecar holds.
//!
//! When the authorization server advertises `dpop_signing_alg_values_supported` with ES256,
//! the sidecar generates a P-256 key (kept in the token store beside the tokens: a 0600 file,
//! or the OS keyring), sends a proof signed with it at the token endpoint, and, when the token
//! comes back with `token_type: DPoP`, presents it as `Authorization: DPoP <token>` with a
//! fresh proof (new `jti`, the method and URL, `ath` = the token's hash) on every request.
//! A `DPoP-Nonce` from either server is kept per origin and put into the next proofs (§8, §9).
//!
//! JOSE is the `jsonwebtoken` crate on aws-lc-rs (rustls's provider already); the key pair is
//! generated with aws-lc-rs, which jsonwebtoken does not do.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use url::Url;

use super::common::AuthError;
use crate::sync::Locked;

/// The one signing algorithm offered (every DPoP server supports ES256; RFC 9449 §5.1).
pub const ALG: &str = "ES256";

/// A DPoP key and the nonces servers gave for it.
pub struct Dpop {
    /// The PKCS#8 document, base64: what the store keeps.
    stored: SecretString,
    key: EncodingKey,
    jwk: Jwk,
    /// The last `DPoP-Nonce` of each origin (the token endpoint's and the MCP server's).
    nonces: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Dpop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dpop([key redacted])")
    }
}

impl Dpop {
    /// A new P-256 key.
    pub fn generate() -> Result<Dpop, AuthError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let doc = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|_| AuthError("could not generate a DPoP key".into()))?;
        Dpop::from_stored(&SecretString::from(URL_SAFE_NO_PAD.encode(doc.as_ref())))
    }

    /// The key the store kept (base64 PKCS#8).
    pub fn from_stored(stored: &SecretString) -> Result<Dpop, AuthError> {
        let bad =
            || AuthError("the stored DPoP key is damaged: run mcp-sidecar logout, then sign in again".into());
        let der = URL_SAFE_NO_PAD.decode(stored.expose_secret()).map_err(|_| bad())?;
        let key = EncodingKey::from_ec_der(&der);
        let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).map_err(|_| bad())?;
        crate::secrets::remember_as(crate::secrets::Slot::DpopKey, stored.expose_secret());
        Ok(Dpop { stored: stored.clone(), key, jwk, nonces: Mutex::new(HashMap::new()) })
    }

    /// What the store keeps.
    pub fn stored(&self) -> &SecretString {
        &self.stored
    }

    /// Keeps the nonce `origin` asked for (RFC 9449 §8, §9). An absurd one is ignored.
    pub fn set_nonce(&self, url: &Url, nonce: &str) {
        if nonce.is_empty() || nonce.len() > 1024 || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return;
        }
        self.nonces.locked().insert(url.origin().ascii_serialization(), nonce.to_owned());
    }

    /// A proof for one request (RFC 9449 §4.2): `htu` without query and fragment, `ath` when a
    /// token goes with it.
    pub fn proof(&self, method: &str, url: &Url, token: Option<&str>) -> Result<String, AuthError> {
        let mut htu = url.clone();
        htu.set_query(None);
        htu.set_fragment(None);
        let nonce = self.nonces.locked().get(&url.origin().ascii_serialization()).cloned();
        let claims = Claims {
            jti: random_id(),
            htm: method,
            htu: htu.as_str(),
            iat: super::common::now(),
            ath: token.map(|t| URL_SAFE_NO_PAD.encode(Sha256::digest(t.as_bytes()))),
            nonce,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(self.jwk.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| AuthError(format!("could not sign a DPoP proof ({e})")))
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    jti: String,
    htm: &'a str,
    htu: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
}

/// 128 random bits from the OS generator, base64url (a `jti`: it must not be guessable).
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `supported` (the metadata's `dpop_signing_alg_values_supported`) lets us use DPoP.
pub fn offered(supported: Option<&[String]>) -> bool {
    supported.is_some_and(|s| s.iter().any(|a| a == ALG))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn a_proof_names_method_url_and_token_and_carries_the_public_key_only() {
        let d = Dpop::generate().unwrap();
        let url = Url::parse("https://mcp.example/mcp?x=1#f").unwrap();
        let p = d.proof("POST", &url, Some("tok")).unwrap();
        let parts: Vec<&str> = p.split('.').collect();
        assert_eq!(parts.len(), 3);
        let (h, c) = (decode(parts[0]), decode(parts[1]));
        assert_eq!(h["typ"], "dpop+jwt");
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["jwk"]["kty"], "EC");
        assert!(h["jwk"].get("d").is_none(), "no private part: {h}");
        assert_eq!(c["htu"], "https://mcp.example/mcp");
        assert_eq!(c["htm"], "POST");
        assert_eq!(c["ath"], URL_SAFE_NO_PAD.encode(Sha256::digest(b"tok")));
        assert!(c.get("nonce").is_none());
        let again = d.proof("POST", &url, Some("tok")).unwrap();
        assert_ne!(decode(again.split('.').nth(1).unwrap())["jti"], c["jti"], "a fresh jti each time");

        d.set_nonce(&url, "n-1");
        d.set_nonce(&url, "bad\nnonce");
        let c = decode(d.proof("GET", &url, None).unwrap().split('.').nth(1).unwrap());
        assert_eq!(c["nonce"], "n-1");
        assert!(c.get("ath").is_none());
        let other = Url::parse("https://as.example/token").unwrap();
        let c = decode(d.proof("POST", &other, None).unwrap().split('.').nth(1).unwrap());
        assert!(c.get("nonce").is_none(), "nonces are per origin");
    }

    #[test]
    fn a_stored_key_is_the_same_key() {
        let d = Dpop::generate().unwrap();
        let again = Dpop::from_stored(d.stored()).unwrap();
        assert_eq!(serde_json::to_value(&d.jwk).unwrap(), serde_json::to_value(&again.jwk).unwrap());
        assert!(Dpop::from_stored(&SecretString::from("not-a-key".to_owned())).is_err());
    }
}
