//! The sign-in settings, as the command line gives them: plain data. How tokens are obtained
//! with them is `crate::auth`'s business (which imports these, never the reverse).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::keyfile::ClientKey;

/// How the sign-in is set up (from the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--client-id`: a client registered with the authorization server beforehand.
    pub client_id: Option<String>,
    /// The secret from the variable named by `--client-secret-env`, with that name.
    pub client_secret: Option<(String, SecretString)>,
    /// `--client-metadata-url`: a client ID metadata document (CIMD, A-21).
    pub client_metadata_url: Option<String>,
    /// `--callback-port`; `None`: an ephemeral port (or the one registered before).
    pub callback_port: Option<u16>,
    /// `--auth-timeout`: how long to wait for the browser.
    pub timeout: Duration,
    /// `$BROWSER`.
    pub browser: Option<String>,
    /// Whether a browser sign-in may start by itself (false: report that `login` is needed).
    pub interactive: bool,
    /// `--auth oauth` was given.
    pub explicit: bool,
    /// `--token-store keyring`.
    pub keyring: bool,
    /// How tokens are obtained (`--auth`; issue 14).
    pub grant: Grant,
    /// `login` where no browser can be opened: a device code instead, where the server offers
    /// one.
    pub headless: bool,
    /// `--client-key-file`: the client authenticates with signed assertions.
    pub client_key: Option<ClientKey>,
    /// Issue 25.1, the identity provider's knobs.
    pub idp: Knobs,
}

/// Issue 25.1: what identity providers need beyond the standard flow.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// `--scope`: the scopes asked for, instead of those the server names.
    pub scope: Option<String>,
    /// `--oauth-resource`, `--no-resource-indicator`.
    pub resource: Resource,
    /// `--authorize-param KEY=VALUE`: extra parameters of the authorization request.
    pub authorize_params: Vec<(String, String)>,
    /// `--use-id-token`: the ID token is the bearer.
    pub use_id_token: bool,
}

/// The RFC 8707 `resource` parameter sent with sign-in, token and refresh requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Resource {
    /// The one the server's metadata names (else its canonical URL).
    #[default]
    Discovered,
    /// `--oauth-resource`.
    Given(String),
    /// `--no-resource-indicator`.
    Omitted,
}

/// The parameters of the authorization request the sign-in sets itself: `--authorize-param`
/// may not set them (a `redirect_uri` of someone else's would send the code there).
pub const OWN_AUTHORIZE_PARAMS: [&str; 12] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
    "resource",
    "request",
    "request_uri",
    "code_verifier",
    "client_secret",
];

/// How tokens are obtained (`--auth`).
#[derive(Debug, Clone, Default)]
pub enum Grant {
    /// `--auth oauth`: the browser (authorization code with PKCE).
    #[default]
    Browser,
    /// `--auth oauth-device`: a code the user enters on another device (RFC 8628).
    Device,
    /// `--auth client-credentials`: the client itself, no user.
    ClientCredentials,
    /// `--auth workload-identity`: the JWT bearer grant with the workload's identity token.
    WorkloadIdentity(Assertion),
    /// `--auth enterprise`: the user's ID token, exchanged at the IdP, then the JWT bearer grant.
    Enterprise(Box<Enterprise>),
}

impl Grant {
    /// Whether this grant needs no person (it may run in the middle of a proxied request).
    pub fn unattended(&self) -> bool {
        matches!(self, Grant::ClientCredentials | Grant::WorkloadIdentity(_) | Grant::Enterprise(_))
    }

    /// The name `status` shows and the store keeps.
    pub fn kind(&self) -> &'static str {
        match self {
            Grant::Browser => "authorization_code",
            Grant::Device => "device_code",
            Grant::ClientCredentials => "client_credentials",
            Grant::WorkloadIdentity(_) => "workload_identity",
            Grant::Enterprise(_) => "enterprise",
        }
    }
}

/// `--auth enterprise`: where the IdP exchanges the ID token, and as which client.
#[derive(Debug, Clone)]
pub struct Enterprise {
    pub idp_token_endpoint: Url,
    pub idp_client_id: String,
    pub idp_client_secret: Option<SecretString>,
    pub id_token: Assertion,
}

/// A token handed to us by the platform: a file (re-read at each use: CI platforms and
/// Kubernetes rotate them) or a variable (read at start).
#[derive(Clone)]
pub enum Assertion {
    File(PathBuf),
    Env(String, SecretString),
}

impl std::fmt::Debug for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Assertion::File(p) => write!(f, "File({})", p.display()),
            Assertion::Env(n, _) => write!(f, "Env({n})"),
        }
    }
}
