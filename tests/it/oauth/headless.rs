//! Issue 14: sign-in without a browser, end to end against the test authorization server of
//! `super` — client credentials (secret, private_key_jwt), workload identity, enterprise-managed,
//! the device flow (with `slow_down` and expiry), and DPoP with nonce challenges at both servers.
//! Every run checks the usual invariants, with the new secrets (client secrets, identity
//! tokens, ID-JAGs, access tokens) added to what must never be shown.

use super::*;

fn no_token_files(dir: &std::path::Path) {
    let tokens = dir.join("tokens");
    let files: Vec<_> =
        std::fs::read_dir(&tokens).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(
        files.iter().all(|f| f.extension().is_some_and(|e| e == "lock")),
        "a machine grant stores nothing: {files:?}"
    );
}

/// Sends `initialize`; returns the answer and its error message (empty when it succeeded).
async fn refused(sc: &mut Sidecar) -> (Value, String) {
    sc.send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"it","version":"1"}}}"#).await;
    let r = sc.recv().await;
    let msg = r["error"]["message"].as_str().unwrap_or_default().to_owned();
    (r, msg)
}

fn spawn(server: &Server, state: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Sidecar {
    let state = state.to_string_lossy().into_owned();
    let mut args = vec![server.url.as_str(), "--state-dir", &state];
    args.extend_from_slice(extra);
    let mut sc = Sidecar::spawn(&args, env);
    for (_, v) in env {
        sc = sc.secret(v);
    }
    sc
}

#[tokio::test]
async fn client_credentials_with_a_secret_need_no_person_and_store_nothing() {
    let auth = AuthServer::start(|s| {
        s.auth_methods = Some(vec!["client_secret_post"]);
        s.client_secret = Some(("ci-1".into(), "cs-SECRET-ci".into()));
    })
    .await;
    let server = auth.protect().await;
    let dir = temp_dir("cc");
    let args = ["--auth", "client-credentials", "--client-id", "ci-1", "--client-secret-env", "CS"];
    let mut sc = spawn(&server, &dir, &args, &[("CS", "cs-SECRET-ci")]);
    sc.handshake().await;
    let r = call(&mut sc, 2, "echo", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "{r}");
    {
        let st = auth.s();
        assert_eq!(st.tokens[0]["grant_type"], "client_credentials");
        assert_eq!(
            st.tokens[0]["client_secret"], "cs-SECRET-ci",
            "client_secret_post, as the metadata offers"
        );
        assert_eq!(st.tokens[0]["resource"], st.mcp, "RFC 8707");
        assert!(st.token_auth[0].is_none());
        assert!(st.authorizes.is_empty() && st.registrations.is_empty(), "no browser, no registration");
        assert_eq!(st.tokens.len(), 1, "one token for the whole run");
    }
    finish_checked(sc, &auth).await;
    no_token_files(&dir);

    // A wrong secret: one clear error for the request, the cause and the fix; the proxy lives on.
    let mut sc = spawn(&server, &dir, &args, &[("CS", "cs-SECRET-wrong")]);
    let (r, msg) = refused(&mut sc).await;
    assert!(msg.contains("invalid_client") && msg.contains("--client-id ci-1") && msg.contains("CS"), "{r}");
    sc.send(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#).await;
    assert_eq!(sc.recv().await["id"], 2, "still answering");
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn private_key_jwt_signs_each_request_and_a_key_others_can_read_is_refused() {
    let key = rcgen::KeyPair::generate().unwrap();
    let auth = AuthServer::start(|s| {
        s.auth_methods = Some(vec!["private_key_jwt"]);
        s.client_key = Some(key.public_key_pem());
    })
    .await;
    let server = auth.protect().await;
    let dir = temp_dir("pkjwt");
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("client.pem");
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let kf = key_file.to_string_lossy().into_owned();
    let args = ["--auth", "client-credentials", "--client-id", "svc-7", "--client-key-file", &kf];
    let mut sc = spawn(&server, &dir.join("state"), &args, &[]).secret(&key.serialize_pem());
    sc.handshake().await;
    {
        let st = auth.s();
        assert_eq!(
            st.tokens[0]["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assert_eq!(st.tokens[0]["client_id"], "svc-7");
        assert!(!st.tokens[0].contains_key("client_secret"));
    }
    let assertion = auth.s().tokens[0]["client_assertion"].clone();
    let out = finish_checked(sc.secret(&assertion), &auth).await;
    assert!(!out.stderr.contains("PRIVATE KEY"));

    // chmod 644: refused at start, with the fix, before anything is sent.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = spawn(&server, &dir.join("state"), &args, &[]).finish().await;
    assert_eq!(out.status.code(), Some(2), "a configuration error");
    assert!(
        out.stderr.contains("readable by other users") && out.stderr.contains("chmod 600"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.matches("chmod 600").count(), 1, "said once");
    assert_eq!(auth.s().tokens.len(), 1);
}

#[tokio::test]
async fn workload_identity_reads_its_token_file_at_each_renewal_and_a_refusal_is_not_retried() {
    let auth = AuthServer::start(|s| s.assertions = vec!["wif-SECRET-1".into(), "wif-SECRET-2".into()]).await;
    let server = auth.protect().await;
    let dir = temp_dir("wif");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("oidc-token");
    std::fs::write(&file, "wif-SECRET-1\n").unwrap();
    let f = file.to_string_lossy().into_owned();
    let args = ["--auth", "workload-identity", "--identity-token-file", &f];
    let mut sc = spawn(&server, &dir.join("state"), &args, &[]).secret("wif-SECRET-1").secret("wif-SECRET-2");
    sc.handshake().await;
    assert_eq!(auth.s().tokens[0]["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
    assert_eq!(auth.s().tokens[0]["assertion"], "wif-SECRET-1");
    // The platform rotates the token; the server forgets the access token: the next request
    // meets a 401 and the renewal reads the file again.
    std::fs::write(&file, "wif-SECRET-2").unwrap();
    auth.s().access.clear();
    let r = call(&mut sc, 2, "echo", json!({"text": "again"})).await;
    assert!(r.get("result").is_some(), "{r}");
    assert_eq!(auth.s().tokens[1]["assertion"], "wif-SECRET-2");
    finish_checked(sc, &auth).await;
    no_token_files(&dir.join("state"));

    // An identity token the server refuses (expired): one token request, one clear error.
    std::fs::write(&file, "wif-SECRET-expired").unwrap();
    let before = auth.s().tokens.len();
    let mut sc = spawn(&server, &dir.join("state"), &args, &[]).secret("wif-SECRET-expired");
    let (r, msg) = refused(&mut sc).await;
    assert!(msg.contains("invalid_grant") && msg.contains("audience"), "{r}");
    assert_eq!(auth.s().tokens.len(), before + 1, "not retried, no other grant tried");
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn enterprise_id_token_is_exchanged_at_the_idp_and_the_id_jag_used_once() {
    let auth = AuthServer::start(|s| {
        s.id_tokens = vec!["idt-SECRET-1".into()];
        s.client_secret = Some(("ent-1".into(), "es-SECRET".into()));
        s.auth_methods = Some(vec!["client_secret_basic"]);
    })
    .await;
    let server = auth.protect().await;
    let dir = temp_dir("enterprise");
    let idp = format!("{}/idp/token", auth.s().base);
    let args = [
        "--auth",
        "enterprise",
        "--client-id",
        "ent-1",
        "--client-secret-env",
        "ES",
        "--idp-token-endpoint",
        &idp,
        "--idp-client-id",
        "idp-client",
        "--identity-token-env",
        "IDT",
    ];
    let env = [("ES", "es-SECRET"), ("IDT", "idt-SECRET-1")];
    let mut sc = spawn(&server, &dir, &args, &env);
    sc.handshake().await;
    {
        let st = auth.s();
        assert_eq!(st.idp_requests.len(), 1);
        assert_eq!(st.idp_requests[0]["client_id"], "idp-client");
        assert_eq!(st.tokens[0]["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
        assert!(st.tokens[0]["assertion"].starts_with("jag-SECRET-"));
        assert!(st.token_auth[0].as_deref().is_some_and(|a| a.starts_with("Basic ")), "client_secret_basic");
        assert!(st.jags.is_empty(), "the ID-JAG was used");
    }
    let jag = auth.s().tokens[0]["assertion"].clone();
    finish_checked(sc.secret(&jag), &auth).await;

    // An ID token the IdP refuses: the error names the identity provider and the fix.
    let env = [("ES", "es-SECRET"), ("IDT", "idt-SECRET-stale")];
    let mut sc = spawn(&server, &dir, &args, &env);
    let (r, msg) = refused(&mut sc).await;
    assert!(msg.contains("identity provider") && msg.contains("invalid_grant"), "{r}");
    assert_eq!(auth.s().tokens.len(), 1, "nothing reached the authorization server");
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn a_machine_token_that_expires_at_once_is_not_renewed_before_every_request() {
    // Issue 21.11: `expires_in: 0` used to make every request a token request (the last quarter
    // of a zero lifetime is now). A token lives at least 30 s for renewal: one serves them all,
    // and the server never refuses one. (Renewal ahead of expiry: `refresh_due`'s unit tests.)
    let auth = AuthServer::start(|s| {
        s.client_secret = Some(("ci-2".into(), "cs-SECRET-2".into()));
        s.expires_in = Some(0);
    })
    .await;
    let server = auth.protect().await;
    let dir = temp_dir("cc-ahead");
    let args = ["--auth", "client-credentials", "--client-id", "ci-2", "--client-secret-env", "CS"];
    let mut sc = spawn(&server, &dir, &args, &[("CS", "cs-SECRET-2")]);
    sc.handshake().await;
    let rejected = auth.s().rejected;
    for id in 2..5 {
        let r = call(&mut sc, id, "echo", json!({"text": "x"})).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    assert_eq!(auth.s().rejected, rejected, "never refused");
    assert_eq!(auth.s().tokens.len(), 1, "one token for every request");
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn login_device_shows_the_code_honours_slow_down_and_status_names_the_grant() {
    let auth = AuthServer::start(|s| s.device_script = vec!["authorization_pending", "slow_down"]).await;
    let server = auth.protect().await;
    let dir = temp_dir("device");
    let state = dir.join("state").to_string_lossy().into_owned();
    let out =
        command(&["login", "--device", &server.url, "--state-dir", &state], &[]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let base = auth.s().base.clone();
    assert!(stderr.contains(&format!("{base}/verify")) && stderr.contains("WDJB-MJHT"), "{stderr}");
    assert!(stderr.contains(&format!("{base}/verify?user_code=WDJB-MJHT")), "the complete URI, for a phone");
    assert!(!stderr.contains("dc-SECRET") && !stderr.contains("at-SECRET"), "{stderr}");
    assert!(out.stdout.is_empty());
    {
        let st = auth.s();
        assert_eq!(st.device_polls.len(), 3, "pending, slow_down, token");
        let gap = st.device_polls[2] - st.device_polls[1];
        assert!(gap >= std::time::Duration::from_secs(6), "slow_down adds 5 s to the 1 s interval: {gap:?}");
        assert!(st.authorizes.is_empty());
        assert!(st.registrations[0].get("redirect_uris").is_none(), "a device client has no redirect");
    }
    let out = command(&["status", &server.url, "--state-dir", &state], &[]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("device code (login --device)") && !text.contains("SECRET"), "{text}");

    // The proxy uses the stored tokens.
    let mut sc = Sidecar::spawn(&[server.url.as_str(), "--state-dir", &state], &[]);
    sc.handshake().await;
    finish_checked(sc, &auth).await;
    let out = command(&["logout", &server.url, "--state-dir", &state], &[]).output().await.unwrap();
    assert!(out.status.success());
    let out = command(&["status", &server.url, "--state-dir", &state], &[]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("not signed in"));
}

#[tokio::test]
async fn an_expired_device_code_is_a_clear_error_and_no_code_is_shown_without_a_terminal() {
    let auth = AuthServer::start(|s| s.device_script = vec!["expired_token"]).await;
    let server = auth.protect().await;
    let dir = temp_dir("device-expired");
    let state = dir.join("state").to_string_lossy().into_owned();
    let out =
        command(&["login", "--device", &server.url, "--state-dir", &state], &[]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("device code expired") && stderr.contains("login --device"), "{stderr}");

    // --auth oauth-device in the proxy, whose stderr is no terminal: no device code is asked
    // for; the request gets the way out.
    let mut sc = Sidecar::spawn(&[server.url.as_str(), "--state-dir", &state, "--auth", "oauth-device"], &[]);
    let (r, msg) = refused(&mut sc).await;
    assert!(msg.contains("mcp-sidecar login --device"), "{r}");
    assert_eq!(auth.s().device_polls.len(), 1, "only the login's poll");
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn login_over_ssh_without_a_browser_picks_the_device_flow() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("device-auto");
    let state = dir.join("state").to_string_lossy().into_owned();
    let env = [("SSH_CONNECTION", "10.0.0.2 50000 10.0.0.1 22"), ("DISPLAY", ":0")];
    let out = command(&["login", &server.url, "--state-dir", &state], &env).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("WDJB-MJHT"), "{stderr}");
    assert!(auth.s().authorizes.is_empty(), "no browser sign-in");
}

#[tokio::test]
async fn dpop_binds_tokens_to_a_private_key_and_honours_nonces_from_both_servers() {
    let auth = AuthServer::start(|s| {
        s.dpop = true;
        s.as_nonce = Some("as-n-1".into());
        s.rs_nonce = Some("rs-n-1".into());
    })
    .await;
    let server = auth.protect().await;
    let dir = temp_dir("dpop");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state");
    let mut sc = sidecar(&server, &state, &browser, &[]);
    sc.handshake().await;
    let r = call(&mut sc, 2, "echo", json!({"text": "bound"})).await;
    assert!(r.get("result").is_some(), "{r}");
    {
        let st = auth.s();
        assert!(st.dpop_errors.is_empty(), "every proof valid: {:?}", st.dpop_errors);
        assert_eq!(st.nonce_challenges, (1, 1), "one nonce challenge at each server, then retried with it");
        assert_eq!(st.bound.len(), 1, "the token is bound");
        assert!(st.jtis.len() >= 4, "a fresh proof for each request");
    }
    let out = finish_checked(sc, &auth).await;
    assert!(!out.stderr.contains("eyJ"), "no proof or JWT in the log: {}", out.stderr);

    // The key is kept with the tokens, private; the next run proves with the same key.
    let file = std::fs::read_dir(state.join("tokens"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"dpop_key\"") && text.contains("\"dpop\":true"), "{text}");
    let key = serde_json::from_str::<Value>(&text).unwrap()["dpop_key"].as_str().unwrap().to_owned();
    let mut sc = sidecar(&server, &state, &browser, &[]).secret(&key);
    sc.handshake().await;
    finish_checked(sc, &auth).await;
    assert_eq!(browser.opened(), 1, "the stored bound token served the second run");
    assert!(auth.s().dpop_errors.is_empty(), "{:?}", auth.s().dpop_errors);
    let out = browser.run(vec!["status", "--state-dir", &state.to_string_lossy()]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DPoP key") && !text.contains(&key), "{text}");
}

#[tokio::test]
async fn two_processes_share_one_dpop_sign_in_and_its_key() {
    // The second sidecar waits on the first one's sign-in and must prove with the key the
    // stored token is bound to, not one of its own.
    let auth = AuthServer::start(|s| s.dpop = true).await;
    let server = auth.protect().await;
    let dir = temp_dir("dpop-two");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state");
    let mut a = sidecar(&server, &state, &browser, &[]);
    let mut b = sidecar(&server, &state, &browser, &[]);
    let (ra, rb) = tokio::join!(a.handshake(), b.handshake());
    assert!(ra.get("result").is_some() && rb.get("result").is_some());
    let (rb, ra) = tokio::join!(
        call(&mut b, 2, "echo", json!({"text": "b"})),
        call(&mut a, 2, "echo", json!({"text": "a"}))
    );
    assert!(ra.get("result").is_some() && rb.get("result").is_some(), "{ra} {rb}");
    assert_eq!(auth.authorizes(), 1, "one sign-in for both");
    assert!(auth.s().dpop_errors.is_empty(), "{:?}", auth.s().dpop_errors);
    finish_checked(a, &auth).await;
    finish_checked(b, &auth).await;
}

#[tokio::test]
async fn a_dpop_proof_a_server_echoes_is_never_shown() {
    // Proofs are new for every request, so they are not known secrets: they are redacted by
    // their shape, in the error and in the log.
    let auth = AuthServer::start(|s| {
        s.dpop = true;
        s.echo_proof = true;
    })
    .await;
    let server = auth.protect().await;
    let dir = temp_dir("dpop-echo");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &[]).secret("eyJ");
    let (r, msg) = refused(&mut sc).await;
    assert!(msg.contains("invalid_dpop_proof") && msg.contains("[redacted]"), "{r}");
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn an_absurd_device_interval_neither_crashes_nor_outlasts_the_auth_timeout() {
    // A hostile device endpoint: wait u64::MAX seconds between polls, then `slow_down` (which
    // adds 5 s to that). The login ends at --auth-timeout with the usual error, no panic.
    let auth = AuthServer::start(|s| {
        s.device_interval = Some(u64::MAX);
        s.device_script = vec!["slow_down", "slow_down", "slow_down"];
    })
    .await;
    let server = auth.protect().await;
    let dir = temp_dir("device-absurd");
    let state = dir.join("state").to_string_lossy().into_owned();
    let args = ["login", "--device", &server.url, "--state-dir", &state, "--auth-timeout", "1"];
    let out = command(&args, &[]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("device code expired") && !stderr.contains("panicked"), "{stderr}");
}

/// Issue 21.8: a machine grant's credential goes only to the authorization server first seen.
/// When the server's metadata later names another one (tampered, or a hostile 401), the grant is
/// refused with the fix, in the running process and in the next one (the pin is in the state
/// dir), and the other server never sees the secret.
#[tokio::test]
async fn client_credentials_are_pinned_to_the_first_authorization_server() {
    let configure = |s: &mut AsState| {
        s.auth_methods = Some(vec!["client_secret_post"]);
        s.client_secret = Some(("ci-9".into(), "cs-SECRET-pin".into()));
    };
    let auth = AuthServer::start(configure).await;
    let other = AuthServer::start(configure).await;
    let server = auth.protect().await;
    let dir = temp_dir("cc-pinned");
    let args = ["--auth", "client-credentials", "--client-id", "ci-9", "--client-secret-env", "CS"];
    let mut sc = spawn(&server, &dir, &args, &[("CS", "cs-SECRET-pin")]);
    sc.handshake().await;
    assert!(call(&mut sc, 2, "echo", json!({"text": "a"})).await.get("result").is_some());
    {
        let mut st = auth.s();
        st.prm_names = Some(other.s().base.clone());
        st.access.clear();
        st.revoked = true;
    }
    let r = call(&mut sc, 3, "echo", json!({"text": "b"})).await;
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not sent there") && message.contains("issuers"), "{r}");
    finish_checked(sc, &auth).await;
    let mut sc = spawn(&server, &dir, &args, &[("CS", "cs-SECRET-pin")]);
    let (r, message) = refused(&mut sc).await;
    assert!(message.contains("not sent there"), "{r}");
    finish_checked(sc, &auth).await;
    let seen = other.s();
    assert!(seen.tokens.is_empty(), "the other server saw nothing: {:?}", seen.tokens);
}

/// Issue 21.10: a redirect is not followed with a DPoP-bound token (the proof names the first
/// URL: the same proof sent on was refused, after two wasted refreshes); the client is told which
/// URL to use, and no token is asked for.
#[tokio::test]
async fn a_redirect_is_not_followed_with_a_dpop_bound_token() {
    let auth = AuthServer::start(|s| s.dpop = true).await;
    let server = auth.protect().await;
    let dir = temp_dir("dpop-redirect");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &[]);
    sc.handshake().await;
    let tokens = auth.s().tokens.len();
    auth.s().redirect_calls = true;
    let r = call(&mut sc, 2, "echo", json!({"text": "a"})).await;
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("DPoP-bound") && message.contains("/mcp/"), "{r}");
    assert_eq!(auth.s().tokens.len(), tokens, "no refresh wasted");
    assert!(auth.s().dpop_errors.is_empty(), "{:?}", auth.s().dpop_errors);
    finish_checked(sc, &auth).await;
}
