//! The commands for people and scripts (issue 6): `check`, `call`, `tools`, `tool`, `install`,
//! `completions`, `man`, `--version`, `--help`; each against the example server on 127.0.0.1
//! (healthy, wrong key, wrong URL, rate-limited, TLS failure). Output is snapshot-tested with
//! insta where its wording is the interface (timings filtered out).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::harness::*;

/// The `args` of the entry `name` in the MCP client config `file`.
fn entry_args(file: &str, name: &str) -> Vec<String> {
    let doc: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    serde_json::from_value(doc["mcpServers"][name]["args"].clone()).unwrap()
}

/// Replaces what changes between runs: timings, ports, dates.
fn stable(text: &str, server: &Server) -> String {
    let text = text.replace(&server.url, "URL");
    let mut out = String::new();
    for line in text.lines() {
        // Single spaces: the padding of a column depends on the width of the timing.
        let mut words: Vec<String> = line.split(' ').filter(|w| !w.is_empty()).map(str::to_owned).collect();
        for i in 0..words.len() {
            if words.get(i + 1).is_some_and(|w| w == "ms") && words[i].parse::<u64>().is_ok() {
                words[i] = "N".into();
            }
        }
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

fn key_args(server: &Server) -> Vec<String> {
    vec!["--url".into(), server.url.clone(), "--api-key-env".into(), "TEST_KEY".into()]
}

fn with<'a>(head: &[&'a str], tail: &'a [String]) -> Vec<&'a str> {
    head.iter().copied().chain(tail.iter().map(String::as_str)).collect()
}

#[tokio::test]
async fn check_reports_each_step_of_a_healthy_server() {
    let server = Server::start(generic(), None).await;
    let ka = key_args(&server);
    let (code, stdout, _) = run_command(&with(&["check"], &ka), ENV).await;
    assert_eq!(code, 0, "{stdout}");
    insta::assert_snapshot!("check_healthy", stable(&stdout, &server));

    let (code, stdout, _) = run_command(&with(&["check", "--json"], &ka), ENV).await;
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["healthy"], true);
    assert_eq!(report["server"]["tools"], 9);
    assert_eq!(report["server"]["protocolVersion"], "2025-11-25");
    let steps: Vec<&str> =
        report["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["configuration", "dns", "http", "mcp handshake", "offers", "auth", "rate limits"]);
}

/// Issue 23.6: the 404 hint told a URL ending in /mcp that "MCP endpoints usually end in /mcp",
/// and said nothing of the path a preset knows; `check` now tries the likely endpoint.
#[tokio::test]
async fn issue23_6_a_404_names_the_likely_endpoint_and_check_tries_it() {
    let server = Server::start(generic(), None).await;
    let origin = server.url.trim_end_matches("/mcp").to_owned();
    let init = initialize(1);
    for (url, preset, expected, not) in [
        (format!("{origin}/v2/mcp"), None, "the server's documentation", Some("usually end in /mcp")),
        (format!("{origin}/nope"), None, &*format!("try {origin}/nope/mcp"), None),
        (
            format!("{origin}/nope"),
            Some("investra"),
            &*format!("the preset's endpoint is {origin}/api/mcp"),
            None,
        ),
    ] {
        let mut args = vec![url.as_str(), "--api-key-env", "TEST_KEY"];
        if let Some(p) = preset {
            args.extend(["--preset", p]);
        }
        let mut s = Sidecar::spawn(&args, ENV);
        s.send_json(&init).await;
        let answer = s.recv().await;
        let message = answer["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains("is not an MCP endpoint") && message.contains(expected), "{url}: {message}");
        if let Some(not) = not {
            assert!(!message.contains(not), "{url}: {message}");
        }
        s.finish().await;
    }
    // `check` at the host's root: it tries /mcp, which answers as MCP endpoints do.
    let root = format!("{origin}/");
    let (code, stdout, _) = run_command(&["check", "--url", &root, "--api-key-env", "TEST_KEY"], ENV).await;
    assert_eq!(code, 1);
    assert!(stdout.contains(&format!("{origin}/mcp answers the MCP handshake: use that URL")), "{stdout}");
}

/// Issue 23.2: with no key set, a key server's 401 led into OAuth ("needs a sign-in: run
/// mcp-sidecar login", then "refused to register mcp-sidecar as a client … pass --client-id").
/// A server with no OAuth metadata whose 401 speaks of a key gets the key's fix, everywhere.
#[tokio::test]
async fn issue23_2_a_forgotten_key_is_named_not_sent_into_oauth() {
    let server = Server::start(generic(), None).await;
    let dir = scratch_dir("issue23-2");
    let state = dir.to_str().unwrap();
    let wants_key = |text: &str| {
        text.contains("wants an API key, not a sign-in (HTTP 401: Invalid API key")
            && text.contains("--api-key-env NAME")
            && !text.contains("login")
            && !text.contains("--client-id")
    };
    for command in [&["tools"][..], &["call", "tools/list"], &["check"], &["login"]] {
        let mut args = command.to_vec();
        args.extend(["--url", &server.url, "--state-dir", state]);
        let (code, stdout, stderr) = run_command(&args, &[]).await;
        assert_eq!(code, 1, "{command:?}: {stdout}{stderr}");
        assert!(wants_key(&format!("{stdout}{stderr}")), "{command:?}: {stdout}{stderr}");
    }
    let mut s = Sidecar::spawn(&[&server.url, "--state-dir", state], &[]);
    s.send_json(&initialize(1)).await;
    let answer = s.recv().await;
    assert!(wants_key(answer["error"]["message"].as_str().unwrap_or_default()), "{answer}");
    s.finish().await;
}

#[tokio::test]
async fn check_names_the_cause_and_the_fix() {
    let server = Server::start(generic(), None).await;
    // Wrong key.
    let ka = key_args(&server);
    let (code, stdout, _) = run_command(&with(&["check"], &ka), &[("TEST_KEY", "inv_wrong_key_0000")]).await;
    assert_eq!(code, 1);
    insta::assert_snapshot!("check_wrong_key", stable(&stdout, &server));
    // Wrong URL.
    let wrong = server.url.replace("/mcp", "/nope");
    let (code, stdout, _) = run_command(&["check", "--url", &wrong, "--api-key-env", "TEST_KEY"], ENV).await;
    assert_eq!(code, 1);
    // Issue 23.6: the likely endpoint is tried, and named.
    let right = format!("{} answers the MCP handshake: use that URL", server.url);
    assert!(stdout.contains("FAIL") && stdout.contains(&right), "{stdout}");
    // Nothing listening.
    let (code, stdout, _) =
        run_command(&["check", "--url", "http://127.0.0.1:1/mcp", "--auth", "none"], &[]).await;
    assert_eq!(code, 1);
    assert!(stdout.contains("connection refused"), "{stdout}");
}

#[tokio::test]
async fn check_explains_an_untrusted_certificate_and_shows_a_trusted_ones_issuer() {
    let pki = crate::tls::pki(&["127.0.0.1"], false);
    let ct = tokio_util::sync::CancellationToken::new();
    let url = crate::tls::serve_tls(&pki, ct.clone()).await;
    let (code, stdout, _) = run_command(&["check", "--url", &url, "--api-key-env", "TEST_KEY"], ENV).await;
    assert_eq!(code, 1);
    assert!(stdout.contains("FAIL tls") && stdout.contains("--ca-file"), "{stdout}");
    let ca = crate::tls::ca_file(&pki, "check");
    let ca = ca.to_string_lossy();
    let (code, stdout, _) =
        run_command(&["check", "--url", &url, "--api-key-env", "TEST_KEY", "--ca-file", &ca], ENV).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("issued by mcp-sidecar test CA") && stdout.contains("days)"), "{stdout}");
    ct.cancel();
}

#[tokio::test]
async fn call_tools_and_tool_print_results_for_scripts() {
    let server = Server::start(generic(), None).await;
    let ka = key_args(&server);
    let (code, stdout, stderr) =
        run_command(&with(&["call", "tools/call", r#"{"name":"sum","arguments":{"a":2,"b":3}}"#], &ka), ENV)
            .await;
    assert_eq!(code, 0, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["content"][0]["text"], "5");
    assert!(stderr.is_empty(), "nothing on stderr when all is well: {stderr}");

    let (code, stdout, _) = run_command(&with(&["tools"], &ka), ENV).await;
    assert_eq!(code, 0);
    assert!(stdout.lines().any(|l| l.starts_with("echo ") && l.contains("Send the text back")), "{stdout}");

    let (code, stdout, _) = run_command(&with(&["tool", "echo", "--arg", "text=hi there"], &ka), ENV).await;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["content"][0]["text"], "hi there");
    let (code, stdout, _) =
        run_command(&with(&["tool", "sum", "--json", r#"{"a":40,"b":2}"#], &ka), ENV).await;
    assert_eq!(
        (code, serde_json::from_str::<Value>(&stdout).unwrap()["content"][0]["text"].clone()),
        (0, json!("42"))
    );

    // The server's error: exit 3, one sentence on stderr; a wrong key: exit 1.
    let (code, _, stderr) = run_command(&with(&["call", "no/such/method"], &ka), ENV).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.starts_with("mcp-sidecar: the server answered with an error"), "{stderr}");
    let (code, stdout, stderr) =
        run_command(&with(&["tools"], &ka), &[("TEST_KEY", "inv_wrong_key_0000")]).await;
    assert_eq!(code, 1);
    assert!(stdout.is_empty() && stderr.contains("rejected the API key in TEST_KEY"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
    // Bad arguments: exit 2.
    let (code, _, stderr) = run_command(&with(&["call", "tools/list", "not json"], &ka), ENV).await;
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test]
async fn call_waits_out_a_rate_limit_with_a_plain_line_when_stderr_is_not_a_terminal() {
    let (hook, count) = first_tools_list_429(1);
    let server = Server::start(generic(), Some(hook)).await;
    let ka = key_args(&server);
    let (code, stdout, stderr) = run_command(&with(&["call", "tools/list"], &ka), ENV).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"tools\""));
    assert!(stderr.contains("waiting 1") && stderr.contains("Retry-After"), "{stderr}");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

/// A hook that answers the first tools/list with 429 and `Retry-After: secs`; and a count of
/// the tools/list requests.
fn first_tools_list_429(secs: u32) -> (Hook, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let hook: Hook = Arc::new(move |s: &Seen| {
        if s.rpc_method() == Some("tools/list") && c.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut r = respond(429, "application/json", "{}");
            r.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
            return Action::Respond(r);
        }
        Action::Pass
    });
    (hook, count)
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mcp-sidecar-install-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn install_merges_into_claude_desktops_config_with_the_key_in_env_only() {
    let dir = temp("desktop");
    let file = dir.join("claude_desktop_config.json");
    let before =
        json!({"theme": "dark", "mcpServers": {"other": {"command": "other-server", "args": ["--x"]}}});
    std::fs::write(&file, serde_json::to_string_pretty(&before).unwrap()).unwrap();
    let f = file.to_string_lossy().into_owned();
    let base = ["install", "--client", "claude-desktop", "--config-file", &f, "--preset", "investra"];
    let env = [("INVESTRA_API_KEY", KEY)];

    // --dry-run: shows, changes nothing, never shows the key.
    let (code, stdout, _) = run_command(&[&base[..], &["--dry-run"]].concat(), &env).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("would add \"investra\"") && stdout.contains("inv_…b204"), "{stdout}");
    assert_eq!(serde_json::from_slice::<Value>(&std::fs::read(&file).unwrap()).unwrap(), before);

    let (code, _, stderr) = run_command(&base, &env).await;
    assert_eq!(code, 0, "{stderr}");
    let after: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(after["theme"], "dark", "other settings kept");
    assert_eq!(after["mcpServers"]["other"], before["mcpServers"]["other"], "other servers kept");
    let entry = &after["mcpServers"]["investra"];
    assert_eq!(entry["args"], json!(["--preset", "investra"]));
    assert_eq!(entry["env"]["INVESTRA_API_KEY"], KEY, "the key is in env");
    assert!(!entry["args"].to_string().contains(KEY) && !entry["command"].to_string().contains(KEY));
    // Windows: files get the ACL of the user's profile folder, private already; no mode bits.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let backups: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".bak-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let backup: Value = serde_json::from_slice(&std::fs::read(dir.join(&backups[0])).unwrap()).unwrap();
    assert_eq!(backup, before);
}

/// Issue 23.9: two installs within one second overwrote the original's backup (named by the
/// second); a same-named entry was replaced with "replaceed" as the only word; a missing key sent
/// install's users to edit the "env" block that install itself writes.
#[tokio::test]
async fn issue23_9_install_keeps_every_backup_and_says_what_it_replaced() {
    let dir = temp("backups");
    let file = dir.join("claude_desktop_config.json");
    let original = json!({"mcpServers": {"investra": {"command": "old-sidecar", "args": ["--old"]}}});
    std::fs::write(&file, serde_json::to_string_pretty(&original).unwrap()).unwrap();
    // The names this second (and the next) would take are in use already: nothing may overwrite
    // them, whatever the clock says when install runs.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let taken: Vec<_> =
        (now..now + 3).map(|s| dir.join(format!("claude_desktop_config.json.bak-{s}"))).collect();
    for t in &taken {
        std::fs::write(t, "an earlier backup").unwrap();
    }
    let f = file.to_string_lossy().into_owned();
    let base = ["install", "--client", "claude-desktop", "--config-file", &f, "--preset", "investra"];
    let env = [("INVESTRA_API_KEY", KEY)];
    let (code, _, stderr) = run_command(&base, &env).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("replaced the existing \"investra\""), "{stderr}");
    assert!(!stderr.contains("replaceed"), "{stderr}");
    let (code, _, stderr) = run_command(&base, &env).await;
    assert_eq!(code, 0, "{stderr}");
    for t in &taken {
        assert_eq!(std::fs::read_to_string(t).unwrap(), "an earlier backup", "{} overwritten", t.display());
    }
    let backups: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".bak-") && !taken.contains(p))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    assert_eq!(backups.len(), 2, "one backup per install: {backups:?}");
    assert!(backups.contains(&original), "the original config is kept: {backups:?}");

    // A missing key: export it and run install again (install writes the env block).
    let (code, _, stderr) = run_command(&base, &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("export INVESTRA_API_KEY=") && stderr.contains("run install again"), "{stderr}");
    assert!(!stderr.contains("put it in the \"env\" block"), "{stderr}");
}

#[tokio::test]
async fn install_for_claude_code_prints_the_command_without_the_key() {
    let (code, stdout, stderr) = run_command(
        &[
            "install",
            "--client",
            "claude-code",
            "--dry-run",
            "--url",
            "https://mcp.example.com/mcp",
            "--api-key-env",
            "TEST_KEY",
        ],
        ENV,
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        "claude mcp add example -- mcp-sidecar https://mcp.example.com/mcp --api-key-env TEST_KEY"
    );
    assert!(stderr.contains("export TEST_KEY") && stderr.contains("--store-key"), "{stderr}");
}

#[tokio::test]
async fn version_help_completions_and_man_page() {
    let (code, stdout, _) = run_command(&["--version"], &[]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION"))
            && stdout.contains("2026-07-28")
            && stdout.contains("2024-11-05")
    );
    let (_, help, _) = run_command(&["--help"], &[]).await;
    insta::assert_snapshot!("help", help);
    let (_, check_help, _) = run_command(&["check", "--help"], &[]).await;
    insta::assert_snapshot!("check_help", check_help);
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, _) = run_command(&["completions", shell], &[]).await;
        assert_eq!(code, 0);
        assert!(script.contains("mcp-sidecar") && script.contains("--api-key-env"), "{shell}");
    }
    let (code, man, _) = run_command(&["man"], &[]).await;
    assert_eq!(code, 0);
    assert!(man.starts_with(".ie") || man.contains(".TH mcp-sidecar"), "{}", &man[..200.min(man.len())]);
    assert!(man.contains("api\\-key\\-env"));
    // Issue 23.10: the title line is whole, and nothing stands above NAME but the title.
    let title = man.lines().find(|l| l.starts_with(".TH")).unwrap_or_default();
    assert!(title.ends_with('"') || title.ends_with("\" "), "{title}");
    assert!(title.contains(concat!("mcp-sidecar ", env!("CARGO_PKG_VERSION"))), "{title}");
    let head = &man[..man.find(".SH NAME").unwrap()];
    assert!(!head.contains("MCP protocol revisions"), "{head}");
}

