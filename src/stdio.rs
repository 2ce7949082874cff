//! stdio framing: the bounded line decoder for stdin and the single writer that owns stdout.
//!
//! Messages are newline-delimited (S-02); a trailing CR is tolerated; blank lines are skipped. A
//! line longer than the configured maximum is discarded up to its newline and reported as
//! [`Frame::TooLong`] with its first bytes, so the proxy can answer it and keep running. This
//! module never parses JSON, and nothing else in the crate writes to stdout: every outgoing line
//! goes through [`Outbox`] to the one task running [`write_lines`] (S-04).

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// The default maximum size of one message, on stdin and from the server (`--max-message-bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How much of an over-long line is kept to recover its id.
const TOO_LONG_PREFIX_BYTES: usize = 4096;
/// How much stdin is asked for at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One unit read from stdin.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its line ending.
    Line(Bytes),
    /// A line over the limit, discarded; `len` bytes long, starting with `prefix`.
    TooLong { len: usize, prefix: Vec<u8> },
}

/// An over-long line being discarded.
#[derive(Debug, Default)]
struct Discard {
    /// Bytes discarded so far.
    len: usize,
    /// Its first bytes, to recover the id.
    prefix: Vec<u8>,
    /// Whether the last discarded byte was a CR (the line ending's, if a LF follows at once).
    ends_with_cr: bool,
}

