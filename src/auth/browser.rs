//! Opening the authorization URL in the user's browser.
//!
//! `$BROWSER` is honoured (a `:`-separated list of commands, `%s` standing for the URL, else the
//! URL is the last argument; the convention of xdg-utils and Python's `webbrowser`), which is
//! also how tests and headless machines drive the flow. Without it: `xdg-open` on Linux and the
//! BSDs, `open` on macOS. The command runs directly, never through a shell, with stdin,
//! stdout and stderr closed: nothing it prints can reach the MCP client on our stdout. The URL
//! is printed on stderr too, for when no browser opens.

use std::process::{Command, Stdio};

use tracing::debug;
use url::Url;

/// Opens `url`; returns whether a launcher started. Only http(s) URLs are ever opened.
pub fn open(url: &Url, browser_var: Option<&str>) -> bool {
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    for argv in commands(url.as_str(), browser_var) {
        let Some((program, args)) = argv.split_first() else { continue };
        let started = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match started {
            Ok(mut child) => {
                // Reap it in the background: a launcher that lingers must not become a zombie.
                std::thread::spawn(move || child.wait());
                return true;
            }
            Err(e) => debug!("could not start the browser command {program:?}: {e}"),
        }
    }
    false
}

/// The commands to try, in order, each as argv.
fn commands(url: &str, browser_var: Option<&str>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    if let Some(var) = browser_var.filter(|v| !v.trim().is_empty()) {
        for entry in var.split(':').filter(|e| !e.trim().is_empty()) {
            let mut argv: Vec<String> = entry.split_whitespace().map(str::to_owned).collect();
            if argv.iter().any(|a| a.contains("%s")) {
                for a in &mut argv {
                    *a = a.replace("%s", url);
                }
            } else {
                argv.push(url.to_owned());
            }
            out.push(argv);
        }
        return out;
    }
    let default = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    out.push(vec![default.to_owned(), url.to_owned()]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_variable_forms() {
        let u = "https://as.example/authorize?a=1&b=2";
        assert_eq!(commands(u, Some("firefox")), vec![vec!["firefox".to_owned(), u.to_owned()]]);
        assert_eq!(
            commands(u, Some("my-browser --new-tab %s:lynx")),
            vec![
                vec!["my-browser".to_owned(), "--new-tab".to_owned(), u.to_owned()],
                vec!["lynx".to_owned(), u.to_owned()]
            ]
        );
        let default = commands(u, None);
        assert_eq!(default.len(), 1);
        assert_eq!(default[0][1], u, "the URL is one argument, never shell text");
    }

    #[test]
    fn only_web_urls_are_opened() {
        for bad in ["javascript:alert(1)", "file:///etc/passwd", "data:text/html,x", "vbscript:x"] {
            assert!(!open(&Url::parse(bad).unwrap(), Some("true")), "{bad}");
        }
    }
}
