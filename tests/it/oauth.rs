//! OAuth 2.1 sign-in (issue 5, A-xx): the real binary against a real rmcp server that demands
//! Bearer tokens from an authorization server written for these tests (axum on 127.0.0.1:
//! metadata, registration, an authorize endpoint that approves at once with a 302, a token
//! endpoint that checks PKCE, refresh with rotation, revocation).
//!
//! The browser is `$BROWSER`: a bash script that prints noise (which must not reach stdout) and
//! hands the URL over a TCP socket to this process, where [`Browser`] plays the user agent: it
//! fetches the authorization URL, and follows the 302 into the sidecar's loopback listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

use crate::harness::*;

/// What the authorization server does and saw.
#[derive(Default)]
struct AsState {
    base: String,
    mcp: String,
    /// Advertise S256 (A-07).
    no_pkce: bool,
    /// `iss` in the authorization response: the right one, or this instead.
    wrong_iss: Option<String>,
    /// Issue refresh tokens.
    refresh: bool,
    /// Refuse every refresh token (revoked).
    revoked: bool,
    /// Answer the next token request with 429 Retry-After: 1.
    token_429: bool,
    /// `token_endpoint_auth_methods_supported` (default: none).
    auth_methods: Option<Vec<&'static str>>,
    /// `client_id_metadata_document_supported`.
    cimd: bool,
    /// The Authorization header of each token request.
    token_auth: Vec<Option<String>>,
    /// MCP requests refused with 401.
    rejected: usize,
    /// Refuse refreshes with an `error_description` that echoes the refresh token and the client
    /// secret (a hostile or careless server).
    echo_secrets: bool,
    /// The challenge names this server's `/prm` (another origin, plain http) instead of the MCP
    /// server's own; the MCP server then serves its PRM at the well-known location only.
    foreign_prm: bool,
    /// The authorization server the MCP server's PRM names, instead of this one.
    prm_names: Option<String>,
    /// Answer every tools/call with a 307 to `/mcp/` on the same origin.
    redirect_calls: bool,
    /// A 2025-03-26 server: no PRM; this server's metadata at the MCP origin's root, with an
    /// issuer under `/oauth` on that origin; the challenge is a bare `Bearer`.
    legacy_root: bool,
    /// Requests this server's `/prm` saw.
    prm_hits: usize,
    n: u64,
    /// code → (challenge, scope, resource)
    codes: HashMap<String, (String, String, String)>,
    /// Valid access tokens and their scope.
    access: HashMap<String, String>,
    refresh_tokens: HashMap<String, String>,
    authorizes: Vec<HashMap<String, String>>,
    tokens: Vec<HashMap<String, String>>,
    registrations: Vec<Value>,
    // Issue 14 (tests in `headless`):
    /// Advertise DPoP (ES256) and bind tokens to the key of the token request's proof.
    dpop: bool,
    /// The nonce the token endpoint (`as_nonce`) and the MCP server (`rs_nonce`) demand.
    as_nonce: Option<String>,
    rs_nonce: Option<String>,
    /// Access token → the thumbprint of the key it is bound to.
    bound: HashMap<String, String>,
    /// Every DPoP proof's jti (a replay is a failure), and what was wrong with bad proofs.
    jtis: Vec<String>,
    dpop_errors: Vec<String>,
    /// `use_dpop_nonce` challenges given by the token endpoint and by the MCP server.
    nonce_challenges: (usize, usize),
    /// Device flow: the answers to the polls before the token (`authorization_pending`, …).
    device_script: Vec<&'static str>,
    device_polls: Vec<std::time::Instant>,
    /// The device code's `interval` (default 1 s).
    device_interval: Option<u64>,
    /// Client credentials: the client and its secret.
    client_secret: Option<(String, String)>,
    /// private_key_jwt: the client's public key (PEM).
    client_key: Option<String>,
    /// JWT bearer: the assertions accepted (workload identity tokens).
    assertions: Vec<String>,
    /// Enterprise: the ID tokens the IdP exchanges, and the ID-JAGs it issued.
    id_tokens: Vec<String>,
    jags: Vec<String>,
    idp_requests: Vec<HashMap<String, String>>,
    /// `expires_in` of the tokens issued (default 3600).
    expires_in: Option<u64>,
    /// A hostile token endpoint: refuses with the DPoP proof echoed in its description.
    echo_proof: bool,
    // Issue 25.1, the identity providers' modes:
    /// Microsoft Entra: a `resource` on a token request is refused with AADSTS9010010.
    entra: bool,
    /// Amazon Cognito: tokens come with an ID token (for the openid scope), and the MCP server
    /// takes only ID tokens as the bearer.
    cognito: bool,
    /// The ID tokens issued (Cognito mode) and their scope.
    oidc: HashMap<String, String>,
    /// Issue 25.6: the MCP server's 401 sets a load balancer's cookie; requests that came to
    /// this (another origin) with any cookie.
    mcp_cookie: bool,
    cookies_here: usize,
}

type Shared = Arc<Mutex<AsState>>;

struct AuthServer {
    state: Shared,
    _ct: tokio_util::sync::CancellationToken,
}

