//! What differs between operating systems, in one place: how the end of the client is noticed
//! (its death, a signal). Each `cfg` block says why it exists; everything above this module is
//! the same on every platform.

use std::future::Future;
use std::time::Duration;

use tracing::warn;

/// How often the parent process is checked.
#[cfg(any(unix, windows))]
const PARENT_CHECK: Duration = Duration::from_millis(500);

/// Resolves when the process that started us has exited, even if stdin stays open (a grandchild
/// may hold it): a crashed client must not leave its proxies behind.
pub async fn parent_gone() {
    // Unix re-parents an orphan, so the parent id changes. Started by init (parent 1), there is
    // nothing to watch.
    #[cfg(unix)]
    {
        let parent = std::os::unix::process::parent_id();
        if parent != 1 {
            let mut tick = tokio::time::interval(PARENT_CHECK);
            loop {
                tick.tick().await;
                if std::os::unix::process::parent_id() != parent {
                    return;
                }
            }
        }
    }
    // Windows neither re-parents nor signals: the parent's process handle, opened at start, is
    // signalled when it exits (issue 12). Finding it takes a process snapshot: off the runtime.
    #[cfg(windows)]
    {
        match tokio::task::spawn_blocking(windows::Parent::open).await {
            Ok(windows::Watch::Parent(parent)) => {
                let mut tick = tokio::time::interval(PARENT_CHECK);
                loop {
                    tick.tick().await;
                    if parent.exited() {
                        return;
                    }
                }
            }
            // It exited before we could open it (`start /b`, a launcher that did not wait).
            Ok(windows::Watch::Gone) => return,
            Ok(windows::Watch::Unknown) | Err(_) => {}
        }
    }
    std::future::pending::<()>().await
}

/// Resolves on what asks a console program to stop: Ctrl-C everywhere; SIGTERM on Unix; on
/// Windows Ctrl-Break and the console window closing (or the session ending), which Windows
/// sends instead of SIGTERM. A signal that cannot be listened for is logged and never fires: the
/// proxy keeps running (stdin EOF and a vanished client still end it), instead of taking the
/// failed registration for a signal and stopping at once.
pub async fn shutdown_signal() {
    let interrupt = or_forever("Ctrl-C (SIGINT)", tokio::signal::ctrl_c());
    // Unix: SIGTERM is what service managers and MCP clients send to stop a server.
    #[cfg(unix)]
    let terminate = or_forever("SIGTERM", async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        Ok(())
    });
    // Windows: Ctrl-Break, and CTRL_CLOSE_EVENT when the console closes (Windows then allows a
    // few seconds before it ends the process: enough for the DELETE and the bounded final flush).
    #[cfg(windows)]
    let terminate = async {
        use tokio::signal::windows;
        let brk = or_forever("Ctrl-Break", async { windows::ctrl_break()?.recv().await.ok_or_else(gone) });
        let close =
            or_forever("the console closing", async { windows::ctrl_close()?.recv().await.ok_or_else(gone) });
        let shutdown = or_forever("the system shutting down", async {
            windows::ctrl_shutdown()?.recv().await.ok_or_else(gone)
        });
        tokio::select! {
            _ = brk => {}
            _ = close => {}
            _ = shutdown => {}
        }
    };
    #[cfg(not(any(unix, windows)))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}

/// A console event stream that ended: no event will come.
#[cfg(windows)]
fn gone() -> std::io::Error {
    std::io::Error::other("the event stream ended")
}

/// Waits for `signal`; if listening for it failed, says so once and waits forever.
async fn or_forever(what: &str, signal: impl Future<Output = std::io::Result<()>>) {
    if let Err(e) = signal.await {
        warn!(
            "cannot listen for {what} ({e}); mcp-sidecar still stops when stdin closes or the client exits"
        );
        std::future::pending::<()>().await
    }
}

