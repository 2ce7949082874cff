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
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    // For the Redis TLS test, which is Unix-only.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) cert_pem: String,
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) key_pem: String,
}

pub(crate) fn pki(names: &[&str], expired: bool) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca.distinguished_name.push(rcgen::DnType::CommonName, "mcp-sidecar test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// The example server over TLS with `pki`'s certificate; returns its https URL.
pub(crate) async fn serve_tls(pki: &Pki, ct: CancellationToken) -> String {
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
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