impl AuthServer {
    async fn start(configure: impl FnOnce(&mut AsState)) -> AuthServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(AsState { base, refresh: true, ..AsState::default() }));
        configure(&mut state.lock().unwrap());
        let app = Router::new()
            .route("/.well-known/oauth-authorization-server", get(as_metadata))
            .route("/prm", get(prm))
            .route("/register", post(register))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/device", post(device))
            .route("/idp/token", post(idp_token))
            .layer(axum::middleware::from_fn_with_state(state.clone(), count_cookies))
            .with_state(state.clone());
        let ct = tokio_util::sync::CancellationToken::new();
        let stop = ct.clone();
        tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await.unwrap();
        });
        AuthServer { state, _ct: ct }
    }

    fn s(&self) -> std::sync::MutexGuard<'_, AsState> {
        self.state.lock().unwrap()
    }

    /// The MCP server, demanding tokens from this authorization server.
    async fn protect(&self) -> Server {
        let state = self.state.clone();
        let hook: Hook = Arc::new(move |s: &Seen| {
            let mut st = state.lock().unwrap();
            let origin = st.mcp.trim_end_matches("/mcp").to_owned();
            // The MCP server's own metadata documents, on its origin.
            let prm = json!({"resource": st.mcp, "authorization_servers": [st.prm_names.clone().unwrap_or(st.base.clone())],
                "scopes_supported": ["mcp:read"]});
            match s.path.as_str() {
                "/prm" if !st.foreign_prm && !st.legacy_root => {
                    return Action::Respond(respond(200, "application/json", prm.to_string()));
                }
                "/.well-known/oauth-protected-resource/mcp" if st.foreign_prm => {
                    return Action::Respond(respond(200, "application/json", prm.to_string()));
                }
                "/.well-known/oauth-authorization-server" if st.legacy_root => {
                    let b = &st.base;
                    let metadata = json!({"issuer": format!("{origin}/oauth"), "authorization_endpoint": format!("{b}/authorize"),
                        "token_endpoint": format!("{b}/token"), "registration_endpoint": format!("{b}/register"),
                        "code_challenge_methods_supported": ["S256"], "response_types_supported": ["code"]});
                    return Action::Respond(respond(200, "application/json", metadata.to_string()));
                }
                p if p.starts_with("/.well-known/") => {
                    return Action::Respond(respond(404, "text/plain", ""));
                }
                _ => {}
            }
            let presented = s.header("authorization").unwrap_or("");
            if st.redirect_calls && s.rpc_method() == Some("tools/call") && s.path == "/mcp" {
                return Action::Respond(
                    Response::builder()
                        .status(307)
                        .header("location", format!("{origin}/mcp/"))
                        .body(axum::body::Body::empty())
                        .unwrap(),
                );
            }
            // Issue 14: a bound token comes as `DPoP <token>` with a valid proof (RFC 9449 §7).
            if let Some((t, jkt)) = presented
                .split_once(' ')
                .and_then(|(_, t)| st.bound.get(t).map(|j| (t.to_owned(), j.clone())))
            {
                let htu = st.mcp.clone();
                let checked = verify_proof(&mut st, s.header("dpop"), s.method.as_str(), &htu, Some(&t));
                let refuse = |error: &str, nonce: Option<&str>| {
                    let mut r = Response::builder().status(401).header(
                        "www-authenticate",
                        format!("DPoP error=\"{error}\", resource_metadata=\"{origin}/prm\""),
                    );
                    if let Some(n) = nonce {
                        r = r.header("dpop-nonce", n);
                    }
                    Action::Respond(r.body(axum::body::Body::empty()).unwrap())
                };
                match checked {
                    Ok(_) if !presented.starts_with("DPoP ") => {
                        st.dpop_errors.push("a bound token sent as Bearer".into());
                        return refuse("invalid_token", None);
                    }
                    Ok((thumbprint, _)) if thumbprint != jkt => {
                        st.dpop_errors.push("proof of another key".into());
                        return refuse("invalid_token", None);
                    }
                    Ok((_, nonce)) => {
                        if let Some(want) = st.rs_nonce.clone()
                            && nonce.as_deref() != Some(want.as_str())
                        {
                            st.nonce_challenges.1 += 1;
                            return refuse("use_dpop_nonce", Some(&want));
                        }
                        return Action::Pass;
                    }
                    Err(e) => {
                        st.dpop_errors.push(e);
                        return refuse("invalid_dpop_proof", None);
                    }
                }
            }
            let token = s.header("authorization").and_then(|h| h.strip_prefix("Bearer "));
            let accepted = if st.cognito { &st.oidc } else { &st.access };
            if token.and_then(|t| accepted.get(t)).is_none() {
                st.rejected += 1;
            }
            let prm_at = if st.foreign_prm { format!("{}/prm", st.base) } else { format!("{origin}/prm") };
            let legacy = st.legacy_root;
            let challenge = |extra: &str| {
                if legacy {
                    return format!("Bearer{}", extra.trim_start_matches(','));
                }
                format!("Bearer resource_metadata=\"{prm_at}\", scope=\"mcp:read\"{extra}")
            };
            let token = s.header("authorization").and_then(|h| h.strip_prefix("Bearer "));
            let accepted = if st.cognito { &st.oidc } else { &st.access };
            match token.and_then(|t| accepted.get(t)) {
                None => {
                    let mut r = Response::builder()
                        .status(401)
                        .header("www-authenticate", challenge(", error=\"invalid_token\""));
                    if st.mcp_cookie {
                        r = r.header("set-cookie", "AWSALB=sticky-0123456789abcdef; Path=/");
                    }
                    Action::Respond(r.body(axum::body::Body::from("{\"error\":\"invalid_token\"}")).unwrap())
                }
                Some(scope)
                    if s.rpc_method() == Some("tools/call")
                        && s.json["params"]["name"] == "place_order"
                        && !scope.split(' ').any(|x| x == "mcp:write") =>
                {
                    Action::Respond(
                        Response::builder()
                            .status(403)
                            .header(
                                "www-authenticate",
                                format!(
                                    "Bearer error=\"insufficient_scope\", scope=\"mcp:write\", resource_metadata=\"{origin}/prm\""
                                ),
                            )
                            .body(axum::body::Body::empty())
                            .unwrap(),
                    )
                }
                // A careless server: a 500 whose body echoes the request's credentials.
                Some(_) if s.rpc_method() == Some("tools/call") && s.json["params"]["name"] == "leak" => {
                    let said = format!(
                        "cannot serve {} with tenant {}",
                        s.header("authorization").unwrap_or(""),
                        s.header("x-echo").unwrap_or("")
                    );
                    Action::Respond(respond(500, "application/json", json!({"error": {"message": said}}).to_string()))
                }
                Some(_) => Action::Pass,
            }
        });
        let server = Server::start(Options::default(), Some(hook)).await;
        self.s().mcp = server.url.clone();
        server
    }

    fn authorizes(&self) -> usize {
        self.s().authorizes.len()
    }
}

/// Issue 25.6: counts the requests that bring a cookie here.
async fn count_cookies(
    State(st): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.headers().contains_key("cookie") {
        st.lock().unwrap().cookies_here += 1;
    }
    next.run(request).await
}

async fn as_metadata(State(st): State<Shared>) -> Json<Value> {
    let st = st.lock().unwrap();
    let b = &st.base;
    let mut m = json!({
        "issuer": b,
        "authorization_endpoint": format!("{b}/authorize"),
        "token_endpoint": format!("{b}/token"),
        "registration_endpoint": format!("{b}/register"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": st.auth_methods.clone().unwrap_or(vec!["none"]),
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": st.cimd,
        "device_authorization_endpoint": format!("{b}/device"),
    });
    if st.dpop {
        m["dpop_signing_alg_values_supported"] = json!(["ES256"]);
    }
    if !st.no_pkce {
        m["code_challenge_methods_supported"] = json!(["S256"]);
    }
    Json(m)
}

async fn prm(State(st): State<Shared>) -> Json<Value> {
    let mut st = st.lock().unwrap();
    st.prm_hits += 1;
    Json(json!({"resource": st.mcp, "authorization_servers": [st.base], "scopes_supported": ["mcp:read"]}))
}

async fn register(State(st): State<Shared>, Json(body): Json<Value>) -> Response {
    let mut st = st.lock().unwrap();
    st.registrations.push(body.clone());
    st.n += 1;
    let id = format!("client-{}", st.n);
    (StatusCode::CREATED, Json(json!({"client_id": id, "redirect_uris": body["redirect_uris"], "token_endpoint_auth_method": "none"})))
        .into_response()
}

async fn authorize(State(st): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut st = st.lock().unwrap();
    st.authorizes.push(q.clone());
    st.n += 1;
    let code = format!("code-{}", st.n);
    let challenge = q.get("code_challenge").cloned().unwrap_or_default();
    let scope = q.get("scope").cloned().unwrap_or_default();
    let resource = q.get("resource").cloned().unwrap_or_default();
    st.codes.insert(code.clone(), (challenge, scope, resource));
    let iss = st.wrong_iss.clone().unwrap_or_else(|| st.base.clone());
    let mut to = url::Url::parse(&q["redirect_uri"]).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q["state"])
        .append_pair("iss", &iss);
    Response::builder().status(302).header("location", to.as_str()).body(axum::body::Body::empty()).unwrap()
}