#[tokio::test]
async fn verbose_and_quiet_move_the_log_level() {
    let server = Server::start(generic(), None).await;
    let mut sc = Sidecar::spawn(&[&server.url, "--api-key-env", "TEST_KEY", "-v"], ENV).secret(KEY);
    sc.handshake().await;
    let out = sc.finish().await;
    assert!(out.stderr.contains("DEBUG"), "-v shows debug lines:\n{}", out.stderr);
    let mut sc = Sidecar::spawn(&[&server.url, "--api-key-env", "TEST_KEY", "-q"], ENV).secret(KEY);
    sc.handshake().await;
    let out = sc.finish().await;
    assert!(!out.stderr.contains("INFO"), "-q hides info lines:\n{}", out.stderr);
}

#[tokio::test]
async fn check_shows_the_rate_limit_headers_the_server_sends() {
    let key = "sk_test_SECRET_check_0001";
    let opts = Options {
        vendor: Vendor::Converra,
        keys: vec![key.into()],
        per_minute: Some(100),
        ..Options::default()
    };
    let server = Server::start(opts, None).await;
    let (code, stdout, _) =
        run_command(&["check", "--preset", "converra", "--url", &server.url], &[("CONVERRA_API_KEY", key)])
            .await;
    assert_eq!(code, 0, "{stdout}");
    assert!(!stdout.contains(key));
    assert!(stdout.contains("sk_test_…0001"), "{stdout}");
    let limits = stdout.lines().find(|l| l.contains("rate limits")).unwrap();
    assert!(
        limits.contains("x-ratelimit-limit: 100") && limits.contains("x-ratelimit-remaining"),
        "{limits}"
    );
}

