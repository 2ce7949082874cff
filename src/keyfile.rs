//! A private key for `private_key_jwt` (`--client-key-file`, RFC 7523 §2.2), read and checked
//! when the command line is read: a leaf, so that the settings can hold it without importing
//! the sign-in code that uses it.

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A private key file given with `flag`, refused when others can read it (like ssh); the errors
/// say what to fix; at most 1 MiB (no key file is larger). Also `--client-key`'s (issue 25.3).
pub(crate) fn read_private(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{flag} {shown} cannot be read ({e}): check the path"))?;
    if crate::statedir::exposed(path, &meta) {
        return Err(format!(
            "{flag} {shown} is readable by other users: run {}",
            crate::statedir::fix_command(path)
        ));
    }
    if meta.len() > 1 << 20 {
        return Err(format!("{flag} {shown} is larger than a key file can be (1 MiB)"));
    }
    std::fs::read(path).map_err(|e| format!("{flag} {shown} cannot be read ({e}): check the path"))
}

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
        let pem = read_private(path, "--client-key-file")?;
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
