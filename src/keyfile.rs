//! A private key for `private_key_jwt` (`--client-key-file`, RFC 7523 §2.2), read and checked
//! when the command line is read: a leaf, so that the settings can hold it without importing
//! the sign-in code that uses it.

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A private key for `private_key_jwt` (`--client-key-file`), PEM.
#[derive(Clone)]
pub struct ClientKey {
    pub(crate) key: EncodingKey,
    pub(crate) alg: Algorithm,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey({:?}, [redacted])", self.alg)
    }
}

impl ClientKey {
    /// Reads a PEM private key (EC P-256, RSA or Ed25519), refusing a file others may read.
    pub fn load(path: &std::path::Path) -> Result<ClientKey, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("--client-key-file {shown} cannot be read ({e}): check the path"))?;
        // Like ssh: a private key others can read is not used.
        if crate::statedir::exposed(path, &meta) {
            return Err(format!(
                "--client-key-file {shown} is readable by other users: run {}",
                crate::statedir::fix_command(path)
            ));
        }
        let pem = std::fs::read(path)
            .map_err(|e| format!("--client-key-file {shown} cannot be read ({e}): check the path"))?;
        let tried = [
            (EncodingKey::from_ec_pem(&pem), Algorithm::ES256),
            (EncodingKey::from_rsa_pem(&pem), Algorithm::RS256),
            (EncodingKey::from_ed_pem(&pem), Algorithm::EdDSA),
        ];
        for (key, alg) in tried {
            let Ok(key) = key else { continue };
            let k = ClientKey { key, alg };
            if k.signs() {
                return Ok(k);
            }
        }
        Err(format!(
            "--client-key-file {shown} holds no usable private key: give a PEM file with a P-256 EC, RSA or Ed25519 key (PKCS#8)"
        ))
    }

    /// The JWT name of the signing algorithm.
    pub fn alg(&self) -> &'static str {
        match self.alg {
            Algorithm::RS256 => "RS256",
            Algorithm::EdDSA => "EdDSA",
            _ => "ES256",
        }
    }

    /// Whether the key signs with its algorithm (a PEM of another kind parses as some keys).
    fn signs(&self) -> bool {
        jsonwebtoken::encode(&Header::new(self.alg), &serde_json::json!({ "probe": true }), &self.key).is_ok()
    }
}