/// Splits a byte stream into lines of at most `max` bytes (not counting the line ending).
pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    /// How far `buf` is known to hold no newline.
    scanned: usize,
    max: usize,
    /// While discarding an over-long line: what is known of it so far.
    discarding: Option<Discard>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader that accepts lines of up to `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            scanned: 0,
            max,
            discarding: None,
            eof: false,
        }
    }

    /// The next frame, or `None` at end of input. A final line without a newline still counts.
    pub async fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                let end = self.scanned + i;
                let line = self.buf.split_to(end + 1);
                self.scanned = 0;
                if let Some(frame) = self.finish_line(line.freeze(), end) {
                    return Ok(Some(frame));
                }
                continue;
            }
            self.scanned = self.buf.len();
            // One byte of slack: a line of exactly `max` bytes may be followed by the CR of a
            // CRLF before its LF arrives; more than that is over the limit however it ends.
            if self.buf.len() > self.max.saturating_add(1) || self.discarding.is_some() {
                self.discard_buffered();
            }
            if self.eof {
                if self.buf.is_empty() && self.discarding.is_none() {
                    return Ok(None);
                }
                let len = self.buf.len();
                let line = self.buf.split().freeze();
                self.scanned = 0;
                match self.finish_line(line, len) {
                    Some(frame) => return Ok(Some(frame)),
                    None => return Ok(None),
                }
            }
            self.buf.reserve(READ_CHUNK_BYTES);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }

    /// Moves buffered bytes of an over-long line into the discard count.
    fn discard_buffered(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let d = self.discarding.get_or_insert_with(Discard::default);
        let keep = TOO_LONG_PREFIX_BYTES.saturating_sub(d.prefix.len()).min(self.buf.len());
        d.prefix.extend_from_slice(&self.buf[..keep]);
        d.len = d.len.saturating_add(self.buf.len());
        d.ends_with_cr = self.buf.last() == Some(&b'\r');
        self.buf.clear();
        self.scanned = 0;
    }

    /// Turns the bytes of one line (`content_len` bytes before the newline) into a frame.
    fn finish_line(&mut self, mut line: Bytes, content_len: usize) -> Option<Frame> {
        line.truncate(content_len);
        if let Some(mut d) = self.discarding.take() {
            let keep = TOO_LONG_PREFIX_BYTES.saturating_sub(d.prefix.len()).min(line.len());
            d.prefix.extend_from_slice(&line[..keep]);
            // The length reported is the line's content, without the CR of a CRLF, whichever
            // chunk that CR arrived in: the same line gives the same frame however it is split.
            let cr = match line.last() {
                Some(b) => *b == b'\r',
                None => d.ends_with_cr,
            };
            let len = d.len.saturating_add(line.len()) - usize::from(cr);
            d.prefix.truncate(len);
            return Some(Frame::TooLong { len, prefix: d.prefix });
        }
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.len() > self.max {
            let prefix = line[..TOO_LONG_PREFIX_BYTES.min(line.len())].to_vec();
            return Some(Frame::TooLong { len: line.len(), prefix });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(Frame::Line(line))
    }
}

/// Outgoing messages waiting for stdout may hold this many times `--max-message-bytes` (32 MiB
/// by default) before senders wait (backpressure); one message larger than that fits when
/// nothing else waits.
pub const OUTBOX_MESSAGES: usize = 2;

/// One queued message and the room it takes in the outbox, given back once it is written.
type Queued = (Bytes, OwnedSemaphorePermit);

/// The sending side of stdout: cheap to clone, one complete message per item. Bounded in bytes:
/// a sender first reserves room ([`Outbox::reserve`], which may wait and can be cancelled
/// without effect), then hands the message over with [`Slot::send`], which cannot wait or fail
/// halfway, so a task aborted while stdout is backed up has either queued its message or
/// changed nothing.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    /// The permits that stand for the whole outbox (a larger message takes all of them).
    all: u32,
}

/// Room for one message in the outbox.
#[must_use]
pub struct Slot {
    tx: mpsc::UnboundedSender<Queued>,
    permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Queues the message the room was reserved for. Returns false once stdout is gone.
    pub fn send(self, message: Bytes) -> bool {
        self.tx.send((message, self.permit)).is_ok()
    }
}

/// The receiving side, for [`write_lines`] (or an in-process client). When it goes away, the
/// outbox is closed: senders waiting for room are told at once instead of waiting forever.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Queued>,
    room: Arc<Semaphore>,
}

impl Inbox {
    /// The next message; its room is given back.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await.map(|(message, _room)| message)
    }

    /// The next message if one is queued, with its room (given back when dropped).
    fn try_recv(&mut self) -> Option<Queued> {
        self.rx.try_recv().ok()
    }

    /// Stops taking messages; those queued can still be received.
    fn close(&mut self) {
        self.rx.close();
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.room.close();
    }
}

impl Outbox {
    /// An outbox of at most `max_bytes` and the receiving end to hand to [`write_lines`].
    pub fn new(max_bytes: usize) -> (Self, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let all = u32::try_from(max_bytes.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        let room = Arc::new(Semaphore::new(all as usize));
        (Outbox { tx, room: room.clone(), all }, Inbox { rx, room })
    }

    /// Waits for room for a message of `len` bytes. `None` once stdout is gone. Cancelling the
    /// wait takes nothing.
    pub async fn reserve(&self, len: usize) -> Option<Slot> {
        let need = u32::try_from(len.saturating_add(1)).unwrap_or(u32::MAX).min(self.all);
        let permit = self.room.clone().acquire_many_owned(need).await.ok()?;
        if self.tx.is_closed() {
            return None;
        }
        Some(Slot { tx: self.tx.clone(), permit })
    }

    /// Queues one message (a complete JSON text without newline), waiting for room. Returns
    /// false once stdout is gone.
    pub async fn send(&self, message: Bytes) -> bool {
        match self.reserve(message.len()).await {
            Some(slot) => slot.send(message),
            None => false,
        }
    }

    /// Whether stdout has gone away (the writer ended).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the writer has ended (stdout closed or failed).
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Writes queued messages to `out`, one per line, until every [`Outbox`] is dropped or `finish`
/// fires (then what is queued is still written). Flushes whenever the queue runs empty, so lines
/// go out promptly but bursts share a write. A message's room in the outbox is given back once
/// it is in the write buffer.
pub async fn write_lines<W: AsyncWrite + Unpin>(
    mut rx: Inbox,
    out: W,
    mut finish: oneshot::Receiver<()>,
) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    // `finish` is polled until it fires and never again: a completed oneshot panics when polled
    // (issue 21.14: it did so at shutdown with several answers queued, and lost them).
    let mut finishing = false;
    loop {
        let message = if finishing {
            rx.rx.recv().await
        } else {
            tokio::select! {
                message = rx.rx.recv() => message,
                _ = &mut finish => {
                    finishing = true;
                    rx.close();
                    rx.rx.recv().await
                }
            }
        };
        let Some((message, room)) = message else { break };
        write_line(&mut out, &message).await?;
        drop(room);
        while let Some((message, room)) = rx.try_recv() {
            write_line(&mut out, &message).await?;
            drop(room);
        }
        out.flush().await?;
    }
    out.flush().await?;
    out.shutdown().await.or_else(ignore_broken_pipe)
}

async fn write_line<W: AsyncWrite + Unpin>(out: &mut BufWriter<W>, message: &[u8]) -> io::Result<()> {
    out.write_all(message).await?;
    out.write_all(b"\n").await
}

fn ignore_broken_pipe(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) }
}

/// stdin as an async reader. A pipe (how MCP clients launch servers) is read directly through
/// the reactor; anything else (a file, a terminal) through tokio's blocking-pool wrapper. The
/// direct path saves two thread hand-offs per message.
pub fn stdin() -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        #[cfg(target_os = "linux")]
        enlarge_pipe(&std::io::stdin());
        if let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned()
            && let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
        {
            return Box::new(pipe);
        }
    }
    Box::new(tokio::io::stdin())
}

/// The pipe size asked for on Linux: a 1 MB answer then crosses in one write instead of
/// sixteen 64 KiB rounds of wake-ups (measured: about half the time of a 1 MB reply).
#[cfg(target_os = "linux")]
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Enlarges the pipe behind `fd`; harmless when it is not a pipe or the system says no.
#[cfg(target_os = "linux")]
fn enlarge_pipe(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ only reads its integer argument; an fd that is not a pipe gets EBADF or
    // EINVAL, which is ignored.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES);
    }
}

/// stdout as an async writer, like [`stdin`]: a pipe directly, anything else through tokio.
pub fn stdout() -> Box<dyn tokio::io::AsyncWrite + Unpin + Send> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        #[cfg(target_os = "linux")]
        enlarge_pipe(&std::io::stdout());
        if let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned()
            && let Ok(pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(fd)
        {
            return Box::new(pipe);
        }
    }
    Box::new(tokio::io::stdout())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` through a reader with a small chunk pattern and collects every frame.
    async fn frames(chunks: &[&[u8]], max: usize) -> Vec<Frame> {
        let (mut tx, rx) = tokio::io::duplex(16);
        let owned: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for chunk in owned {
                tx.write_all(&chunk).await.unwrap();
            }
        });
        let mut reader = LineReader::new(rx, max);
        let mut out = Vec::new();
        while let Some(frame) = reader.next_frame().await.unwrap() {
            out.push(frame);
        }
        writer.await.unwrap();
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[tokio::test]
    async fn s02_splits_on_newline_and_strips_one_cr() {
        let got = frames(&[b"{\"a\":1}\r\n{\"b\":2}\n", b"{\"c\":", b"3}\n"], 100).await;
        assert_eq!(got, vec![line("{\"a\":1}"), line("{\"b\":2}"), line("{\"c\":3}")]);
    }

    #[tokio::test]
    async fn s02_final_line_without_newline_counts() {
        assert_eq!(frames(&[b"{}\n{\"x\":1}"], 100).await, vec![line("{}"), line("{\"x\":1}")]);
    }

    #[tokio::test]
    async fn s02_blank_lines_are_skipped() {
        assert_eq!(frames(&[b"\n\r\n  \n{}\n"], 100).await, vec![line("{}")]);
    }

    #[tokio::test]
    async fn limit_exact_size_passes() {
        let msg = "x".repeat(10);
        assert_eq!(frames(&[format!("{msg}\n").as_bytes()], 10).await, vec![line(&msg)]);
    }

    #[tokio::test]
    async fn limit_one_over_is_reported_and_reader_recovers() {
        let long = "y".repeat(11);
        let got = frames(&[format!("{long}\n{{}}\n").as_bytes()], 10).await;
        assert_eq!(got, vec![Frame::TooLong { len: 11, prefix: long.into_bytes() }, line("{}")]);
    }

    #[tokio::test]
    async fn limit_split_across_many_chunks_keeps_prefix_and_length() {
        let big = vec![b'z'; 200_000];
        let got = frames(&[&big[..70_000], &big[70_000..], b"\n{}\n"], 1000).await;
        assert_eq!(got.len(), 2);
        match &got[0] {
            Frame::TooLong { len, prefix } => {
                assert_eq!(*len, 200_000);
                assert_eq!(prefix.len(), TOO_LONG_PREFIX_BYTES);
            }
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert_eq!(got[1], line("{}"));
    }

    #[tokio::test]
    async fn limit_over_long_final_line_at_eof() {
        let got = frames(&[&[b'q'; 50]], 10).await;
        assert!(matches!(got.as_slice(), [Frame::TooLong { len: 50, .. }]));
    }

    /// Issue 10.15: the outbox is bounded in bytes, a message larger than the bound still goes
    /// when nothing else waits, a cancelled reservation takes nothing, and once the writer is
    /// gone nobody waits for room.
    #[tokio::test]
    async fn the_outbox_is_bounded_in_bytes() {
        let (outbox, mut inbox) = Outbox::new(100);
        let first = outbox.reserve(60).await.unwrap();
        // 60 + 1 of 100 taken: another 60 does not fit now.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), outbox.reserve(60)).await;
        assert!(waiting.is_err(), "no room for a second 60-byte message");
        assert!(first.send(Bytes::from(vec![b'a'; 60])));
        assert_eq!(inbox.recv().await.unwrap().len(), 60);
        // Given back on receipt; a message over the whole bound fits into an empty outbox.
        let huge = outbox.reserve(10_000).await.unwrap();
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), outbox.reserve(1)).await.is_err());
        drop(huge);
        assert!(outbox.reserve(99).await.is_some(), "a dropped slot gives its room back");
        drop(inbox);
        assert!(outbox.reserve(1).await.is_none(), "the writer is gone: no waiting");
        assert!(!outbox.send(Bytes::from_static(b"{}")).await);
    }

    /// Issue 21.14: several answers queued when stdin ends: every one is written, and the
    /// writer does not poll its finished signal twice (which panicked, at random: `select!`
    /// picks its first branch at random, so the run is repeated).
    #[tokio::test]
    async fn answers_queued_at_finish_are_all_written_without_a_panic() {
        for _ in 0..64 {
            let (outbox, rx) = Outbox::new(DEFAULT_MAX_MESSAGE_BYTES * OUTBOX_MESSAGES);
            let (w, mut r) = tokio::io::duplex(1 << 16);
            let (finish, finished) = oneshot::channel();
            for n in 0..3 {
                assert!(outbox.send(Bytes::from(format!("{{\"n\":{n}}}"))).await);
            }
            finish.send(()).unwrap();
            tokio::spawn(write_lines(rx, w, finished)).await.expect("no panic").unwrap();
            let mut s = String::new();
            r.read_to_string(&mut s).await.unwrap();
            assert_eq!(s, "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
            drop(outbox);
        }
    }

    #[tokio::test]
    async fn writer_puts_one_message_per_line() {
        let (outbox, rx) = Outbox::new(DEFAULT_MAX_MESSAGE_BYTES * OUTBOX_MESSAGES);
        let (w, mut r) = tokio::io::duplex(1024);
        let (_finish, finished) = oneshot::channel();
        let task = tokio::spawn(write_lines(rx, w, finished));
        assert!(outbox.send(Bytes::from_static(b"{\"a\":1}")).await);
        assert!(outbox.send(Bytes::from_static(b"{\"b\":2}")).await);
        drop(outbox);
        task.await.unwrap().unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "{\"a\":1}\n{\"b\":2}\n");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A reader that hands out exactly the given chunks, one per read (a pipe written in
    /// pieces): the decoder sees every split, not whatever a buffer happened to gather.
    struct Chunked(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Decodes `input` fed in chunks of the given sizes (cycled).
    fn decode(input: &[u8], chunks: &[usize], max: usize) -> Vec<Frame> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut parts = std::collections::VecDeque::new();
            let mut rest = input;
            for &c in chunks.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (a, b) = rest.split_at(c.clamp(1, rest.len()));
                parts.push_back(a.to_vec());
                rest = b;
            }
            let mut reader = LineReader::new(Chunked(parts), max);
            let mut out = Vec::new();
            while let Some(f) = reader.next_frame().await.unwrap() {
                out.push(f);
            }
            out
        })
    }

    proptest! {
        /// Whatever the chunking, every line comes out once, in order, without its line ending;
        /// a line whose content is over the limit comes out as TooLong with its exact content
        /// length and first bytes, and one at the limit comes out whole, CRLF or not.
        #[test]
        fn lines_survive_any_chunking(
            lines in prop::collection::vec(prop::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..300), 0..20),
            crlf in any::<bool>(),
            chunks in prop::collection::vec(1usize..400, 1..10),
            max in 50usize..250,
        ) {
            let mut input = Vec::new();
            for l in &lines {
                input.extend_from_slice(l);
                input.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            let expected: Vec<Frame> = lines
                .iter()
                .filter_map(|l| {
                    let mut l = l.clone();
                    if crlf { l.push(b'\r'); }
                    // One trailing CR is the line ending's.
                    if l.last() == Some(&b'\r') { l.pop(); }
                    if l.len() > max {
                        let prefix = l[..l.len().min(TOO_LONG_PREFIX_BYTES)].to_vec();
                        return Some(Frame::TooLong { len: l.len(), prefix });
                    }
                    if l.iter().all(u8::is_ascii_whitespace) { return None; }
                    Some(Frame::Line(Bytes::from(l)))
                })
                .collect();
            let got = decode(&input, &chunks, max);
            prop_assert_eq!(got, expected);
        }

        /// A line of exactly `max` bytes passes whole, one byte more does not, CRLF or LF,
        /// however the bytes are split (the CR may arrive alone before its LF).
        #[test]
        fn the_limit_is_exact_for_any_split(max in 10usize..100, crlf in any::<bool>(), cut in 1usize..120) {
            for extra in [0usize, 1] {
                let content = vec![b'x'; max + extra];
                let mut input = content.clone();
                input.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                let got = decode(&input, &[cut], max);
                let want = if extra == 0 {
                    Frame::Line(Bytes::from(content))
                } else {
                    Frame::TooLong { len: max + 1, prefix: content }
                };
                prop_assert_eq!(got, vec![want]);
            }
        }
    }
}
