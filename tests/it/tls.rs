//! TLS failures explained in one sentence, and `--ca-file` for a private CA (issue 4).

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

/// A private CA, and a server certificate it signed.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    ca_der: Vec<u8>,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    // For the Redis TLS test, which is Unix-only.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) cert_pem: String,
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) key_pem: String,
}

pub(crate) fn pki(names: &[&str], expired: bool) -> Pki {
    test_ca("mcp-sidecar test CA").leaf(names, expired)
}

/// A CA of the tests, and what it signs.
struct TestCa {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

fn test_ca(name: &str) -> TestCa {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = ca.self_signed(&ca_key).unwrap();
    TestCa { cert, issuer: Issuer::new(ca, ca_key) }
}

impl TestCa {
    /// A leaf for `names`, current or expired in 2021.
    fn leaf(&self, names: &[&str], expired: bool) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if expired {
            leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
            leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = leaf.signed_by(&key, &self.issuer).unwrap();
        Pki {
            ca_pem: self.cert.pem(),
            ca_der: self.cert.der().to_vec(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The example server over TLS with `pki`'s certificate; returns its https URL.
pub(crate) async fn serve_tls(pki: &Pki, ct: CancellationToken) -> String {
    serve_tls_with(pki, None, ct).await
}

/// [`serve_tls`], requiring a client certificate signed by `client_ca` when given (issue 25.3).
async fn serve_tls_with(pki: &Pki, client_ca: Option<&Pki>, ct: CancellationToken) -> String {
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.ca_der.clone().into()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(
            vec![pki.cert_der.clone().into()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.clone().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}/mcp", listener.local_addr().unwrap().port());
    let router = example::router(generic(), ct.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = ct.cancelled() => return,
                accepted = listener.accept() => accepted.unwrap(),
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                }
            });
        }
    });
    url
}

/// Writes the CA to a file for `--ca-file`.
pub(crate) fn ca_file(pki: &Pki, name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("mcp-sidecar-ca-{}-{name}.pem", std::process::id()));
    std::fs::write(&path, &pki.ca_pem).unwrap();
    path
}

async fn first_answer(url: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![url, "--api-key-env", "TEST_KEY", "--max-retries", "0"];
    args.extend_from_slice(extra);
    let mut s = Sidecar::spawn(&args, ENV);
    s.send_json(&request(
        1,
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    ))
    .await;
    let answer = s.recv().await;
    s.finish().await;
    answer
}

#[tokio::test]
async fn a_private_ca_is_refused_until_given_with_ca_file() {
    let ct = CancellationToken::new();
    let pki = pki(&["127.0.0.1", "localhost"], false);
    let url = serve_tls(&pki, ct.clone()).await;
    let e = first_answer(&url, &[]).await;
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("not signed by an authority this machine trusts") && msg.contains("--ca-file"),
        "{e}"
    );
    assert_eq!(e["error"]["data"]["requestSent"], false);

    let ca = ca_file(&pki, "good");
    let ok = first_answer(&url, &["--ca-file", ca.to_str().unwrap()]).await;
    assert!(ok["result"]["serverInfo"].is_object(), "{ok}");
    ct.cancel();
}

#[tokio::test]
async fn a_certificate_for_another_host_is_explained() {
    let ct = CancellationToken::new();
    let pki = pki(&["mcp.example.com"], false);
    let url = serve_tls(&pki, ct.clone()).await;
    let ca = ca_file(&pki, "wrong-host");
    let e = first_answer(&url, &["--ca-file", ca.to_str().unwrap()]).await;
    assert!(e["error"]["message"].as_str().unwrap_or_default().contains("is for another host name"), "{e}");
    ct.cancel();
}

#[tokio::test]
async fn an_expired_certificate_is_explained() {
    let ct = CancellationToken::new();
    let pki = pki(&["127.0.0.1"], true);
    let url = serve_tls(&pki, ct.clone()).await;
    let ca = ca_file(&pki, "expired");
    let e = first_answer(&url, &["--ca-file", ca.to_str().unwrap()]).await;
    assert!(e["error"]["message"].as_str().unwrap_or_default().contains("has expired"), "{e}");
    ct.cancel();
}

#[tokio::test]
async fn an_unusable_ca_file_is_a_configuration_error() {
    let outcome =
        Sidecar::spawn(&["https://127.0.0.1:9/mcp", "--ca-file", "/nonexistent/ca.pem"], &[]).wait().await;
    assert_eq!(outcome.status.code(), Some(2));
    assert!(outcome.stderr.contains("--ca-file /nonexistent/ca.pem cannot be read"), "{}", outcome.stderr);
}

#[tokio::test]
async fn a_certificate_failure_is_answered_at_once_not_retried() {
    let ct = CancellationToken::new();
    let pki = pki(&["127.0.0.1"], false);
    let url = serve_tls(&pki, ct.clone()).await;
    let mut s = Sidecar::spawn(&[&url, "--api-key-env", "TEST_KEY"], ENV);
    s.send_json(&request(
        1,
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    ))
    .await;
    let e = s.recv().await;
    assert!(e["error"]["message"].as_str().unwrap().contains("--ca-file"), "{e}");
    let out = s.finish().await;
    assert!(!out.stderr.contains("trying again"), "a bad certificate does not get better:\n{}", out.stderr);
    ct.cancel();
}

