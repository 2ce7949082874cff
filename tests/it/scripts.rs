//! The README's commands as scripts (issue 23.12): `scripts/test.sh` brings what the tests need.
//! Driven for real with bash, against stand-in `apt-get`, `sudo` and `cargo` that record how they
//! were called (nothing is installed here).

use std::path::Path;

/// A stand-in command that appends its arguments to `log`.
fn stub(dir: &Path, name: &str, log: &Path) {
    let path = dir.join(name);
    let body = format!("#!/bin/sh\necho \"$*\" >> '{}'\n", log.display());
    std::fs::write(&path, body).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
}

/// Runs scripts/test.sh with only `dir` on PATH; returns its status and what each stand-in saw.
fn run_test_sh(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test.sh");
    let status = std::process::Command::new("/bin/bash")
        .arg(&script)
        .args(args)
        .env_clear()
        .env("PATH", dir)
        .status()
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    (status.success(), read("apt-get.log"), read("cargo.log"))
}

#[test]
fn issue23_12_the_test_command_installs_redis_server_where_missing_then_runs_cargo_test() {
    let dir = crate::harness::scratch_dir("test-sh-missing");
    // `sudo` runs what it is given (a user that is not root), `env` is the real one.
    std::fs::write(dir.join("sudo"), "#!/bin/sh\nexec \"$@\"\n").unwrap();
    let mut perms = std::fs::metadata(dir.join("sudo")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.join("sudo"), perms).unwrap();
    let _ = std::os::unix::fs::symlink("/usr/bin/env", dir.join("env"));
    stub(&dir, "apt-get", &dir.join("apt-get.log"));
    stub(&dir, "cargo", &dir.join("cargo.log"));
    let (ok, apt, cargo) = run_test_sh(&dir, &["--features", "keyring"]);
    assert!(ok);
    assert!(apt.contains("update") && apt.contains("install -y -qq redis-server"), "{apt}");
    assert_eq!(cargo.trim(), "test --locked --features keyring");

    // With a redis-server on PATH, nothing is installed.
    let dir = crate::harness::scratch_dir("test-sh-present");
    stub(&dir, "redis-server", &dir.join("redis.log"));
    stub(&dir, "apt-get", &dir.join("apt-get.log"));
    stub(&dir, "cargo", &dir.join("cargo.log"));
    let (ok, apt, cargo) = run_test_sh(&dir, &[]);
    assert!(ok);
    assert!(apt.is_empty(), "{apt}");
    assert_eq!(cargo.trim(), "test --locked");
}

#[test]
fn issue23_12_without_redis_server_or_a_package_manager_it_says_what_to_install() {
    let dir = crate::harness::scratch_dir("test-sh-nothing");
    stub(&dir, "cargo", &dir.join("cargo.log"));
    let (ok, _, cargo) = run_test_sh(&dir, &[]);
    assert!(!ok);
    assert!(cargo.is_empty(), "cargo test must not run without redis-server: {cargo}");
}
