//! `--api-key-command "op read op://Private/Investra/key"` (issue 25.2): the key is what a
//! command prints, for security teams that forbid keys in config files and the environment
//! (1Password's `op`, `pass`, `security find-generic-password -w`, `vault kv get -field=key`).
//!
//! The command line is split by shell-word rules (quotes, backslashes) and run without a shell,
//! with no stdin; its stdout, trimmed, is the key (at most [`MAX_OUTPUT`] bytes: a command that
//! prints more is not printing a key); its stderr is shown when it fails; it is stopped after
//! [`TIMEOUT`] (a vault waiting for a fingerprint gets that long). It runs at start and once more
//! after a 401 (a rotated key). A leaf: blocking, so the proxy runs it off its runtime thread.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;

/// How long the command may take.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The most a key command may print.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// The command line as argv, by shell-word rules; an error for people when it is not one.
pub fn split(command: &str) -> Result<Vec<String>, String> {
    match shlex::split(command) {
        Some(argv) if !argv.is_empty() => Ok(argv),
        Some(_) => Err("--api-key-command is empty: give the command that prints the key".into()),
        None => Err(format!(
            "--api-key-command {command:?} cannot be read as a command line (an unclosed quote?): quote it as you would in a shell"
        )),
    }
}

/// Runs `argv` and returns what it printed, trimmed: the key; or why there is none, for people.
pub fn run(argv: &[String], timeout: Duration) -> Result<SecretString, String> {
    let (program, args) = argv.split_first().ok_or("--api-key-command is empty")?;
    let shown = program.as_str();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("--api-key-command could not start {shown} ({e}): check that it is installed and on PATH")
        })?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    // Read both pipes while it runs (a full pipe would stop it), each within its bound.
    let out = std::thread::spawn(move || bounded(&mut stdout, MAX_OUTPUT + 1));
    let err = std::thread::spawn(move || bounded(&mut stderr, 4096));
    let deadline = Instant::now().checked_add(timeout);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "--api-key-command ({shown}) did not finish within {} s: check that it does not wait for input (unlock the vault first)",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("--api-key-command ({shown}): {e}")),
        }
    };
    let out = out.join().unwrap_or_default();
    let said = String::from_utf8_lossy(&err.join().unwrap_or_default()).trim().to_owned();
    if !status.success() {
        let said = if said.is_empty() { String::new() } else { format!(": {}", crate::net::cut(&said, 300)) };
        return Err(format!(
            "--api-key-command ({shown}) failed ({status}){said}: run it in a terminal to see why"
        ));
    }
    if out.len() > MAX_OUTPUT {
        return Err(format!(
            "--api-key-command ({shown}) printed more than {} KiB, which is not a key: make it print the key alone",
            MAX_OUTPUT / 1024
        ));
    }
    let key = String::from_utf8(out)
        .map_err(|_| format!("--api-key-command ({shown}) printed something that is not text"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("--api-key-command ({shown}) printed nothing: make it print the key on stdout"));
    }
    if key.contains(['\n', '\r']) {
        return Err(format!(
            "--api-key-command ({shown}) printed more than one line: make it print the key alone"
        ));
    }
    Ok(SecretString::from(key.to_owned()))
}

/// Up to `limit` bytes of `r` (the rest is read and dropped, so the writer is not stopped).
fn bounded(r: &mut impl Read, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let _ = r.by_ref().take(limit as u64).read_to_end(&mut kept);
    let _ = std::io::copy(r, &mut std::io::sink());
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell() {
        assert_eq!(
            split("op read 'op://Private/My Key/credential'").unwrap(),
            ["op", "read", "op://Private/My Key/credential"]
        );
        assert_eq!(split(r#"pass show "investra key""#).unwrap(), ["pass", "show", "investra key"]);
        assert!(split("op read 'unclosed").unwrap_err().contains("unclosed quote"));
        assert!(split("   ").unwrap_err().contains("empty"));
    }

    #[cfg(unix)]
    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    /// Issue 25.2's hostile commands: one that prints a key, fails, hangs, prints 10 MB or
    /// nothing, or is not there.
    #[cfg(unix)]
    #[test]
    fn key_commands_good_and_bad() {
        use secrecy::ExposeSecret;
        let key = run(&sh("printf '  inv_key_123 \\n'"), TIMEOUT).unwrap();
        assert_eq!(key.expose_secret(), "inv_key_123");
        let failed = run(&sh("echo 'vault is locked' >&2; exit 3"), TIMEOUT).unwrap_err();
        assert!(failed.contains("failed") && failed.contains("vault is locked"), "{failed}");
        let hung = run(&sh("sleep 30"), Duration::from_millis(200)).unwrap_err();
        assert!(hung.contains("did not finish within"), "{hung}");
        let huge = run(&sh("head -c 10000000 /dev/zero | tr '\\0' x"), TIMEOUT).unwrap_err();
        assert!(huge.contains("more than 64 KiB"), "{huge}");
        let nothing = run(&sh("true"), TIMEOUT).unwrap_err();
        assert!(nothing.contains("printed nothing"), "{nothing}");
        let two = run(&sh("printf 'a\\nb\\n'"), TIMEOUT).unwrap_err();
        assert!(two.contains("more than one line"), "{two}");
        let missing = run(&["/nonexistent/op".to_owned()], TIMEOUT).unwrap_err();
        assert!(missing.contains("could not start"), "{missing}");
    }
}