async fn token(
    State(st): State<Shared>,
    headers: axum::http::HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let mut st = st.lock().unwrap();
    st.tokens.push(f.clone());
    st.token_auth.push(headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()));
    if std::mem::take(&mut st.token_429) {
        return Response::builder()
            .status(429)
            .header("retry-after", "1")
            .body(axum::body::Body::empty())
            .unwrap();
    }
    let bad = |e: &str| (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response();
    if st.entra && f.contains_key("resource") {
        let said = "AADSTS9010010: The resource parameter provided in the request doesn't match with the requested scopes. Trace ID: 0000";
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_target", "error_description": said})),
        )
            .into_response();
    }
    // RFC 9449 §5: a proof of the key the token will be bound to; a nonce first if demanded.
    let mut jkt = None;
    if st.dpop && st.echo_proof {
        let proof = headers.get("dpop").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let said = format!("proof {proof} is not accepted here");
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_dpop_proof", "error_description": said})),
        )
            .into_response();
    }
    if st.dpop {
        let htu = format!("{}/token", st.base);
        match verify_proof(&mut st, headers.get("dpop").and_then(|v| v.to_str().ok()), "POST", &htu, None) {
            Ok((thumbprint, nonce)) => {
                if let Some(want) = st.as_nonce.clone()
                    && nonce.as_deref() != Some(want.as_str())
                {
                    st.nonce_challenges.0 += 1;
                    return Response::builder()
                        .status(400)
                        .header("dpop-nonce", want)
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(r#"{"error":"use_dpop_nonce"}"#))
                        .unwrap();
                }
                jkt = Some(thumbprint);
            }
            Err(e) => {
                st.dpop_errors.push(e);
                return bad("invalid_dpop_proof");
            }
        }
    }
    let invalid_client = || {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client", "error_description": "client authentication failed"})),
        )
            .into_response()
    };
    let grant = f.get("grant_type").cloned().unwrap_or_default();
    let scope = match grant.as_str() {
        "client_credentials" => {
            let auth = st.token_auth.last().cloned().flatten();
            if !client_authenticated(&st, &f, auth.as_deref()) {
                return invalid_client();
            }
            f.get("scope").cloned().unwrap_or_default()
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let assertion = f.get("assertion").cloned().unwrap_or_default();
            if let Some(i) = st.jags.iter().position(|j| *j == assertion) {
                // Enterprise: the ID-JAG, once, from the client it names.
                let auth = st.token_auth.last().cloned().flatten();
                if !client_authenticated(&st, &f, auth.as_deref()) {
                    return invalid_client();
                }
                st.jags.remove(i);
            } else if !st.assertions.contains(&assertion) {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "invalid_grant", "error_description": "the assertion is expired"})),
                )
                    .into_response();
            }
            f.get("scope").cloned().unwrap_or_default()
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            st.device_polls.push(std::time::Instant::now());
            if f.get("device_code").map(String::as_str) != Some("dc-SECRET-1") {
                return bad("invalid_grant");
            }
            if !st.device_script.is_empty() {
                let e = st.device_script.remove(0);
                return bad(e);
            }
            f.get("scope").cloned().unwrap_or_default()
        }
        "authorization_code" => {
            let Some((challenge, scope, resource)) = f.get("code").and_then(|c| st.codes.remove(c)) else {
                return bad("invalid_grant");
            };
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            let computed =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if computed != challenge || f.get("resource").cloned().unwrap_or_default() != resource {
                return bad("invalid_grant");
            }
            scope
        }
        "refresh_token" => {
            if st.revoked {
                return bad("invalid_grant");
            }
            if st.echo_secrets {
                let said = format!(
                    "refresh token {} with client secret {} is not accepted",
                    f.get("refresh_token").map_or("", String::as_str),
                    f.get("client_secret").map_or("", String::as_str)
                );
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "invalid_request", "error_description": said})),
                )
                    .into_response();
            }
            match f.get("refresh_token").and_then(|r| st.refresh_tokens.remove(r)) {
                Some(scope) => scope,
                None => return bad("invalid_grant"),
            }
        }
        _ => return bad("unsupported_grant_type"),
    };
    st.n += 1;
    let access = format!("at-SECRET-{}", st.n);
    st.access.insert(access.clone(), scope.clone());
    let token_type = match jkt {
        Some(jkt) => {
            st.bound.insert(access.clone(), jkt);
            "DPoP"
        }
        None => "Bearer",
    };
    let expires_in = st.expires_in.unwrap_or(3600);
    let mut body =
        json!({"access_token": access, "token_type": token_type, "expires_in": expires_in, "scope": scope});
    let for_a_person = matches!(
        grant.as_str(),
        "authorization_code" | "refresh_token" | "urn:ietf:params:oauth:grant-type:device_code"
    );
    if st.cognito && for_a_person && scope.split(' ').any(|s| s == "openid") {
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        let claims = json!({"sub": "user", "exp": exp, "n": st.n});
        let id_token = format!("{}.{}.SECRET-sig", b64(json!({"alg": "RS256"})), b64(claims));
        st.oidc.insert(id_token.clone(), scope.clone());
        body["id_token"] = json!(id_token);
    }
    if st.refresh && for_a_person {
        let rt = format!("rt-SECRET-{}", st.n);
        st.refresh_tokens.insert(rt.clone(), scope);
        body["refresh_token"] = json!(rt);
    }
    Json(body).into_response()
}

/// Client authentication at the token endpoint: the secret (Basic or in the body) or a signed
/// assertion (`private_key_jwt`: iss and sub the client, aud this issuer).
fn client_authenticated(st: &AsState, f: &HashMap<String, String>, basic: Option<&str>) -> bool {
    if let Some(pem) = &st.client_key {
        let Some(assertion) = f.get("client_assertion") else { return false };
        if f.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return false;
        }
        let key = jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&[&st.base]);
        let Ok(data) = jsonwebtoken::decode::<Value>(assertion, &key, &v) else { return false };
        let id = f.get("client_id").cloned().unwrap_or_default();
        return data.claims["iss"] == id.as_str() && data.claims["sub"] == id.as_str();
    }
    let Some((id, secret)) = &st.client_secret else { return true };
    let post = f.get("client_id") == Some(id) && f.get("client_secret") == Some(secret);
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    post || basic == Some(format!("Basic {expected}").as_str())
}

/// RFC 9449 §4.3: checks a DPoP proof; its key's thumbprint and its nonce.
fn verify_proof(
    st: &mut AsState,
    proof: Option<&str>,
    htm: &str,
    htu: &str,
    token: Option<&str>,
) -> Result<(String, Option<String>), String> {
    use jsonwebtoken::jwk::ThumbprintHash;
    let proof = proof.ok_or("no DPoP proof")?;
    let header = jsonwebtoken::decode_header(proof).map_err(|e| e.to_string())?;
    if header.typ.as_deref() != Some("dpop+jwt") {
        return Err(format!("typ {:?}", header.typ));
    }
    let jwk = header.jwk.ok_or("no jwk")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(proof, &key, &v).map_err(|e| e.to_string())?.claims;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let jti = claims["jti"].as_str().ok_or("no jti")?.to_owned();
    if st.jtis.contains(&jti) {
        return Err("a replayed jti".into());
    }
    st.jtis.push(jti);
    if claims["htm"] != htm
        || claims["htu"] != htu
        || claims["iat"].as_u64().is_none_or(|i| i.abs_diff(now) > 60)
    {
        return Err(format!("htm/htu/iat: {claims}"));
    }
    if let Some(token) = token {
        let ath = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
        if claims["ath"] != ath.as_str() {
            return Err("ath".into());
        }
    }
    let thumbprint = jwk.thumbprint(ThumbprintHash::SHA256).map_err(|e| e.to_string())?;
    Ok((thumbprint, claims["nonce"].as_str().map(str::to_owned)))
}

/// RFC 8628 §3.2: one device code.
async fn device(State(st): State<Shared>, Form(f): Form<HashMap<String, String>>) -> Response {
    let st = st.lock().unwrap();
    let b = &st.base;
    assert!(f.contains_key("client_id"), "{f:?}");
    Json(json!({"device_code": "dc-SECRET-1", "user_code": "WDJB-MJHT", "verification_uri": format!("{b}/verify"),
        "verification_uri_complete": format!("{b}/verify?user_code=WDJB-MJHT"), "expires_in": 600,
        "interval": st.device_interval.unwrap_or(1)}))
    .into_response()
}