#[tokio::test]
async fn one_shot_commands_explain_a_wrong_url_and_an_untrusted_certificate_in_one_sentence() {
    let server = Server::start(generic(), None).await;
    let wrong = server.url.replace("/mcp", "/nope");
    let pki = crate::tls::pki(&["127.0.0.1"], false);
    let ct = tokio_util::sync::CancellationToken::new();
    let tls = crate::tls::serve_tls(&pki, ct.clone()).await;
    for url in [wrong.as_str(), tls.as_str()] {
        for cmd in [&["call", "tools/list"][..], &["tools"], &["tool", "echo", "--arg", "text=x"]] {
            let args = [cmd, &["--url", url, "--api-key-env", "TEST_KEY"]].concat();
            let (code, stdout, stderr) = run_command(&args, ENV).await;
            assert_eq!(code, 1, "{args:?}: {stderr}");
            assert!(stdout.is_empty(), "{args:?}: {stdout}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
            let expected = if url == tls { "--ca-file" } else { "not an MCP endpoint" };
            assert!(stderr.contains(expected), "{args:?}: {stderr}");
        }
    }
    ct.cancel();
}

/// A server that accepts every request and answers none (`posts`: only its POSTs); the `Notify`
/// releases them.
fn stalled(posts: bool) -> (Hook, Arc<tokio::sync::Notify>) {
    let held = Arc::new(tokio::sync::Notify::new());
    let h = held.clone();
    let hook: Hook = Arc::new(move |s: &Seen| {
        if posts && s.method != axum::http::Method::POST { Action::Pass } else { Action::Hold(h.clone()) }
    });
    (hook, held)
}

/// What the server saw, as "HTTP-method rpc-method" (the GET stream and DELETE by their HTTP
/// method alone).
fn seen_requests(server: &Server) -> Vec<String> {
    server
        .seen()
        .iter()
        .map(|s| match s.rpc_method() {
            Some(m) => format!("{} {m}", s.method),
            None => s.method.to_string(),
        })
        .collect()
}

/// Issue 23.5: a one-shot command spent 4–5 of the user's requests (the probe, initialize,
/// initialized, the GET stream, the call, DELETE). Now: no stream for server messages (nobody
/// reads them), and no DELETE where requests are counted (a rate limit stated by the server's
/// headers, or given), so 3 against a rate-limited server, 4 against one that states no limit.
#[tokio::test]
async fn issue23_5_one_shot_commands_spend_few_requests() {
    let server = Server::start(generic(), None).await;
    let dir = scratch_dir("issue23-5");
    let state = dir.to_str().unwrap();
    let args = ["tools", server.url.as_str(), "--api-key-env", "TEST_KEY", "--state-dir", state];
    let (code, _, stderr) = run_command(&args, ENV).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        seen_requests(&server),
        ["POST initialize", "POST notifications/initialized", "POST tools/list", "DELETE"]
    );

    for (limited, given) in [(true, &[][..]), (false, &["--rate-limit", "100/min"][..])] {
        let opts = if limited {
            Options { limit_headers: true, per_minute: Some(100), ..generic() }
        } else {
            generic()
        };
        let server = Server::start(opts, None).await;
        let mut args =
            vec!["tool", "echo", "--arg", "text=hi", server.url.as_str(), "--api-key-env", "TEST_KEY"];
        args.extend(["--state-dir", state]);
        args.extend(given);
        let (code, _, stderr) = run_command(&args, ENV).await;
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            seen_requests(&server),
            ["POST initialize", "POST notifications/initialized", "POST tools/call"],
            "limited {limited}, given {given:?}"
        );
    }
}

