//! The loopback redirect listener (RFC 8252 §7.3, A-31).
//!
//! It binds 127.0.0.1 (an ephemeral port, or `--callback-port`), serves `GET /callback`, and
//! hands on exactly one callback: the first whose `state` matches. Anything else gets an error
//! page and the listener keeps waiting (a stale tab or a forged request cannot end the sign-in).
//! The browser gets a short page saying the tab can be closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::common::AuthError;

/// The callback's query parameters.
#[derive(Debug, Clone, Default)]
pub struct Callback {
    pub params: HashMap<String, String>,
}

impl Callback {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// A bound listener, not yet serving.
pub struct Listener {
    listener: TcpListener,
    pub port: u16,
}

impl Listener {
    /// Binds 127.0.0.1 on `port` (0: any), or, when `preferred` is given and free, on that.
    pub async fn bind(port: Option<u16>, preferred: Option<u16>) -> Result<Listener, AuthError> {
        if let Some(port) = port {
            let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
                AuthError(format!(
                    "cannot listen for the sign-in callback on 127.0.0.1:{port} ({e}): free the port or choose another with --callback-port"
                ))
            })?;
            return Ok(Listener { listener, port });
        }
        if let Some(p) = preferred
            && let Ok(listener) = TcpListener::bind(("127.0.0.1", p)).await
        {
            return Ok(Listener { listener, port: p });
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| AuthError(format!("cannot listen for the sign-in callback on 127.0.0.1 ({e})")))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        Ok(Listener { listener, port })
    }

    /// The redirect URI for this listener.
    pub fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}/callback", self.port)
    }

    /// Serves until a callback with `state` arrives; returns its parameters.
    pub async fn wait(self, state: String) -> Callback {
        let (tx, rx) = oneshot::channel();
        let shared = Arc::new(Shared { state, done: Mutex::new(Some(tx)) });
        let mut connections = JoinSet::new();
        let mut rx = rx;
        loop {
            tokio::select! {
                result = &mut rx => {
                    // Let the browser get its page before the listener goes away.
                    let drain = async { while connections.join_next().await.is_some() {} };
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
                    return result.unwrap_or_default();
                }
                accepted = self.listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(shared.handle(req)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        }
    }
}

struct Shared {
    state: String,
    done: Mutex<Option<oneshot::Sender<Callback>>>,
}

impl Shared {
    fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != "/callback" {
            return page(StatusCode::NOT_FOUND, "Not found", "This is mcp-sidecar's sign-in listener.");
        }
        let params: HashMap<String, String> =
            url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
        let matches =
            params.get("state").is_some_and(|s| constant_time_eq(s.as_bytes(), self.state.as_bytes()));
        if !matches {
            return page(
                StatusCode::BAD_REQUEST,
                "Sign-in not accepted",
                "This answer does not belong to the sign-in mcp-sidecar started (its state does not match). Start the sign-in again from your MCP client or with mcp-sidecar login.",
            );
        }
        let Some(tx) = self.done.lock().ok().and_then(|mut d| d.take()) else {
            return page(
                StatusCode::OK,
                "Already signed in",
                "mcp-sidecar already has this answer. You can close this tab.",
            );
        };
        let failed = params.contains_key("error");
        let _ = tx.send(Callback { params });
        if failed {
            page(
                StatusCode::OK,
                "Sign-in not completed",
                "mcp-sidecar got the answer. You can close this tab; the terminal or the MCP client says what happened.",
            )
        } else {
            page(StatusCode::OK, "Signed in", "mcp-sidecar is signed in. You can close this tab.")
        }
    }
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Full<Bytes>> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>{title}</h1><p>{text}</p></body></html>"
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", hyper::header::HeaderValue::from_static("text/html; charset=utf-8"));
    r.headers_mut().insert("cache-control", hyper::header::HeaderValue::from_static("no-store"));
    r
}

/// Compares without an early exit, so timing says nothing about how much of `state` matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(port: u16, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    #[tokio::test]
    async fn only_the_matching_state_ends_the_wait() {
        let listener = Listener::bind(None, None).await.unwrap();
        let port = listener.port;
        assert_eq!(listener.redirect_uri(), format!("http://127.0.0.1:{port}/callback"));
        let waiting = tokio::spawn(listener.wait("s3cr3t".into()));
        let (status, body) = get(port, "/callback?code=forged&state=other").await;
        assert_eq!(status, 400);
        assert!(body.contains("does not match"), "{body}");
        assert_eq!(get(port, "/favicon.ico").await.0, 404);
        assert!(!waiting.is_finished());
        let (status, body) = get(port, "/callback?code=c0de&state=s3cr3t&iss=https%3A%2F%2Fas").await;
        assert_eq!(status, 200);
        assert!(body.contains("close this tab"), "{body}");
        let callback = waiting.await.unwrap();
        assert_eq!(callback.get("code"), Some("c0de"));
        assert_eq!(callback.get("iss"), Some("https://as"));
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_with_the_fix() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = Listener::bind(Some(port), None).await.err().unwrap();
        assert!(e.0.contains("--callback-port"), "{}", e.0);
        // A remembered port that is taken falls back to any free one.
        assert_ne!(Listener::bind(None, Some(port)).await.unwrap().port, port);
    }
}