/// The enterprise IdP's token exchange (RFC 8693): an ID token for an ID-JAG.
async fn idp_token(State(st): State<Shared>, Form(f): Form<HashMap<String, String>>) -> Response {
    let mut st = st.lock().unwrap();
    st.idp_requests.push(f.clone());
    let ok = f.get("grant_type").map(String::as_str)
        == Some("urn:ietf:params:oauth:grant-type:token-exchange")
        && f.get("requested_token_type").map(String::as_str)
            == Some("urn:ietf:params:oauth:token-type:id-jag")
        && f.get("subject_token_type").map(String::as_str)
            == Some("urn:ietf:params:oauth:token-type:id_token")
        && f.get("audience") == Some(&st.base)
        && f.get("resource") == Some(&st.mcp)
        && f.get("subject_token").is_some_and(|t| st.id_tokens.contains(t));
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "the ID token is not valid"})),
        )
            .into_response();
    }
    st.n += 1;
    let jag = format!("jag-SECRET-{}", st.n);
    st.jags.push(jag.clone());
    Json(json!({"access_token": jag, "issued_token_type": "urn:ietf:params:oauth:token-type:id-jag", "token_type": "N_A"}))
        .into_response()
}

/// The `$BROWSER` stand-in.
struct Browser {
    script: String,
    opened: Arc<Mutex<Vec<String>>>,
    /// `Agent::Held`: one permit per sign-in the person finishes.
    finish: Arc<tokio::sync::Semaphore>,
}

/// What the user agent does with a callback.
#[derive(Clone, Copy, PartialEq)]
enum Agent {
    /// Follows the redirect.
    Follow,
    /// First sends a callback with a forged state, then follows.
    ForgedFirst,
    /// Never answers (the user walked away).
    Ignore,
    /// Follows once the test lets the person finish ([`Browser::finish_one`]).
    Held,
}

impl Browser {
    async fn start(dir: &std::path::Path, agent: Agent) -> Browser {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        std::fs::create_dir_all(dir).unwrap();
        let script = dir.join("browser.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/bash\necho BROWSER-NOISE-STDOUT\necho BROWSER-NOISE-STDERR >&2\nexec 3<>/dev/tcp/127.0.0.1/{port}\nprintf '%s\\n' \"$1\" >&3\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let opened = Arc::new(Mutex::new(Vec::new()));
        let log = opened.clone();
        let finish = Arc::new(tokio::sync::Semaphore::new(0));
        let may_finish = finish.clone();
        tokio::spawn(async move {
            let http =
                reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let mut line = String::new();
                BufReader::new(stream).read_line(&mut line).await.unwrap();
                let url = line.trim().to_owned();
                log.lock().unwrap().push(url.clone());
                let http = http.clone();
                if agent == Agent::Ignore {
                    continue;
                }
                let may_finish = may_finish.clone();
                tokio::spawn(async move {
                    if agent == Agent::Held {
                        may_finish.acquire().await.unwrap().forget();
                    }
                    let r = http.get(&url).send().await.unwrap();
                    let Some(location) = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned())
                    else {
                        return;
                    };
                    if agent == Agent::ForgedFirst {
                        let mut forged = url::Url::parse(&location).unwrap();
                        let pairs: Vec<(String, String)> = forged
                            .query_pairs()
                            .map(|(k, v)| {
                                let forged = k == "state";
                                (k.into_owned(), if forged { "forged".into() } else { v.into_owned() })
                            })
                            .collect();
                        forged.query_pairs_mut().clear().extend_pairs(pairs);
                        let page = http.get(forged.as_str()).send().await.unwrap();
                        assert_eq!(page.status(), 400, "a callback with a forged state is refused");
                    }
                    let page = http.get(&location).send().await.unwrap();
                    let status = page.status();
                    let text = page.text().await.unwrap();
                    assert!(status.is_success() && text.contains("close this tab"), "{status} {text}");
                });
            }
        });
        Browser { script: script.to_string_lossy().into_owned(), opened, finish }
    }

    /// `Agent::Held`: the person finishes one sign-in (now, or the next one when it opens).
    fn finish_one(&self) {
        self.finish.add_permits(1);
    }

    /// Runs `mcp-sidecar ARGS` (a command, not the proxy) with this browser, to completion.
    fn run(
        &self,
        args: Vec<&str>,
    ) -> impl std::future::Future<Output = std::io::Result<std::process::Output>> {
        let mut cmd = command(&args, &[("BROWSER", &self.script)]);
        cmd.stdin(std::process::Stdio::null());
        async move { cmd.output().await }
    }

    fn opened(&self) -> usize {
        self.opened.lock().unwrap().len()
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mcp-sidecar-oauth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A sidecar with no key: OAuth when the server asks.
fn sidecar(server: &Server, state: &std::path::Path, browser: &Browser, extra: &[&str]) -> Sidecar {
    let state = state.to_string_lossy().into_owned();
    let mut args = vec![server.url.as_str(), "--state-dir", &state];
    args.extend_from_slice(extra);
    Sidecar::spawn(&args, &[("BROWSER", &browser.script)])
}

async fn call(sc: &mut Sidecar, id: u64, tool: &str, args: Value) -> Value {
    sc.send_json(
        &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}}),
    )
    .await;
    sc.recv().await
}

fn tokens_issued(auth: &AuthServer) -> Vec<String> {
    let st = auth.s();
    st.access.keys().chain(st.refresh_tokens.keys()).chain(st.oidc.keys()).cloned().collect()
}

async fn finish_checked(sc: Sidecar, auth: &AuthServer) -> Outcome {
    let mut sc = sc;
    for t in tokens_issued(auth) {
        sc = sc.secret(&t);
    }
    let out = sc.finish().await;
    assert!(!out.stdout.contains("BROWSER-NOISE"), "the browser's output reached stdout");
    out
}

// Issue 14: the grants without a browser, against this authorization server.
mod headless;