/// Issue 23.7: the positional-argument traps, as a user meets them: `call tools/list URL`
/// ("PARAMS_JSON must be a JSON object" or "no server URL"), a mistyped command ("is not a
/// valid URL", or clap's conflict between [URL] and a subcommand), `MCP_SIDECAR_URL` exported
/// and a URL given (a conflict, though README says flags win).
#[tokio::test]
async fn issue23_7_positional_arguments_are_read_by_what_they_are() {
    let server = Server::start(generic(), None).await;
    let url = server.url.as_str();
    for args in [
        &["call", "tools/list", url, "--api-key-env", "TEST_KEY"][..],
        &[
            "call",
            url,
            "tools/call",
            r#"{"name":"echo","arguments":{"text":"hi"}}"#,
            "--api-key-env",
            "TEST_KEY",
        ],
    ] {
        let (code, stdout, stderr) = run_command(args, ENV).await;
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(stdout.contains("\"tools\"") || stdout.contains("hi"), "{args:?}: {stdout}");
    }
    for args in [&["chek", url][..], &["chek"], &["chek", "--url", url]] {
        let (code, _, stderr) = run_command(args, ENV).await;
        assert_eq!(code, 2, "{args:?}");
        assert_eq!(
            stderr.trim(),
            r#"mcp-sidecar: "chek" is not a command: did you mean mcp-sidecar check?"#,
            "{args:?}"
        );
    }
    let env = [("TEST_KEY", KEY), ("MCP_SIDECAR_URL", "http://127.0.0.1:9/elsewhere")];
    let (code, stdout, stderr) = run_command(&["tools", url, "--api-key-env", "TEST_KEY"], &env).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("echo"), "{stdout}");
}

