//! `--log-file PATH` (issue 25.4): the lines stderr gets, also in a file, for clients that hide
//! a server's stderr (Claude Code). One file a day (UTC), named after PATH with the date before
//! its extension (`mcp-sidecar.log` → `mcp-sidecar.2026-12-07.log`), so that several sidecars
//! can append to the same one; the owner's only (0600, an owner-only DACL on Windows), the last
//! [`KEEP`] days kept. Lines pass the same redaction as stderr's before they get here.
//!
//! Not tracing-appender's roller: it creates its files with the process's default mode (0644
//! under the usual umask: readable by every user of the machine), and its clock cannot be set
//! for a test. A leaf: it imports nothing of the crate but other leaves.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::statedir;
use crate::sync::Locked;

/// The days of log files kept, today's included.
pub const KEEP: usize = 7;

/// What time it is (wall clock: the file's date is a calendar date); tests set their own.
pub type Clock = Box<dyn Fn() -> SystemTime + Send>;

/// This process's log file, once [`install`]ed.
static FILE: OnceLock<Mutex<DailyFile>> = OnceLock::new();

/// Makes `path` this process's log file (today's file is opened now: a path that cannot be
/// written is said at start); returns today's file.
pub fn install(path: &Path) -> io::Result<PathBuf> {
    let file = DailyFile::open(path, Box::new(SystemTime::now))?;
    let current = file.current();
    let _ = FILE.set(Mutex::new(file));
    Ok(current)
}

/// Writes `bytes` (whole lines, already redacted) to the log file, if there is one. A failed
/// write is dropped: stderr has the line.
pub fn append(bytes: &[u8]) {
    if let Some(file) = FILE.get() {
        let _ = file.locked().write_all(bytes);
    }
}

/// A writer that also appends what it writes to the log file (the stderr of tracing's lines,
/// after their redaction).
pub struct AlsoToFile<W>(pub W);

impl<W: Write> Write for AlsoToFile<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        append(buf);
        self.0.write_all(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `eprintln!` for the lines printed outside the log (a sign-in's URL, a fatal error): the log
/// file gets them too, redacted.
pub fn eprintln(text: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{text}");
    }
    if FILE.get().is_some() {
        append(format!("{}\n", crate::secrets::redact(text)).as_bytes());
    }
}

/// The log file of today, opened anew when the day changes.
pub struct DailyFile {
    dir: PathBuf,
    stem: String,
    ext: String,
    clock: Clock,
    /// Days since 1970-01-01 (UTC) of the open file.
    day: u64,
    file: File,
}

impl DailyFile {
    /// Opens today's file for `path` (creating its directory, the owner's only, when missing).
    pub fn open(path: &Path, clock: Clock) -> io::Result<DailyFile> {
        let name = path.file_name().and_then(|n| n.to_str()).filter(|n| !n.is_empty());
        let Some(name) = name else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "it names no file"));
        };
        let (stem, ext) = match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), ext.to_owned()),
            _ => (name.to_owned(), String::new()),
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        statedir::create_private_dir(&dir)?;
        let day = day_of(clock());
        let file = open_private(&dir.join(file_name(&stem, &ext, day)))?;
        let log = DailyFile { dir, stem, ext, clock, day, file };
        log.prune();
        Ok(log)
    }

    /// The path of today's file (for messages).
    pub fn current(&self) -> PathBuf {
        self.dir.join(file_name(&self.stem, &self.ext, self.day))
    }

    /// A new day: its file, and the oldest beyond [`KEEP`] removed.
    fn roll(&mut self, day: u64) -> io::Result<()> {
        self.file = open_private(&self.dir.join(file_name(&self.stem, &self.ext, day)))?;
        self.day = day;
        self.prune();
        Ok(())
    }

    /// Removes this log's files of days before the last [`KEEP`] (by the date in their names;
    /// other files in the directory are never touched).
    fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut dated: Vec<(u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some((day_in_name(&name, &self.stem, &self.ext)?, e.path()))
            })
            .collect();
        dated.sort_unstable_by_key(|(day, _)| std::cmp::Reverse(*day));
        for (_, old) in dated.into_iter().skip(KEEP) {
            let _ = fs::remove_file(old);
        }
    }
}

impl Write for DailyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let day = day_of((self.clock)());
        // A clock set back (or a laptop's wrong time corrected) keeps writing where it is.
        if day > self.day {
            self.roll(day)?;
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Opens `path` to append, the owner's only: a new file is made so; an old one others could
/// read is made so too, or refused. Made private with no handle open (Windows, under Wine at
/// least, keeps the old DACL for a handle opened before the change).
fn open_private(path: &Path) -> io::Result<File> {
    drop(statedir::owner_only(fs::OpenOptions::new().append(true).create(true)).open(path)?);
    if statedir::exposed(path, &fs::metadata(path)?) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        }
        statedir::restrict(path)?;
        if statedir::exposed(path, &fs::metadata(path)?) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "other users can read it and it cannot be made private: {}",
                    statedir::fix_command(path)
                ),
            ));
        }
    }
    fs::OpenOptions::new().append(true).open(path)
}