#[tokio::test]
async fn a5_full_flow_signs_in_once_and_the_next_run_uses_the_stored_token() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("full");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state");

    let mut sc = sidecar(&server, &state, &browser, &[]);
    sc.handshake().await;
    let r = call(&mut sc, 1, "echo", json!({"text":"hi"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "hi", "{r}");
    finish_checked(sc, &auth).await;

    {
        let st = auth.s();
        assert_eq!((st.registrations.len(), st.authorizes.len()), (1, 1));
        let reg = &st.registrations[0];
        assert_eq!(reg["application_type"], "native", "A-22 (2026-07-28)");
        assert!(reg["grant_types"].as_array().unwrap().contains(&json!("refresh_token")), "A-13");
        let a = &st.authorizes[0];
        assert_eq!(a["code_challenge_method"], "S256", "A-30");
        assert_eq!(a["response_type"], "code");
        assert_eq!(a["scope"], "mcp:read", "A-11: the challenge's scope");
        assert_eq!(a["resource"], server.url, "A-33: resource on the authorization request");
        assert!(a["redirect_uri"].starts_with("http://127.0.0.1:"), "A-31 loopback IP literal");
        let t = &st.tokens[0];
        assert_eq!(t["resource"], server.url, "A-33: resource on the token request");
        assert!(t.contains_key("code_verifier"), "A-34");
    }
    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let files: Vec<_> = std::fs::read_dir(state.join("tokens")).unwrap().map(|e| e.unwrap().path()).collect();
    let json = files.iter().find(|p| p.extension().is_some_and(|e| e == "json")).unwrap();
    assert_eq!(std::fs::metadata(json).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(state.join("tokens")).unwrap().permissions().mode() & 0o777, 0o700);

    // Next run: the stored token, no browser.
    let mut sc = sidecar(&server, &state, &browser, &[]);
    sc.handshake().await;
    finish_checked(sc, &auth).await;
    assert_eq!(auth.authorizes(), 1);
    assert_eq!(browser.opened(), 1);
}

#[tokio::test]
async fn a42_a_refused_token_is_refreshed_and_a_revoked_refresh_token_means_one_new_sign_in() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("refresh");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state");
    let mut sc = sidecar(&server, &state, &browser, &[]);
    sc.handshake().await;
    assert_eq!(auth.authorizes(), 1);

    // The access token stops working: refreshed, with resource, and the refresh token rotates.
    auth.s().access.clear();
    let r = call(&mut sc, 1, "echo", json!({"text":"after refresh"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "after refresh", "{r}");
    {
        let st = auth.s();
        let last = st.tokens.last().unwrap();
        assert_eq!(last["grant_type"], "refresh_token");
        assert_eq!(last["resource"], server.url);
        assert_eq!(st.authorizes.len(), 1, "no browser for a refresh");
    }
    // The rotated refresh token is the one stored: refreshing again works.
    auth.s().access.clear();
    let r = call(&mut sc, 2, "echo", json!({"text":"again"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "again", "{r}");

    // Revoked: one new sign-in, not a loop.
    {
        let mut st = auth.s();
        st.access.clear();
        st.revoked = true;
    }
    let r = call(&mut sc, 3, "echo", json!({"text":"signed in again"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "signed in again", "{r}");
    assert_eq!(auth.authorizes(), 2);
    let out = finish_checked(sc, &auth).await;
    assert!(out.stderr.contains("no longer accepts the refresh token"), "{}", out.stderr);
}

#[tokio::test]
async fn a12_insufficient_scope_steps_up_with_the_union_of_scopes() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("stepup");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &[]);
    sc.handshake().await;
    let r = call(&mut sc, 1, "place_order", json!({"symbol":"ACME","quantity":1})).await;
    assert!(r.get("result").is_some(), "{r}");
    let scopes: Vec<String> = auth.s().authorizes.iter().map(|a| a["scope"].clone()).collect();
    assert_eq!(scopes, ["mcp:read", "mcp:read mcp:write"]);
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn a30_a_forged_state_is_refused_and_the_real_callback_still_completes() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("state");
    let browser = Browser::start(&dir, Agent::ForgedFirst).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &[]);
    sc.handshake().await;
    assert_eq!(auth.s().tokens.len(), 1, "only the real code was redeemed");
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn a32_a_wrong_iss_is_refused_before_the_code_is_used() {
    let auth = AuthServer::start(|s| s.wrong_iss = Some("http://evil.example".into())).await;
    let server = auth.protect().await;
    let dir = temp_dir("iss");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &[]);
    sc.send(r#"{"jsonrpc":"2.0","id":7,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"it","version":"1"}}}"#).await;
    let r = sc.recv().await;
    assert_eq!(r["id"], 7);
    assert_eq!(r["error"]["code"], -32003, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("evil.example") && msg.contains("not used"), "{msg}");
    assert!(auth.s().tokens.is_empty(), "the code was never redeemed");
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn a07_no_pkce_no_sign_in() {
    let auth = AuthServer::start(|s| s.no_pkce = true).await;
    let server = auth.protect().await;
    let dir = temp_dir("pkce");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &["--log-level", "debug"]);
    sc.send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"it","version":"1"}}}"#).await;
    let r = sc.recv().await;
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("PKCE") && msg.contains("refusing"), "{msg}");
    assert_eq!(auth.authorizes(), 0);
    assert_eq!(browser.opened(), 0);
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn a5_two_processes_starting_at_once_share_one_sign_in() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("two");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state");
    let mut a = sidecar(&server, &state, &browser, &[]);
    let mut b = sidecar(&server, &state, &browser, &[]);
    let (ra, rb) = tokio::join!(a.handshake(), b.handshake());
    assert!(ra.get("result").is_some() && rb.get("result").is_some());
    assert_eq!(auth.authorizes(), 1, "one browser flow for both");
    assert_eq!(browser.opened(), 1);
    finish_checked(a, &auth).await;
    finish_checked(b, &auth).await;
}

#[tokio::test]
async fn r_token_endpoint_429_is_waited_out() {
    let auth = AuthServer::start(|s| s.token_429 = true).await;
    let server = auth.protect().await;
    let dir = temp_dir("429");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &[]);
    sc.handshake().await;
    assert_eq!(auth.s().tokens.len(), 2, "the 429 and the retry");
    let out = finish_checked(sc, &auth).await;
    assert!(out.stderr.contains("rate limited; waiting"), "{}", out.stderr);
}

#[tokio::test]
async fn login_status_logout() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("login");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state").to_string_lossy().into_owned();
    let out = browser.run(vec!["login", &server.url, "--state-dir", &state]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("signed in to") && stderr.contains("http://127.0.0.1"), "{stderr}");
    assert!(out.stdout.is_empty(), "login prints nothing on stdout (the browser's noise included)");

    let out = browser.run(vec!["status", "--state-dir", &state]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&server.url) && text.contains("client-1") && text.contains("mcp:read"), "{text}");
    assert!(text.contains("refresh token") && !text.contains("SECRET"), "no token in status: {text}");

    // A proxy started after login needs no browser.
    let mut sc = sidecar(&server, std::path::Path::new(&state), &browser, &[]);
    sc.handshake().await;
    finish_checked(sc, &auth).await;
    assert_eq!(browser.opened(), 1);

    let out = browser.run(vec!["logout", &server.url, "--state-dir", &state]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("signed out"));
    let out = browser.run(vec!["status", &server.url, "--state-dir", &state]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("not signed in"));
}

#[tokio::test]
async fn auth_none_reports_the_401_without_a_sign_in() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("none");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &["--auth", "none"]);
    sc.send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"it","version":"1"}}}"#).await;
    let r = sc.recv().await;
    assert_eq!(r["error"]["data"]["httpStatus"], 401, "{r}");
    assert_eq!(browser.opened(), 0);
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn a22_a_pre_registered_client_authenticates_with_its_secret_from_the_environment() {
    let auth =
        AuthServer::start(|s| s.auth_methods = Some(vec!["client_secret_basic", "client_secret_post"])).await;
    let server = auth.protect().await;
    let dir = temp_dir("prereg");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state").to_string_lossy().into_owned();
    let secret = "cs-SECRET-pre";
    let args =
        [server.url.as_str(), "--state-dir", &state, "--client-id", "pre-1", "--client-secret-env", "CS"];
    let mut sc = Sidecar::spawn(&args, &[("BROWSER", &browser.script), ("CS", secret)]).secret(secret);
    sc.handshake().await;
    {
        let st = auth.s();
        assert!(st.registrations.is_empty(), "A-20: a pre-registered client is not registered again");
        assert_eq!(st.authorizes[0]["client_id"], "pre-1");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("pre-1:{secret}"));
        assert_eq!(
            st.token_auth[0].as_deref(),
            Some(format!("Basic {basic}").as_str()),
            "A-22 client_secret_basic"
        );
        assert!(!st.tokens[0].contains_key("client_secret"), "the secret travels once, in the header");
    }
    finish_checked(sc, &auth).await;
    // The secret stays in its variable: never in the token file.
    for f in std::fs::read_dir(dir.join("state/tokens")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(!text.contains(secret));
    }
}

#[tokio::test]
async fn a21_a_client_metadata_document_url_is_the_client_id() {
    let auth = AuthServer::start(|s| s.cimd = true).await;
    let server = auth.protect().await;
    let dir = temp_dir("cimd");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let cimd = "https://client.example/mcp-sidecar.json";
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &["--client-metadata-url", cimd]);
    sc.handshake().await;
    assert!(auth.s().registrations.is_empty());
    assert_eq!(auth.s().authorizes[0]["client_id"], cimd);
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn a_sign_in_nobody_finishes_ends_at_auth_timeout_on_the_callback_port() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("timeout");
    let browser = Browser::start(&dir, Agent::Ignore).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port_arg = port.to_string();
    let extra = ["--auth-timeout", "1", "--callback-port", &port_arg];
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &extra);
    sc.send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"it","version":"1"}}}"#).await;
    let r = sc.recv().await;
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("--auth-timeout") && msg.contains("mcp-sidecar login"), "{msg}");
    let opened = browser.opened.lock().unwrap().clone();
    let redirect = format!("redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2Fcallback");
    assert!(opened[0].contains(&redirect), "{}", opened[0]);
    let out = finish_checked(sc, &auth).await;
    assert!(out.stderr.contains("sign in") && out.stderr.contains("/authorize?"), "the URL is on stderr too");
}