/// Issue 23.11, the smaller things people hit, each as they meet it.
#[tokio::test]
async fn issue23_11_the_smaller_things() {
    let server = Options { vendor: Vendor::Investra, keys: vec![KEY.to_owned()], ..Options::default() };
    let server = Server::start(server, None).await;
    let url = server.url.as_str();
    let env = [("INVESTRA_API_KEY", KEY)];
    // A key where a variable's name or the URL goes: refused, never repeated.
    let pasted = "inv_pasted_SECRET_0123456789";
    for args in [
        &["--api-key-env", pasted][..],
        &[pasted],
        &["tools", pasted],
        &["tools", url, "--api-key-env", pasted],
    ] {
        let (code, stdout, stderr) = run_command(args, &env).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(!stdout.contains("SECRET") && !stderr.contains("SECRET"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("looks like an Investra API key") && stderr.contains("export INVESTRA_API_KEY"),
            "{stderr}"
        );
    }
    // The prefix warning, from a one-shot command too.
    let (code, _, stderr) = run_command(
        &["tools", url, "--preset", "investra"],
        &[("INVESTRA_API_KEY", "no_prefix_key_1234567")],
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("warning: the key in INVESTRA_API_KEY does not start with inv_"), "{stderr}");
    // An unknown tool is named, with where the list is.
    let (code, _, stderr) = run_command(&["tool", "nosuch", url, "--preset", "investra"], &env).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains(r#"no tool "nosuch""#) && stderr.contains("mcp-sidecar tools"), "{stderr}");
    // --arg values are typed by the tool's schema: `text` is a string, `a` and `b` numbers.
    let (code, stdout, stderr) =
        run_command(&["tool", "echo", "--arg", "text=true", url, "--preset", "investra"], &env).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(r#""text": "true""#), "{stdout}");
    let (code, stdout, _) =
        run_command(&["tool", "sum", "--arg", "a=2", "--arg", "b=40", url, "--preset", "investra"], &env)
            .await;
    assert_eq!(code, 0);
    assert!(stdout.contains(r#""text": "42""#), "{stdout}");
    // status of an API-key setup names the key's variable, masked.
    let dir = scratch_dir("issue23-11-status");
    let (code, stdout, _) =
        run_command(&["status", url, "--preset", "investra", "--state-dir", dir.to_str().unwrap()], &env)
            .await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("the API key in INVESTRA_API_KEY (inv_…") && !stdout.contains("not signed in"),
        "{stdout}"
    );
    // Credentials in the URL do not silently replace the key.
    let with_user = url.replace("http://", "http://user:pw@");
    let (code, _, stderr) = run_command(&["tools", &with_user, "--preset", "investra"], &env).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("the URL carries credentials") && !stderr.contains("pw@"), "{stderr}");
    // --debug is -v; a command's own options come before the proxy's, which have headings.
    let (code, _, stderr) = run_command(&["--debug", url, "--preset", "investra"], &env).await;
    assert_eq!(code, 0);
    assert!(stderr.contains("DEBUG"), "{stderr}");
    let (_, help, _) = run_command(&["tool", "-h"], &[]).await;
    let (own, shared) = (help.find("--arg <KEY=VALUE>").unwrap(), help.find("Server and key:").unwrap());
    assert!(
        own < shared && help.contains("Rate limits:") && help.contains("Messages and logging:"),
        "{help}"
    );
}

/// Issue 23.11: a proxy started by hand in a terminal said nothing; it says it waits for a
/// client's messages (a pseudo-terminal from util-linux `script`).
#[cfg(unix)]
#[tokio::test]
async fn issue23_11_a_proxy_started_in_a_terminal_says_it_waits_for_a_client() {
    let line = format!("{} http://127.0.0.1:9/mcp --auth none", env!("CARGO_BIN_EXE_mcp-sidecar"));
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qfec", &line, "/dev/null"]).env_clear().env("TERM", "dumb");
    cmd.stdout(std::process::Stdio::piped()).stdin(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let said = tokio::time::timeout(PATIENCE, out.next_line()).await.expect("nothing said").unwrap().unwrap();
    assert!(said.contains("waiting for an MCP client's messages on stdin"), "{said:?}");
    child.kill().await.unwrap();
}

/// Issue 23.3: `tools` against a server that never answers was 310 silent seconds. On a
/// terminal a line says what it waits for after about 2 s, with the one-shot default (60 s,
/// not the proxy's 300); a script's stderr gets no such line.
#[cfg(unix)]
#[tokio::test]
async fn issue23_3_a_stalled_server_is_said_on_a_terminal() {
    use tokio::io::AsyncBufReadExt;
    let (hook, _held) = stalled(true);
    let server = Server::start(generic(), Some(hook)).await;
    let line = format!("{} tools {} --api-key-env TEST_KEY", env!("CARGO_BIN_EXE_mcp-sidecar"), server.url);
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qfec", &line, "/dev/null"]).env_clear().env("TEST_KEY", KEY).env("TERM", "dumb");
    cmd.stdout(std::process::Stdio::piped()).stdin(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let said = tokio::time::timeout(PATIENCE, out.next_line()).await.expect("nothing said").unwrap().unwrap();
    let port = server.url.split(':').nth(2).unwrap().split('/').next().unwrap().to_owned();
    assert!(
        said.contains(&format!(
            "waiting for 127.0.0.1:{port} to answer initialize (nothing yet after 2 s; giving up after 60 s"
        )),
        "{said:?}"
    );
    child.kill().await.unwrap();
    // Not a terminal: no such line; the timeout's error alone.
    let (code, stdout, stderr) =
        run_command(&["tools", &server.url, "--api-key-env", "TEST_KEY", "--request-timeout", "3"], ENV)
            .await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        !stderr.contains("waiting for") && stderr.contains("no answer from 127.0.0.1 within 3 s"),
        "{stderr}"
    );
}

/// Issue 23.3: `check` against a stalled server took 30 s and said "check the URL"; it now takes
/// its own default (10 s a step) and names the step that stalled.
#[tokio::test]
async fn issue23_3_check_names_the_step_that_stalled() {
    let (hook, _held) = stalled(true);
    let server = Server::start(generic(), Some(hook)).await;
    let args = ["check", &server.url, "--api-key-env", "TEST_KEY", "--request-timeout", "1"];
    let (code, stdout, _) = run_command(&args, ENV).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("FAIL mcp handshake") && stdout.contains("sent no answer to initialize within 1 s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the server is stalled or overloaded") && !stdout.contains("check the URL"),
        "{stdout}"
    );

    let (hook, _held) = stalled(false);
    let server = Server::start(generic(), Some(hook)).await;
    let started = std::time::Instant::now();
    let (code, stdout, _) = run_command(&["check", &server.url, "--api-key-env", "TEST_KEY"], ENV).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("FAIL http")
            && stdout.contains("accepted the connection but sent no answer to a plain GET within 10 s"),
        "{stdout}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

// Unix only: util-linux `script` provides the pseudo-terminal; Windows consoles are not ptys.
#[cfg(unix)]
#[tokio::test]
async fn on_a_terminal_a_rate_limit_wait_is_a_countdown() {
    // Three seconds: a later frame still comes when a loaded machine wakes the countdown late.
    let (hook, count) = first_tools_list_429(3);
    let server = Server::start(generic(), Some(hook)).await;
    // util-linux `script` gives the command a pseudo-terminal.
    let line = format!(
        "{} call tools/list --url {} --api-key-env TEST_KEY",
        env!("CARGO_BIN_EXE_mcp-sidecar"),
        server.url
    );
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qfec", &line, "/dev/null"]).env_clear().env("TEST_KEY", KEY).env("TERM", "dumb");
    let out = tokio::time::timeout(PATIENCE, cmd.output()).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Retry-After: 3, plus the jitter of up to a tenth (R-13): the first frame says 3 s, or
    // 4 s when the jitter outlasts the time since the 429 (the count is rounded up).
    assert!(
        ["3", "4"].iter().any(|n| text.contains(&format!("\r\u{1b}[2Kwaiting {n} s for the rate limit"))
            || text.contains(&format!("\rwaiting {n} s for the rate limit"))),
        "{text:?}"
    );
    assert!(text.contains("waiting 2 s") || text.contains("waiting 1 s"), "it counts down: {text:?}");
    assert!(!text.contains(KEY));
    assert_eq!(count.load(Ordering::SeqCst), 2, "the 429, then the retry");
}

// Unix only: the stand-in `claude` logging its argv is a POSIX shell script. On Windows the
// same run (npm's `claude.cmd` found through PATHEXT, the argv it gets) is in the Windows smoke
// test (scripts/windows-smoke.py).
#[cfg(unix)]
#[tokio::test]
/// Issue 10.6: `claude mcp add -e KEY=<key>` put the key in a child's argv, readable by every
/// local user; now no secret is in any argv (Claude Code passes its environment on).
async fn install_for_claude_code_runs_claude_with_no_secret_in_any_argv() {
    let dir = temp("claude");
    let log = dir.join("argv");
    fake_claude(&dir, &format!("for a in \"$@\"; do printf '%s\\n' \"$a\"; done > {}", log.display()));
    let path = path_with(&dir);
    let (code, stdout, stderr) = run_command(
        &["install", "--client", "claude-code", "--name", "inv", "--preset", "investra"],
        &[("PATH", &path), ("INVESTRA_API_KEY", KEY)],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains(" -e "), "{stdout}");
    let argv: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(argv, ["mcp", "add", "inv", "--", "mcp-sidecar", "--preset", "investra"]);
    assert!(argv.iter().all(|a| !a.contains(KEY) && !a.contains("inv_test")), "{argv:?}");
    assert!(stderr.contains("export INVESTRA_API_KEY"), "{stderr}");
}

/// Issue 10.6: `--store-key` keeps the key in Claude Code's own config file (user scope: the
/// top-level mcpServers of .claude.json), merged, backed up, private; `claude` is not run, so
/// nothing carries the key on a command line.
#[tokio::test]
async fn install_for_claude_code_with_store_key_writes_its_config_file() {
    let dir = temp("claude-store");
    let log = dir.join("argv");
    fake_claude(&dir, &format!("echo \"$@\" > {}", log.display()));
    let file = dir.join(".claude.json");
    let before = json!({"numStartups": 3, "mcpServers": {"other": {"type": "stdio", "command": "x", "args": []}},
        "projects": {"/p": {"mcpServers": {}}}});
    std::fs::write(&file, before.to_string()).unwrap();
    let path = path_with(&dir);
    let config_dir = dir.to_string_lossy().into_owned();
    let env =
        [("PATH", path.as_str()), ("INVESTRA_API_KEY", KEY), ("CLAUDE_CONFIG_DIR", config_dir.as_str())];
    let base = ["install", "--client", "claude-code", "--store-key", "--preset", "investra"];
    let (code, shown, _) = run_command(&[&base[..], &["--dry-run"]].concat(), &env).await;
    assert_eq!(code, 0);
    assert!(shown.contains("would add \"investra\"") && shown.contains("inv_…b204"), "{shown}");
    let (code, _, stderr) = run_command(&base, &env).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(!log.exists(), "claude was not run");
    let after: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(after["numStartups"], 3);
    assert_eq!(after["projects"], before["projects"]);
    assert_eq!(after["mcpServers"]["other"], before["mcpServers"]["other"]);
    let entry = &after["mcpServers"]["investra"];
    assert_eq!(entry["type"], "stdio");
    assert_eq!(entry["args"], json!(["--preset", "investra"]));
    assert_eq!(entry["env"]["INVESTRA_API_KEY"], KEY);
    // Windows: the profile folder's ACL keeps it private; no mode bits.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let backups = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".claude.json.bak-"));
    assert_eq!(backups.count(), 1);
}

/// Issue 10.10: the installed entry carries every option the state depends on: after
/// `login --state-dir D --callback-port P`, an entry without them would look for the sign-in
/// elsewhere (and, with `--token-store keyring`, refresh into the plain file).
#[tokio::test]
async fn install_carries_the_options_the_sign_in_state_depends_on() {
    let dir = temp("state-options");
    let file = dir.join("claude_desktop_config.json").to_string_lossy().into_owned();
    let state = dir.join("state").to_string_lossy().into_owned();
    let log = dir.join("logs").join("mcp.log").to_string_lossy().into_owned();
    let install =
        ["install", "--client", "claude-desktop", "--config-file", &file, "https://mcp.example.com/mcp"];
    let given = [
        ("--auth", "oauth"),
        ("--state-dir", state.as_str()),
        ("--callback-port", "8765"),
        ("--auth-timeout", "60"),
        ("--request-timeout", "120"),
        ("--connect-timeout", "5"),
        ("--max-wait", "30"),
        // Issue 25.1, the identity provider's knobs; issue 24, what reaches the model.
        ("--scope", "api://app/.default offline_access"),
        ("--authorize-param", "domain_hint=example.com"),
        ("--deny-tools", "delete_*,admin_*"),
        ("--tool-prefix", "ex_"),
        ("--rename-tool", "search=find"),
        ("--log-file", log.as_str()),
    ];
    let switches = ["--no-resource-indicator", "--use-id-token", "--no-list-cache", "--pin-tools=new-ok"];
    let line: Vec<&str> =
        install.iter().copied().chain(given.iter().flat_map(|(f, v)| [*f, *v])).chain(switches).collect();
    let (code, _, stderr) = run_command(&line, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let args = entry_args(&file, "example");
    for (flag, value) in given {
        let at = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} missing: {args:?}"));
        assert_eq!(args[at + 1], value, "{args:?}");
    }
    for switch in switches {
        assert!(args.iter().any(|a| a == switch), "{switch} missing: {args:?}");
    }
    // Defaults stay out; without --state-dir, an OAuth entry still names the directory this
    // shell resolves (the client's environment may resolve another).
    let line: Vec<&str> =
        install.iter().copied().chain(["--name", "plain", "--request-timeout", "300"]).collect();
    // (XDG_STATE_HOME on Linux and macOS, LOCALAPPDATA on Windows.)
    let (code, _, stderr) = run_command(&line, &[("XDG_STATE_HOME", &state), ("LOCALAPPDATA", &state)]).await;
    assert_eq!(code, 0, "{stderr}");
    let args = entry_args(&file, "plain");
    let resolved = std::path::Path::new(&state).join("mcp-sidecar").display().to_string();
    assert_eq!(args, ["https://mcp.example.com/mcp", "--state-dir", &resolved]);
}

/// Issue 10.8: `check` and `install --dry-run` used to print a 12-character key whole (9
/// leading and 4 trailing characters); a key under 16 characters is shown only as its length.
#[tokio::test]
async fn a_short_key_is_never_printed_by_check_or_install() {
    let short = "inv_a1b2c3d4";
    let opts = Options { keys: vec![short.into()], ..Options::default() };
    let server = Server::start(opts, None).await;
    let env = [("TEST_KEY", short)];
    let ka = key_args(&server);
    let (code, stdout, stderr) = run_command(&with(&["check"], &ka), &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("(12 characters)"), "{stdout}");
    let dir = temp("short-key");
    let file = dir.join("claude_desktop_config.json").to_string_lossy().into_owned();
    let install = ["install", "--client", "claude-desktop", "--dry-run", "--config-file", &file];
    let (code, shown, stderr) = run_command(&with(&install, &ka), &env).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(shown.contains("12 characters"), "{shown}");
    for text in [&stdout, &stderr, &shown] {
        assert!(!text.contains(short) && !text.contains("a1b2c3d4"), "the key leaked:\n{text}");
    }
}

/// Issue 11: `check` reports what the server's budget held back during the check.
#[tokio::test]
async fn check_reports_the_budget_it_waited_for() {
    let opts = Options {
        keys: vec![KEY.into()],
        per_minute: Some(2),
        window_secs: 1,
        limit_headers: true,
        ..Options::default()
    };
    let server = Server::start(opts, None).await;
    let ka = key_args(&server);
    let (code, stdout, stderr) = run_command(&with(&["check"], &ka), ENV).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let limits = stdout.lines().find(|l| l.contains("rate limits")).unwrap_or_default();
    assert!(
        limits.contains("x-ratelimit-remaining") && limits.contains("held by the server's budget"),
        "{stdout}"
    );
    assert!(limits.contains("0 answers with HTTP 429"), "{limits}");
}

/// Puts a stand-in `claude` in `dir`: a shell script running `body` (Unix); on Windows a
/// `claude.cmd` that only records that it ran (npm installs `claude.cmd` there).
fn fake_claude(dir: &std::path::Path, body: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(dir.join("claude"), format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(dir.join("claude"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    #[cfg(windows)]
    {
        let _ = body;
        std::fs::write(dir.join("claude.cmd"), format!("@echo ran > \"{}\"\r\n", dir.join("argv").display()))
            .unwrap();
    }
}

/// `PATH` with `dir` first, then the system's programs.
fn path_with(dir: &std::path::Path) -> String {
    let system: Vec<std::path::PathBuf> = if cfg!(windows) {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect()
    } else {
        vec!["/usr/bin".into(), "/bin".into()]
    };
    let all = std::iter::once(dir.to_path_buf()).chain(system);
    std::env::join_paths(all).unwrap().into_string().unwrap()
}