fn day_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400)
}

fn file_name(stem: &str, ext: &str, day: u64) -> String {
    let (y, m, d) = civil(day);
    if ext.is_empty() {
        format!("{stem}.{y:04}-{m:02}-{d:02}")
    } else {
        format!("{stem}.{y:04}-{m:02}-{d:02}.{ext}")
    }
}

/// The day a file of this log is named for, if `name` is one.
fn day_in_name(name: &str, stem: &str, ext: &str) -> Option<u64> {
    let rest = name.strip_prefix(stem)?.strip_prefix('.')?;
    let date = if ext.is_empty() { rest } else { rest.strip_suffix(ext)?.strip_suffix('.')? };
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if (y.len(), m.len(), d.len()) != (4, 2, 2) {
        return None;
    }
    let day = days_from_civil(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)?;
    (civil(day) == (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)).then_some(day)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil`], for dates from 1970 on.
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mcp-sidecar-logfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_429), (2025, 12, 7));
        assert_eq!(civil(11_016), (2000, 2, 29));
        for day in [0, 59, 60, 365, 11_016, 20_429, 2_932_896] {
            let (y, m, d) = civil(day);
            assert_eq!(days_from_civil(y, m, d), Some(day), "{y}-{m}-{d}");
        }
        assert_eq!(file_name("mcp-sidecar", "log", 20_429), "mcp-sidecar.2025-12-07.log");
        assert_eq!(day_in_name("mcp-sidecar.2025-12-07.log", "mcp-sidecar", "log"), Some(20_429));
        for other in [
            "mcp-sidecar.log",
            "mcp-sidecar.2025-13-07.log",
            "mcp-sidecar.2025-02-30.log",
            "x.2025-12-07.log",
            "mcp-sidecar.2025-12-07.txt",
        ] {
            assert_eq!(day_in_name(other, "mcp-sidecar", "log"), None, "{other}");
        }
    }

    /// Issue 25.4: a file a day, the owner's only, the last 7 kept, other files left alone;
    /// the clock is the test's (a week and more in a moment).
    #[test]
    fn rotates_daily_keeps_seven_and_is_private() {
        let dir = temp("rotate");
        // A directory of the owner's (as a home directory is): Wine keeps no DACL set on a file
        // in a directory made with none.
        statedir::create_private_dir(&dir).unwrap();
        fs::write(dir.join("notes.txt"), b"mine").unwrap();
        fs::write(dir.join("mcp.2000-01-01.log"), b"very old").unwrap();
        let now = Arc::new(AtomicU64::new(20_429 * 86_400 + 3_600));
        let clock = now.clone();
        let mut log = DailyFile::open(
            &dir.join("mcp.log"),
            Box::new(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::SeqCst))),
        )
        .unwrap();
        for day in 0..10u64 {
            now.store((20_429 + day) * 86_400 + 3_600, Ordering::SeqCst);
            writeln!(log, "line of day {day}").unwrap();
            writeln!(log, "again {day}").unwrap();
        }
        // The clock goes back: the same file goes on.
        now.store(20_429 * 86_400, Ordering::SeqCst);
        writeln!(log, "after the clock went back").unwrap();
        let mut names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let expected: Vec<String> =
            (3..10).map(|d| file_name("mcp", "log", 20_429 + d)).chain(["notes.txt".into()]).collect();
        assert_eq!(names, expected);
        let last = fs::read_to_string(dir.join(file_name("mcp", "log", 20_438))).unwrap();
        assert_eq!(last, "line of day 9\nagain 9\nafter the clock went back\n");
        for name in &names[..7] {
            let path = dir.join(name);
            assert!(!statedir::exposed(&path, &fs::metadata(&path).unwrap()), "{name}");
        }
        assert_eq!(log.current(), dir.join(file_name("mcp", "log", 20_438)));
        let _ = fs::remove_dir_all(&dir);
    }

    /// An old file of today that others can read is made private before anything is written.
    #[cfg(unix)]
    #[test]
    fn an_exposed_file_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp("exposed");
        fs::create_dir_all(&dir).unwrap();
        let day = day_of(SystemTime::now());
        let path = dir.join(file_name("x", "log", day));
        fs::write(&path, b"old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut log = DailyFile::open(&dir.join("x.log"), Box::new(SystemTime::now)).unwrap();
        writeln!(log, "new").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\nnew\n");
        let _ = fs::remove_dir_all(&dir);
    }
}