/// Writes `pki`'s leaf and key for `--client-cert`/`--client-key` (the key 0600).
fn client_files(pki: &Pki, name: &str) -> (String, String) {
    let dir = scratch_dir(&format!("mtls-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    private(&key);
    (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned())
}

#[cfg(unix)]
fn private(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[cfg(not(unix))]
fn private(_: &std::path::Path) {}

/// Issue 25.3: a server that requires a client certificate (rustls, verifying against its own
/// CA): none given, the right one, one of another CA, an expired one; each refusal in words.
#[tokio::test]
async fn issue25_3_client_certificates_accepted_refused_and_expired() {
    let ct = CancellationToken::new();
    let server_pki = pki(&["127.0.0.1"], false);
    let (clients, expired) = client_pkis();
    let url = serve_tls_with(&server_pki, Some(&clients), ct.clone()).await;
    let ca = ca_file(&server_pki, "mtls");
    let ca = ca.to_str().unwrap();

    let none = first_answer(&url, &["--ca-file", ca]).await;
    let msg = none["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("asked for a client certificate") && msg.contains("--client-cert"), "{none}");
    let (code, stdout, _) =
        run_command(&["check", &url, "--api-key-env", "TEST_KEY", "--ca-file", ca], ENV).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("asked for a client certificate"), "check names it: {stdout}");

    let (cert, key) = client_files(&clients, "good");
    let ok = first_answer(&url, &["--ca-file", ca, "--client-cert", &cert, "--client-key", &key]).await;
    assert!(ok["result"]["serverInfo"].is_object(), "{ok}");

    let stranger = pki(&["client.example"], false);
    let (cert, key) = client_files(&stranger, "stranger");
    let e = first_answer(&url, &["--ca-file", ca, "--client-cert", &cert, "--client-key", &key]).await;
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("refused the client certificate") && msg.contains(&cert), "{e}");

    let (cert, key) = client_files(&expired, "expired");
    let args = [
        url.as_str(),
        "--api-key-env",
        "TEST_KEY",
        "--max-retries",
        "0",
        "--ca-file",
        ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
    ];
    let mut s = Sidecar::spawn(&args, ENV);
    s.send_json(&initialize(1)).await;
    let e = s.recv().await;
    let out = s.finish().await;
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("refused the client certificate") && msg.contains("expired on"), "{e}");
    assert!(
        out.stderr.contains("expired on") && out.stderr.contains("servers that check it will refuse it"),
        "{}",
        out.stderr
    );
    ct.cancel();
}

/// A client CA with two leaves: a current one and an expired one.
fn client_pkis() -> (Pki, Pki) {
    let ca = test_ca("mcp-sidecar test client CA");
    (ca.leaf(&["client.example"], false), ca.leaf(&["client.example"], true))
}

/// Issue 25.3, careless users: a key others can read, a key of another certificate, a chain of
/// 100 certificates, an encrypted key without or with the wrong passphrase: each said at
/// start (exit 2); the right passphrase works.
#[tokio::test]
async fn issue25_3_bad_client_certificates_are_said_at_start() {
    let ct = CancellationToken::new();
    let server_pki = pki(&["127.0.0.1"], false);
    let clients = pki(&["client.example"], false);
    let url = serve_tls_with(&server_pki, Some(&clients), ct.clone()).await;
    let ca = ca_file(&server_pki, "mtls-bad");
    let ca = ca.to_str().unwrap();
    let (cert, key) = client_files(&clients, "bad");
    let start = |cert: String, key: String, extra: Vec<(&'static str, String)>| {
        let url = url.clone();
        let ca = ca.to_owned();
        async move {
            let mut args =
                vec![url, "--ca-file".into(), ca, "--client-cert".into(), cert, "--client-key".into(), key];
            let mut env = vec![("TEST_KEY", KEY.to_owned())];
            for (name, value) in extra {
                if name == "--client-key-password-env" {
                    args.extend([name.to_owned(), "PASS".into()]);
                    env.push(("PASS", value));
                }
            }
            args.extend(["--api-key-env".into(), "TEST_KEY".into()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run_command(&args, &env).await
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let open = format!("{key}.open");
        std::fs::copy(&key, &open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (code, _, stderr) = start(cert.clone(), open, vec![]).await;
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("readable by other users"), "{stderr}");
    }
    let (_, other_key) = client_files(&pki(&["x"], false), "other-key");
    let (code, _, stderr) = start(cert.clone(), other_key, vec![]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not go with"), "{stderr}");

    let long = format!("{cert}.100");
    std::fs::write(&long, clients.cert_pem.repeat(100)).unwrap();
    let (code, _, stderr) = start(long, key.clone(), vec![]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("holds 100 certificates"), "{stderr}");

    // An encrypted PKCS#8 key (PBES2, AES-256-CBC), made by Node's crypto as openssl would.
    let encrypted = format!("{key}.enc");
    let script = "const c=require('crypto');const fs=require('fs');\
        const k=c.createPrivateKey(fs.readFileSync(process.argv[1]));\
        fs.writeFileSync(process.argv[2],k.export({type:'pkcs8',format:'pem',cipher:'aes-256-cbc',passphrase:'open sesame'}),{mode:0o600})";
    let made = std::process::Command::new("node").args(["-e", script, &key, &encrypted]).status().unwrap();
    assert!(made.success());
    let (code, _, stderr) = start(cert.clone(), encrypted.clone(), vec![]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is encrypted") && stderr.contains("--client-key-password-env"), "{stderr}");
    let (code, _, stderr) =
        start(cert.clone(), encrypted.clone(), vec![("--client-key-password-env", "wrong".into())]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be decrypted"), "{stderr}");

    let args = [
        url.as_str(),
        "--api-key-env",
        "TEST_KEY",
        "--ca-file",
        ca,
        "--client-cert",
        &cert,
        "--client-key",
        &encrypted,
        "--client-key-password-env",
        "PASS",
    ];
    let mut s = Sidecar::spawn(&args, &[("TEST_KEY", KEY), ("PASS", "open sesame")]).secret("open sesame");
    s.send_json(&initialize(1)).await;
    assert!(s.recv().await["result"]["serverInfo"].is_object());
    s.finish().await;
    ct.cancel();
}
