//! `--client-cert PEM --client-key PEM` (issue 25.3): the client certificate (mTLS) that
//! internal servers require, read and checked when the command line is read: certificates
//! (the leaf first, at most [`MAX_CHAIN`]), a key the owner alone can read (PKCS#8, PKCS#1 or
//! SEC1; an encrypted PKCS#8 key with the passphrase from `--client-key-password-env`), and
//! that the two belong together. The TLS stack offers it to any server that asks for one (the
//! MCP server, and an authorization server's token endpoint); a server that asks for none never
//! sees it. A leaf: the settings hold it, `upstream` and `auth` hand it to their clients.

use std::path::Path;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretBox, SecretString};

/// The most certificates a client's chain may have (a leaf and its intermediates).
pub const MAX_CHAIN: usize = 10;

/// The largest certificate or key file read.
const MAX_FILE: u64 = 1 << 20;

/// A client certificate and its key, ready for the TLS client.
pub struct ClientCert {
    /// The certificates and the (decrypted) key, PEM, as `reqwest::Identity` takes them.
    pem: SecretBox<Vec<u8>>,
    /// `--client-cert`'s path, for messages.
    pub shown: String,
    /// When the leaf certificate expires (Unix seconds).
    pub not_after: Option<i64>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientCert({}, [redacted])", self.shown)
    }
}

impl ClientCert {
    /// Reads and checks `cert` and `key`; the errors say what to fix.
    pub fn load(cert: &Path, key: &Path, password: Option<&SecretString>) -> Result<ClientCert, String> {
        let shown = cert.display().to_string();
        let cert_pem = read(cert, "--client-cert")?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
        if chain.is_empty() {
            return Err(format!(
                "--client-cert {shown} holds no certificate: give the PEM file with your client certificate (-----BEGIN CERTIFICATE-----)"
            ));
        }
        if chain.len() > MAX_CHAIN {
            return Err(format!(
                "--client-cert {shown} holds {} certificates, more than a client's chain has ({MAX_CHAIN} at most): give your certificate and its intermediates only",
                chain.len()
            ));
        }
        let key_der = private_key(key, password)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider).map_err(|e| {
            format!(
                "--client-key {} does not go with --client-cert {shown} ({e}): give the key of that certificate",
                key.display()
            )
        })?;
        let mut pem = Vec::new();
        for c in &chain {
            pem.extend_from_slice(pem_block("CERTIFICATE", c.as_ref()).as_bytes());
        }
        let label = match &key_der {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem.extend_from_slice(pem_block(label, key_der.secret_der()).as_bytes());
        let not_after = x509_parser::parse_x509_certificate(chain[0].as_ref())
            .ok()
            .map(|(_, c)| c.validity().not_after.timestamp());
        Ok(ClientCert { pem: SecretBox::new(Box::new(pem)), shown, not_after })
    }

    /// The identity for a reqwest client.
    pub fn identity(&self) -> Result<reqwest::Identity, reqwest::Error> {
        reqwest::Identity::from_pem(self.pem.expose_secret())
    }

    /// "expired on 2021-01-01" when the leaf's end has passed, for messages.
    pub fn expired(&self) -> Option<String> {
        let end = self.not_after?;
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
        let now = i64::try_from(now).ok()?;
        if end >= now {
            return None;
        }
        let end =
            SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(u64::try_from(end).ok()?))?;
        Some(format!("expired on {}", httpdate::fmt_http_date(end)))
    }
}

/// A file of at most [`MAX_FILE`] bytes.
fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{flag} {shown} cannot be read ({e}): check the path"))?;
    if meta.len() > MAX_FILE {
        return Err(format!("{flag} {shown} is larger than a certificate or key file can be (1 MiB)"));
    }
    std::fs::read(path).map_err(|e| format!("{flag} {shown} cannot be read ({e}): check the path"))
}

/// The key of `--client-key`: refused when others can read it (as ssh does), decrypted with
/// the passphrase when it is encrypted.
fn private_key(path: &Path, password: Option<&SecretString>) -> Result<PrivateKeyDer<'static>, String> {
    let shown = path.display();
    let pem = crate::keyfile::read_private(path, "--client-key")?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let Some(password) = password else {
            return Err(format!(
                "--client-key {shown} is encrypted: name the variable that holds its passphrase with --client-key-password-env"
            ));
        };
        let (_, der) = pkcs8::der::pem::decode_vec(&pem)
            .map_err(|_| format!("--client-key {shown} is not a readable PEM file"))?;
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
            .map_err(|_| format!("--client-key {shown} is not an encrypted PKCS#8 key"))?;
        let plain = info.decrypt(password.expose_secret().as_bytes()).map_err(|_| {
            format!(
                "--client-key {shown} cannot be decrypted with the passphrase given (wrong passphrase, or a cipher other than PBES2 with AES): check --client-key-password-env"
            )
        })?;
        return Ok(PrivateKeyDer::Pkcs8(plain.as_bytes().to_vec().into()));
    }
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "--client-key {shown} is encrypted the old OpenSSL way, which is not read: convert it with openssl pkcs8 -topk8 -in KEY -out NEW (PKCS#8 with a passphrase)"
        ));
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        format!("--client-key {shown} holds no private key: give the PEM file with your certificate's key")
    })
}

/// A PEM block.
fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}
