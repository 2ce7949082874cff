//! The policies' files in the state dir (`pins/`, `kept/`): each written whole, off the runtime
//! thread, the newest version only, and flushed at shutdown (nothing is lost on shutdown).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::sync::Locked;

/// One file of a policy.
pub(in crate::proxy) struct Disk {
    path: PathBuf,
    /// The version last written, held while a write runs (never by the runtime's threads).
    written: Arc<Mutex<u64>>,
    /// The last write started: [`Disk::flush`] waits for it.
    pending: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Disk {
    pub(in crate::proxy) fn new(path: PathBuf) -> Disk {
        Disk { path, written: Arc::default(), pending: Mutex::default() }
    }

    pub(in crate::proxy) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `job` (which writes `version` of the file and says whether it did) on a blocking
    /// thread, unless a newer version was written meanwhile. Outside a runtime: not at all.
    pub(in crate::proxy) fn write(&self, version: u64, job: impl FnOnce(&Path) -> bool + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (path, written) = (self.path.clone(), self.written.clone());
        let handle = runtime.spawn_blocking(move || {
            let mut done = written.locked();
            if *done < version && job(&path) {
                *done = version;
            }
        });
        *self.pending.locked() = Some(handle);
    }

    /// Waits for the last write (a later one waits for those before it).
    pub(in crate::proxy) async fn flush(&self) {
        let pending = self.pending.locked().take();
        if let Some(handle) = pending {
            let _ = handle.await;
        }
    }
}
