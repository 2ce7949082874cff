//! Opening the authorization URL in the user's browser.
//!
//! `$BROWSER` is honoured first, which is also how tests and headless machines drive the flow:
//! a list of commands separated like `PATH` (`:` on Unix, `;` on Windows, where `:` is part of
//! `C:\…`; the convention of xdg-utils and Python's `webbrowser`), each with `%s` standing for the
//! URL, else the URL as the last argument. A program path with spaces (`C:\Program Files\…`) is
//! written in double quotes, or given alone. Without `$BROWSER`, the `open` crate picks the
//! platform's launcher: `ShellExecuteW` on Windows, `open` on macOS, `xdg-open` (then `gio`,
//! `wslview`, …) elsewhere. Commands run directly, never through a shell (A-31), with stdin,
//! stdout and stderr closed: nothing they print can reach the MCP client on our stdout. The URL is
//! printed on stderr too, for when no browser opens.

use std::process::{Command, Stdio};

use tracing::debug;
use url::Url;

/// Opens `url`; returns whether a launcher started. Only http(s) URLs are ever opened. Runs on
/// the blocking pool: starting a process (or `ShellExecuteW`) must not stall the runtime thread.
pub async fn open(url: &Url, browser_var: Option<&str>) -> bool {
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    let url = url.as_str().to_owned();
    let browser_var = browser_var.map(str::to_owned);
    tokio::task::spawn_blocking(move || open_now(&url, browser_var.as_deref())).await.unwrap_or(false)
}

/// Issue 14: whether no browser can be opened for the user here: no `$BROWSER`, and a session
/// over SSH (the browser would open on the remote machine, if anywhere) or, on Linux and the
/// BSDs, no graphical display. `env` looks a variable up.
pub fn unavailable(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    if set("BROWSER") {
        return false;
    }
    // macOS and Windows always have a desktop to open a browser on, unless reached over SSH.
    let no_display = cfg!(all(unix, not(target_os = "macos"))) && !set("DISPLAY") && !set("WAYLAND_DISPLAY");
    set("SSH_CONNECTION") || set("SSH_TTY") || no_display
}

fn open_now(url: &str, browser_var: Option<&str>) -> bool {
    let Some(var) = browser_var.filter(|v| !v.trim().is_empty()) else {
        return match open::that_detached(url) {
            Ok(()) => true,
            Err(e) => {
                debug!("could not open a browser: {e}");
                false
            }
        };
    };
    for argv in commands(url, var) {
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

#[cfg(test)]
mod headless_tests {
    #[test]
    fn no_browser_over_ssh_or_without_a_display() {
        let with = |vars: &'static [(&'static str, &'static str)]| {
            move |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
        };
        assert!(super::unavailable(&with(&[("SSH_CONNECTION", "1 2 3 4"), ("DISPLAY", ":0")])));
        assert!(!super::unavailable(&with(&[("SSH_TTY", "/dev/pts/1"), ("BROWSER", "w3m")])));
        assert!(!super::unavailable(&with(&[("DISPLAY", ":0")])));
        assert_eq!(super::unavailable(&with(&[])), cfg!(all(unix, not(target_os = "macos"))));
    }
}

/// What separates the commands of `$BROWSER`: the platform's `PATH` separator.
const SEPARATOR: char = if cfg!(windows) { ';' } else { ':' };

/// The commands of `$BROWSER` to try, in order, each as argv.
fn commands(url: &str, var: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for entry in var.split(SEPARATOR).map(str::trim).filter(|e| !e.is_empty()) {
        let mut argv = if std::path::Path::new(entry).is_file() {
            // A program path given alone, spaces and all.
            vec![entry.to_owned()]
        } else {
            words(entry)
        };
        if argv.iter().any(|a| a.contains("%s")) {
            for a in &mut argv {
                *a = a.replace("%s", url);
            }
        } else {
            argv.push(url.to_owned());
        }
        out.push(argv);
    }
    out
}

/// Splits a command at whitespace, keeping "double-quoted parts" together. Backslashes are plain
/// characters (they are Windows path separators), so there is no escaping.
fn words(entry: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in entry.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_variable_forms() {
        let u = "https://as.example/authorize?a=1&b=2";
        let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        assert_eq!(commands(u, "firefox"), vec![s(&["firefox", u])]);
        let two = format!("my-browser --new-tab %s{SEPARATOR}lynx");
        assert_eq!(commands(u, &two), vec![s(&["my-browser", "--new-tab", u]), s(&["lynx", u])]);
        assert_eq!(commands(u, &format!("{SEPARATOR}{SEPARATOR} ")), Vec::<Vec<String>>::new());
    }

    /// Issue 12: a Windows program path has a drive letter and spaces; `:` does not split it there.
    #[test]
    fn program_paths_with_spaces_and_drive_letters() {
        let u = "https://as.example/authorize";
        let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            words(r#""C:\Program Files\Mozilla Firefox\firefox.exe" -new-tab %s"#),
            s(&[r"C:\Program Files\Mozilla Firefox\firefox.exe", "-new-tab", "%s"])
        );
        assert_eq!(words(r#"a "" b"#), s(&["a", "", "b"]), "an empty quoted argument stays");
        #[cfg(windows)]
        assert_eq!(
            commands(u, r#""C:\Program Files\Firefox\firefox.exe";C:\Tools\lynx.exe"#),
            vec![s(&[r"C:\Program Files\Firefox\firefox.exe", u]), s(&[r"C:\Tools\lynx.exe", u])]
        );
        // A program given alone, unquoted, with spaces in its path: taken whole when it exists.
        let dir = std::env::temp_dir().join(format!("mcp sidecar browser {}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = dir.join("my browser");
        std::fs::write(&program, b"").unwrap();
        let whole = program.to_str().unwrap();
        assert_eq!(commands(u, whole), vec![s(&[whole, u])]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn only_web_urls_are_opened() {
        for bad in ["javascript:alert(1)", "file:///etc/passwd", "data:text/html,x", "vbscript:x"] {
            assert!(!open(&Url::parse(bad).unwrap(), Some("true")).await, "{bad}");
        }
    }
}
