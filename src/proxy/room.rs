//! Room in flight: the bytes of the messages from stdin still being sent or waiting for their
//! answers are bounded (issue 10.15), so a client that writes faster than the server answers
//! cannot grow memory without bound.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The messages from stdin still being sent or waiting for their answers may hold this many
/// times `--max-message-bytes` (64 MiB by default); a request past that is answered at once with
/// an `overloaded` error, and notifications, responses and batches wait for room (issue 10.15).
pub const IN_FLIGHT_MESSAGES: usize = 4;

/// The room for messages in flight, in bytes.
pub(super) struct Room {
    bytes: Arc<Semaphore>,
    limit: u32,
}

impl Room {
    pub(super) fn new(max_message: usize) -> Room {
        let limit = in_flight_limit(max_message);
        Room { bytes: Arc::new(Semaphore::new(limit as usize)), limit }
    }

    /// The room in bytes, for people.
    pub(super) fn limit(&self) -> u32 {
        self.limit
    }

    /// Room for a message of `len` bytes, if there is some now (a message larger than all the
    /// room fits when nothing else is in flight).
    pub(super) fn now(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        self.bytes.clone().try_acquire_many_owned(self.needed(len)).ok()
    }

    /// Room for a message of `len` bytes, waiting for it (backpressure on stdin).
    pub(super) async fn wait(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        self.bytes.clone().acquire_many_owned(self.needed(len)).await.ok()
    }

    fn needed(&self, len: usize) -> u32 {
        u32::try_from(len.max(1)).unwrap_or(u32::MAX).min(self.limit)
    }
}

/// Runs `task` holding `room` in flight; the room is given back when it ends or is aborted.
pub(super) async fn holding<F: std::future::Future>(
    room: Option<OwnedSemaphorePermit>,
    task: F,
) -> F::Output {
    let _room = room;
    task.await
}

/// The room for messages in flight, in bytes (at most what a semaphore counts).
fn in_flight_limit(max_message: usize) -> u32 {
    u32::try_from(max_message.saturating_mul(IN_FLIGHT_MESSAGES).min(Semaphore::MAX_PERMITS))
        .unwrap_or(u32::MAX)
}