/// The parent process on Windows, by handle.
#[cfg(windows)]
mod windows {
    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_INVALID_PARAMETER, FILETIME, GetLastError, HANDLE, INVALID_HANDLE_VALUE,
        WAIT_OBJECT_0,
    };
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, PROCESSENTRY32W, Process32FirstW, Process32NextW, TH32CS_SNAPPROCESS,
    };
    use windows_sys::Win32::System::Threading::{
        GetCurrentProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
        PROCESS_SYNCHRONIZE, WaitForSingleObject,
    };

    /// An open handle to the process that started us.
    pub struct Parent(HANDLE);

    /// What can be known of the parent at start.
    pub enum Watch {
        /// Alive, and watched through its handle.
        Parent(Parent),
        /// Exited already: its id names no process, or a process younger than us (the id was
        /// reused after our parent exited).
        Gone,
        /// Cannot be told (no parent in the snapshot, one we may not open, or one outside
        /// Windows' view, as a Linux process is under Wine): nothing to watch.
        Unknown,
    }

    // SAFETY: a process handle is a kernel object reference, usable from any thread.
    unsafe impl Send for Parent {}
    unsafe impl Sync for Parent {}

    impl Parent {
        /// The parent: found by id in a process snapshot, opened, and checked to be older than
        /// us (an id is reused once its process has exited: a younger process with the same id
        /// is not our parent, whose exit then already happened).
        pub fn open() -> Watch {
            // SAFETY: the pseudo-handle of the current process needs no closing.
            let ours = unsafe { created(GetCurrentProcess()) }.unwrap_or(u64::MAX);
            parent_id().map_or(Watch::Unknown, |id| Parent::by_id(id, ours))
        }

        /// Process `id`, expected to have been created no later than `born_by`.
        pub fn by_id(id: u32, born_by: u64) -> Watch {
            // SAFETY: a plain Win32 call; the handle is owned by the `Parent` (closed on drop).
            let handle =
                unsafe { OpenProcess(PROCESS_SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, 0, id) };
            if handle.is_null() {
                // No such process: gone. Otherwise not ours to open (an elevated parent).
                // SAFETY: reads this thread's last error, set by OpenProcess.
                let gone = unsafe { GetLastError() } == ERROR_INVALID_PARAMETER;
                return if gone { Watch::Gone } else { Watch::Unknown };
            }
            let parent = Parent(handle);
            // SAFETY: the handle is open with PROCESS_QUERY_LIMITED_INFORMATION.
            match unsafe { created(handle) } {
                Some(theirs) if theirs > born_by => Watch::Gone,
                // An exited process stays openable while anything holds a handle to it.
                _ if parent.exited() => Watch::Gone,
                _ => Watch::Parent(parent),
            }
        }

        /// Whether the parent has exited; never waits.
        pub fn exited(&self) -> bool {
            // SAFETY: the handle is open for SYNCHRONIZE until drop; a zero timeout only polls.
            unsafe { WaitForSingleObject(self.0, 0) == WAIT_OBJECT_0 }
        }
    }

    impl Drop for Parent {
        fn drop(&mut self) {
            // SAFETY: the handle was opened by `open` and is closed once, here.
            unsafe { CloseHandle(self.0) };
        }
    }

    /// A process's creation time, in 100 ns ticks.
    unsafe fn created(process: HANDLE) -> Option<u64> {
        let zero = FILETIME { dwLowDateTime: 0, dwHighDateTime: 0 };
        let (mut c, mut e, mut k, mut u) = (zero, zero, zero, zero);
        // SAFETY: the out-pointers are valid FILETIMEs on this stack frame.
        let ok = unsafe { GetProcessTimes(process, &mut c, &mut e, &mut k, &mut u) };
        (ok != 0).then(|| (u64::from(c.dwHighDateTime) << 32) | u64::from(c.dwLowDateTime))
    }

    /// Our parent's process id, from a snapshot of the processes.
    fn parent_id() -> Option<u32> {
        let us = std::process::id();
        // SAFETY: the snapshot handle is closed before returning; the entry's size is set as
        // Process32FirstW requires.
        unsafe {
            let snapshot = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
            if snapshot == INVALID_HANDLE_VALUE {
                return None;
            }
            let mut entry: PROCESSENTRY32W = std::mem::zeroed();
            entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
            let mut found = None;
            let mut more = Process32FirstW(snapshot, &mut entry) != 0;
            while more {
                if entry.th32ProcessID == us {
                    found = Some(entry.th32ParentProcessID);
                    break;
                }
                more = Process32NextW(snapshot, &mut entry) != 0;
            }
            CloseHandle(snapshot);
            found.filter(|&id| id != 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_signal_registration_is_not_a_signal() {
        let failed = async { Err(std::io::Error::other("no signal driver")) };
        let waited = tokio::time::timeout(Duration::from_secs(3600), or_forever("SIGTERM", failed)).await;
        assert!(waited.is_err(), "a registration failure must not end the run");
        let fired =
            tokio::time::timeout(Duration::from_secs(1), or_forever("SIGTERM", async { Ok(()) })).await;
        assert!(fired.is_ok(), "a real signal ends it");
    }

    /// Issue 12: on Windows a process handle tells when the parent exits, and a process younger
    /// than the one asking is not taken for its parent (a reused id).
    #[cfg(windows)]
    #[test]
    fn a_parent_that_exits_is_noticed_on_windows() {
        use std::io::Write;
        use windows::Watch;
        match windows::Parent::open() {
            Watch::Parent(p) => assert!(!p.exited(), "the test runner's parent is alive"),
            // Under Wine the runner's parent is a Linux process, which Windows cannot see.
            Watch::Unknown => {}
            Watch::Gone => panic!("the test runner's parent is alive"),
        }
        // Under Wine a spawn can fail with ERROR_INTERNAL_ERROR (1359) while the wineserver of
        // an earlier run is still going down (seen once in CI): tried up to three times.
        let spawn = || {
            std::process::Command::new("cmd")
                .args(["/c", "set /p line="])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
        };
        let mut child = spawn().or_else(|_| spawn()).or_else(|_| spawn()).unwrap();
        assert!(matches!(windows::Parent::by_id(child.id(), 0), Watch::Gone), "younger: not the parent");
        let Watch::Parent(watched) = windows::Parent::by_id(child.id(), u64::MAX) else {
            panic!("a live child can be watched")
        };
        assert!(!watched.exited(), "it waits for a line");
        child.stdin.take().unwrap().write_all(b"done\r\n").unwrap();
        child.wait().unwrap();
        assert!(watched.exited());
        // Once nothing holds it open, its id names no process: gone, not unknown.
        let id = child.id();
        drop((watched, child));
        assert!(matches!(windows::Parent::by_id(id, u64::MAX), Watch::Gone), "an exited process is gone");
    }
}