#[tokio::test]
async fn a42_a_token_about_to_expire_is_refreshed_before_it_is_sent() {
    let (auth, server, _dir, browser, state) = signed_in("ahead").await;
    // The stored token now has 10 s of its hour left.
    expire_stored_token(&state);
    let rejected = auth.s().rejected;

    let mut sc = sidecar(&server, &state, &browser, &[]);
    sc.handshake().await;
    assert_eq!(auth.s().tokens.last().unwrap()["grant_type"], "refresh_token");
    assert_eq!(auth.s().rejected, rejected, "refreshed before use: the server refused nothing");
    finish_checked(sc, &auth).await;
}

#[tokio::test]
async fn check_reports_a_needed_sign_in_without_opening_a_browser_and_passes_after_login() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("check");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state").to_string_lossy().into_owned();
    let out = browser.run(vec!["check", &server.url, "--state-dir", &state]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("needs a sign-in") && stdout.contains("mcp-sidecar login"), "{stdout}");
    assert_eq!(browser.opened(), 0, "check never opens a browser");

    assert!(browser.run(vec!["login", &server.url, "--state-dir", &state]).await.unwrap().status.success());
    let out = browser.run(vec!["check", &server.url, "--state-dir", &state]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("SECRET"), "{stdout}");
    assert!(stdout.contains("OAuth: signed in"), "{stdout}");
}

#[tokio::test]
async fn a_script_is_told_to_log_in_first_instead_of_getting_a_browser() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("script");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state").to_string_lossy().into_owned();
    let out = browser.run(vec!["tools", "--url", &server.url, "--state-dir", &state]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("mcp-sidecar login"), "{stderr}");
    assert_eq!(browser.opened(), 0);
    assert!(browser.run(vec!["login", &server.url, "--state-dir", &state]).await.unwrap().status.success());
    let out = browser.run(vec!["tools", "--url", &server.url, "--state-dir", &state]).await.unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("echo"));
}

/// Issue 10.7: with a proxy in the environment, every request to loopback (the MCP server, its
/// metadata, registration, token endpoint) still goes straight there, never through the proxy
/// (here a dead one: anything sent through it would fail).
#[tokio::test]
async fn loopback_sign_in_never_goes_through_a_proxy() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("proxy");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state").to_string_lossy().into_owned();
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    // (The harness's NO_PROXY would exempt loopback anyway: cleared.)
    let env = [
        ("BROWSER", browser.script.as_str()),
        ("HTTP_PROXY", &proxy),
        ("HTTPS_PROXY", &proxy),
        ("NO_PROXY", ""),
    ];
    let mut sc = Sidecar::spawn(&[&server.url, "--state-dir", &state], &env);
    sc.handshake().await;
    let r = call(&mut sc, 1, "echo", json!({"text":"direct"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "direct", "{r}");
    finish_checked(sc, &auth).await;
    assert_eq!(auth.authorizes(), 1);
}

/// Issue 10.9: redaction used to cover only the API key. A server that echoes the OAuth access
/// token, a `${VAR}` header value, the refresh token or the client secret into an error body or
/// an `error_description` must not get any of them into an error, `data.serverBody` or a log.
#[tokio::test]
async fn secrets_a_server_echoes_are_redacted_everywhere() {
    let auth = AuthServer::start(|s| s.auth_methods = Some(vec!["client_secret_post"])).await;
    let server = auth.protect().await;
    let dir = temp_dir("echo");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state").to_string_lossy().into_owned();
    let (header_value, client_secret) = ("hdr-SECRET-tenant-7f3a", "cs-SECRET-client-91b2");
    let env = [("BROWSER", browser.script.as_str()), ("ECHO_SECRET", header_value), ("CS", client_secret)];
    let args = [
        server.url.as_str(),
        "--state-dir",
        &state,
        "--header",
        "X-Echo: ${ECHO_SECRET}",
        "--client-id",
        "pre-registered",
        "--client-secret-env",
        "CS",
        "-v",
    ];
    let mut sc = Sidecar::spawn(&args, &env).secret(header_value).secret(client_secret);
    sc.handshake().await;
    let r = call(&mut sc, 1, "leak", json!({})).await;
    let shown = r.to_string();
    assert!(shown.contains("[redacted]"), "{shown}");
    assert_eq!(r["error"]["data"]["kind"], "server_error", "{r}");
    // The token stops working; the refresh is refused with the secrets echoed back.
    {
        let mut st = auth.s();
        st.access.clear();
        st.echo_secrets = true;
    }
    let r = call(&mut sc, 2, "echo", json!({"text": "x"})).await;
    assert!(r["error"].is_object(), "{r}");
    assert!(r.to_string().contains("[redacted]"), "{r}");
    // Every token issued, the header value and the client secret: nowhere in stdout or stderr.
    let out = finish_checked(sc, &auth).await;
    assert!(out.stderr.contains("[redacted]"), "the log lines were redacted too:\n{}", out.stderr);
}

/// Issue 10.11: a challenge's `resource_metadata` that is neither on the MCP server's origin
/// nor https (here: another port of 127.0.0.1) is not fetched (a blind request to a local
/// service); the well-known location on the server's own origin is used instead.
#[tokio::test]
async fn a_resource_metadata_url_off_origin_and_not_https_is_not_fetched() {
    let auth = AuthServer::start(|s| s.foreign_prm = true).await;
    let server = auth.protect().await;
    let dir = temp_dir("foreign-prm");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &[]);
    sc.handshake().await;
    let r = call(&mut sc, 1, "echo", json!({"text":"ok"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "ok", "{r}");
    let out = finish_checked(sc, &auth).await;
    assert_eq!(auth.s().prm_hits, 0, "the off-origin http URL was never requested");
    assert!(out.stderr.contains("neither on its own origin nor https"), "{}", out.stderr);
}

/// Issue 10.11: a pre-registered client's secret was sent to whatever token endpoint discovery
/// found. The issuer of the first sign-in is pinned: when the server later names another
/// authorization server, the sign-in is refused with the fix, and the new server never sees
/// the client or its secret.
#[tokio::test]
async fn a_pre_registered_client_is_pinned_to_its_first_issuer() {
    let auth = AuthServer::start(|s| s.auth_methods = Some(vec!["client_secret_post"])).await;
    let other = AuthServer::start(|s| s.auth_methods = Some(vec!["client_secret_post"])).await;
    let server = auth.protect().await;
    let dir = temp_dir("pinned");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state").to_string_lossy().into_owned();
    let secret = "cs-SECRET-pinned-4411";
    let args =
        [server.url.as_str(), "--state-dir", &state, "--client-id", "pre-1", "--client-secret-env", "CS"];
    let mut sc =
        Sidecar::spawn(&args, &[("BROWSER", browser.script.as_str()), ("CS", secret)]).secret(secret);
    sc.handshake().await;
    assert_eq!(call(&mut sc, 1, "echo", json!({"text":"a"})).await["result"]["content"][0]["text"], "a");
    // The server now names another authorization server, and the old grant is gone.
    let other_base = other.s().base.clone();
    {
        let mut st = auth.s();
        st.prm_names = Some(other_base.clone());
        st.access.clear();
        st.revoked = true;
    }
    let r = call(&mut sc, 2, "echo", json!({"text":"b"})).await;
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not sent there") && message.contains("mcp-sidecar logout"), "{r}");
    finish_checked(sc, &auth).await;
    let seen = other.s();
    assert!(seen.tokens.is_empty() && seen.authorizes.is_empty(), "the new server saw nothing");
}

/// Issue 10.11: the 2025-03-26 fallback (no protected-resource metadata; the metadata at the
/// MCP origin's root) accepts an issuer with a path on that same origin, with a warning.
#[tokio::test]
async fn a_2025_03_26_server_with_an_issuer_path_on_its_origin_is_accepted() {
    let auth = AuthServer::start(|s| s.legacy_root = true).await;
    let server = auth.protect().await;
    let origin = server.url.trim_end_matches("/mcp").to_owned();
    auth.s().wrong_iss = Some(format!("{origin}/oauth")); // the authorization response names it
    let dir = temp_dir("legacy-root");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &[]);
    sc.handshake().await;
    let r = call(&mut sc, 1, "echo", json!({"text":"old"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "old", "{r}");
    let out = finish_checked(sc, &auth).await;
    assert!(out.stderr.contains("on the same origin"), "{}", out.stderr);
}

/// The token file stored under `state`.
fn token_file(state: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(state.join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap()
}

/// Takes the entry's lock of the token file `file`, as another process renewing it would.
fn hold_entry_lock(file: &std::path::Path) -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(file.with_extension("lock"))
        .unwrap();
    lock.try_lock().expect("the test takes the lock");
    lock
}

/// A server behind an authorization server, signed in once through a browser that follows:
/// the tokens are stored under `dir/state`.
async fn signed_in(name: &str) -> (AuthServer, Server, std::path::PathBuf, Browser, std::path::PathBuf) {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir(name);
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state");
    let mut sc = sidecar(&server, &state, &browser, &[]);
    sc.handshake().await;
    finish_checked(sc, &auth).await;
    (auth, server, dir, browser, state)
}

/// Leaves the token stored under `state` 10 s of its hour; returns its file.
fn expire_stored_token(state: &std::path::Path) -> std::path::PathBuf {
    let file = token_file(state);
    let mut entry: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    entry["tokens"]["expires_at"] = json!(now + 10);
    entry["tokens"]["issued_at"] = json!(now + 10 - 3600);
    std::fs::write(&file, entry.to_string()).unwrap();
    file
}

/// Issue 21.9: while another process holds the sign-in lock (a `login` waiting for a browser, or
/// a process stopped while holding it), a refresh ahead of expiry does not wait for it: the
/// token in hand is still valid and is used. It used to block every request on the lock.
#[tokio::test]
async fn a_refresh_ahead_does_not_wait_for_another_process_s_sign_in() {
    let (auth, server, _dir, browser, state) = signed_in("ahead-locked").await;
    let file = expire_stored_token(&state);
    // Another process's renewal holds the lock.
    let lock = hold_entry_lock(&file);
    let tokens = auth.s().tokens.len();
    let mut sc = sidecar(&server, &state, &browser, &[]);
    sc.handshake_within(std::time::Duration::from_secs(10)).await;
    assert_eq!(call(&mut sc, 1, "echo", json!({"text": "ok"})).await["result"]["content"][0]["text"], "ok");
    assert_eq!(auth.s().tokens.len(), tokens, "no refresh while the lock is held");
    finish_checked(sc, &auth).await;
    drop(lock);
}

/// Issue 21.9: a `login` waiting for its browser holds only the sign-in lock: a sidecar whose
/// token the server refuses refreshes it at once (it used to wait for the lock, up to a minute,
/// and then fail the request), and the login's browser wait goes on undisturbed.
#[tokio::test]
async fn a_refresh_does_not_wait_for_a_login_waiting_for_its_browser() {
    let (auth, server, dir, browser, state) = signed_in("refresh-during-login").await;
    // A `login` whose user walked away from the browser.
    let away = Browser::start(&dir.join("away"), Agent::Ignore).await;
    let state_arg = state.to_string_lossy().into_owned();
    let mut login = command(&["login", &server.url, "--state-dir", &state_arg], &[("BROWSER", &away.script)])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until("login opens its browser", || away.opened() == 1).await;
    auth.s().access.clear();
    let mut sc = sidecar(&server, &state, &browser, &[]);
    sc.handshake().await;
    let r = call(&mut sc, 1, "echo", json!({"text": "refreshed"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "refreshed", "{r}");
    assert_eq!(auth.s().tokens.last().unwrap()["grant_type"], "refresh_token");
    finish_checked(sc, &auth).await;
    assert!(login.try_wait().unwrap().is_none(), "the login still waits for its browser");
}

/// Issue 21.9: a renewal waits for another process's at most the request's time
/// (`--request-timeout`), not a minute: the request is answered with what holds it.
#[tokio::test]
async fn a_renewal_waits_for_another_process_at_most_the_requests_time() {
    let (auth, server, _dir, browser, state) = signed_in("renew-bounded").await;
    // Another process renews (and is stuck): it holds the entry's lock.
    let lock = hold_entry_lock(&token_file(&state));
    let mut sc = sidecar(&server, &state, &browser, &["--request-timeout", "2"]);
    sc.handshake().await;
    auth.s().access.clear();
    let started = std::time::Instant::now();
    let r = call(&mut sc, 1, "echo", json!({"text": "x"})).await;
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("has not finished within 2 s"), "{r}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "{:?}", started.elapsed());
    finish_checked(sc, &auth).await;
    drop(lock);
}

/// Issue 24.5: a sign-in that takes longer than a client waits for its `initialize` (60 s for
/// most). The first run signs in and keeps the handshake and the list; the tokens are then
/// refused and the refresh revoked, so the next run's `initialize` needs a new sign-in, which
/// the person finishes only later (the browser is held). The client's `initialize` is answered
/// from what was kept once the sign-in has gone on for the grace, its list too; its call waits
/// for the sign-in and goes into the one session that `initialize` started.
#[tokio::test]
async fn issue24_5_a_sign_in_longer_than_the_client_waits_is_answered_from_what_was_kept() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("issue24-5-sign-in");
    let browser = Browser::start(&dir, Agent::Held).await;
    let state = dir.join("state");
    browser.finish_one();
    let mut sc = sidecar(&server, &state, &browser, &[]);
    let fresh_init = sc.handshake().await;
    sc.send_json(&request(1, "tools/list", json!({}))).await;
    let fresh = sc.recv().await;
    assert!(fresh["result"]["tools"].is_array(), "{fresh}");
    finish_checked(sc, &auth).await;
    {
        let mut st = auth.s();
        st.access.clear();
        st.revoked = true;
    }
    let before = (server.posts("initialize").len(), server.posts("notifications/initialized").len());

    let mut sc = sidecar(&server, &state, &browser, &[]);
    let init = sc.handshake_within(std::time::Duration::from_secs(40)).await;
    assert_eq!(init["result"], fresh_init["result"]);
    assert_eq!((browser.opened(), auth.authorizes()), (2, 1), "answered while the sign-in goes on");
    sc.send_json(&request(2, "tools/list", json!({}))).await;
    let stale = sc.recv().await;
    assert_eq!(stale["result"]["tools"], fresh["result"]["tools"], "{stale}");
    let params = json!({"name":"echo","arguments":{"text":"signed in"},"_meta":{"progressToken":"t"}});
    sc.send_json(&json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":params})).await;
    // The call waits for the sign-in, with progress that says so (issue 24.4).
    let note = sc.recv().await;
    assert_eq!(note["method"], "notifications/progress", "{note}");
    let message = note["params"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("waiting for the sign-in to 127.0.0.1"), "{note}");
    browser.finish_one();
    let answer = loop {
        let line = sc.recv().await;
        if line["method"] != "notifications/progress" {
            break line;
        }
    };
    assert_eq!(answer["id"], 3, "{answer}");
    assert_eq!(answer["result"]["content"][0]["text"], "signed in", "{answer}");
    assert_eq!(auth.authorizes(), 2);
    // One session: the 401 and the signed-in `initialize`, no second one from the call; the
    // call and our `notifications/initialized` went into it.
    assert_eq!(server.posts("initialize").len() - before.0, 2, "one initialize after the sign-in");
    let initialized = server.posts("notifications/initialized");
    assert_eq!(initialized.len() - before.1, 1, "ours, once");
    let session = initialized.last().unwrap().header("mcp-session-id").map(str::to_owned);
    assert!(session.is_some());
    assert_eq!(server.posts("tools/call").last().unwrap().header("mcp-session-id"), session.as_deref());
    let out = finish_checked(sc, &auth).await;
    assert!(out.stderr.contains("the client's initialize was answered from what was kept"), "{}", out.stderr);
    // The `initialize` was answered once: its late answer stays here.
    let answers = out.messages().into_iter().filter(|m| m["id"] == 0).count();
    assert_eq!(answers, 1, "{}", out.stdout);
}

/// Issue 25.1, Microsoft Entra: its token endpoint refuses the `resource` parameter
/// (AADSTS9010010). `login` as usual fails with the fix in its words; with
/// `--no-resource-indicator` and `--scope` no request carries `resource` (authorize, code,
/// refresh), the scope is the one given, and the proxy with the same flags works, a refresh
/// included.
#[tokio::test]
async fn issue25_1_entra_refuses_the_resource_parameter_and_no_resource_indicator_gets_through() {
    let auth = AuthServer::start(|st| st.entra = true).await;
    let server = auth.protect().await;
    let dir = temp_dir("entra");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state").to_string_lossy().into_owned();
    let out = browser.run(vec!["login", &server.url, "--state-dir", &state]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("AADSTS9010010") && stderr.contains("add --no-resource-indicator"), "{stderr}");

    let scope = "api://app-1/.default offline_access";
    let flags = ["--no-resource-indicator", "--scope", scope];
    let mut args = vec!["login", &server.url, "--state-dir", &state];
    args.extend(flags);
    let out = browser.run(args).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    {
        let st = auth.s();
        let a = st.authorizes.last().unwrap();
        assert_eq!(a.get("resource"), None, "{a:?}");
        assert_eq!(a["scope"], scope, "--scope replaces the server's mcp:read");
        assert_eq!(st.tokens.last().unwrap().get("resource"), None);
    }
    let mut sc = sidecar(&server, std::path::Path::new(&state), &browser, &flags);
    sc.handshake().await;
    auth.s().access.clear();
    let r = call(&mut sc, 1, "echo", json!({"text": "refreshed"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "refreshed", "{r}");
    let last = auth.s().tokens.last().unwrap().clone();
    assert_eq!((last["grant_type"].as_str(), last.get("resource")), ("refresh_token", None));
    finish_checked(sc, &auth).await;
    assert_eq!(browser.opened(), 2);
}

/// Issue 25.1, `--oauth-resource`: the resource given goes on the authorization, code and
/// refresh requests instead of the server's URL.
#[tokio::test]
async fn issue25_1_oauth_resource_replaces_the_server_url() {
    let auth = AuthServer::start(|_| {}).await;
    let server = auth.protect().await;
    let dir = temp_dir("oauth-resource");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state");
    let flags =
        ["--oauth-resource", "api://app-2", "--authorize-param", "access_type=offline,prompt=consent"];
    let mut sc = sidecar(&server, &state, &browser, &flags);
    sc.handshake().await;
    auth.s().access.clear();
    let r = call(&mut sc, 1, "echo", json!({"text": "again"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "again", "{r}");
    finish_checked(sc, &auth).await;
    let st = auth.s();
    let a = &st.authorizes[0];
    assert_eq!(a["resource"], "api://app-2");
    assert_eq!(
        (a["access_type"].as_str(), a["prompt"].as_str()),
        ("offline", "consent"),
        "--authorize-param"
    );
    assert_eq!(a["scope"], "mcp:read", "without --scope, the server's");
    assert!(st.tokens.iter().all(|t| t["resource"] == "api://app-2"), "{:?}", st.tokens);
    assert_eq!(st.tokens.last().unwrap()["grant_type"], "refresh_token");
}

/// Issue 25.1: `--authorize-param` may not set what the sign-in sets itself (a `redirect_uri`
/// would send the code elsewhere); said at start, before any request.
#[tokio::test]
async fn issue25_1_authorize_params_the_flow_owns_are_refused() {
    for (param, says) in [
        ("redirect_uri=http://evil.example/cb", "sets redirect_uri itself"),
        ("STATE=x", "sets STATE itself"),
        ("scope=admin", "use --scope"),
        ("resource=x", "use --oauth-resource"),
        ("noequals", "is not KEY=VALUE"),
    ] {
        let args = ["http://127.0.0.1:9/mcp", "--authorize-param", param];
        let (code, _, stderr) = run_command(&args, &[]).await;
        assert_eq!(code, 2, "{param}: {stderr}");
        assert!(stderr.contains(says), "{param}: {stderr}");
    }
    let (code, _, stderr) =
        run_command(&["http://127.0.0.1:9/mcp", "--oauth-resource", "not a uri"], &[]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--oauth-resource"), "{stderr}");
}

/// Issue 25.1, Amazon Cognito: the MCP server takes only the ID token. Signed in as usual,
/// the access token is refused and the error says to add `--use-id-token` (`check` too); with
/// it, `openid` is asked for, the ID token is the bearer, and a refresh brings the next one.
#[tokio::test]
async fn issue25_1_cognito_wants_the_id_token() {
    let auth = AuthServer::start(|st| st.cognito = true).await;
    let server = auth.protect().await;
    let dir = temp_dir("cognito");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let state = dir.join("state").to_string_lossy().into_owned();
    let scope = ["--scope", "openid mcp:read"];
    let mut args = vec!["login", &server.url, "--state-dir", &state];
    args.extend(scope);
    assert!(browser.run(args).await.unwrap().status.success());
    let mut args = vec!["check", &server.url, "--state-dir", &state];
    args.extend(scope);
    let out = browser.run(args).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("add --use-id-token"), "{stdout}");
    assert!(!stdout.contains("SECRET"), "{stdout}");

    let state = dir.join("state-2");
    let mut sc = sidecar(&server, &state, &browser, &["--use-id-token"]);
    sc.handshake().await;
    assert_eq!(auth.s().authorizes.last().unwrap()["scope"], "openid mcp:read", "openid added");
    auth.s().oidc.clear();
    let r = call(&mut sc, 1, "echo", json!({"text": "id token"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "id token", "{r}");
    assert_eq!(auth.s().tokens.last().unwrap()["grant_type"], "refresh_token");
    finish_checked(sc, &auth).await;
}

/// Issue 25.6: the MCP server's cookie (set on its 401) goes back to the MCP server only:
/// the authorization server, another origin, never sees a cookie (its own client does the
/// sign-in's requests).
#[tokio::test]
async fn issue25_6_the_mcp_server_s_cookie_never_goes_to_the_authorization_server() {
    let auth = AuthServer::start(|st| st.mcp_cookie = true).await;
    let server = auth.protect().await;
    let dir = temp_dir("cookie-origin");
    let browser = Browser::start(&dir, Agent::Follow).await;
    let mut sc = sidecar(&server, &dir.join("state"), &browser, &[]);
    sc.handshake().await;
    let r = call(&mut sc, 1, "echo", json!({"text": "x"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "x", "{r}");
    finish_checked(sc, &auth).await;
    assert_eq!(auth.s().cookies_here, 0);
    let calls = server.posts("tools/call");
    assert_eq!(calls.last().unwrap().header("cookie"), Some("AWSALB=sticky-0123456789abcdef"));
}
