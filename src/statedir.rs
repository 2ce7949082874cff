//! The state dir's files and directories, for their owner only: it holds tokens, DPoP keys and
//! rate-limit state, and a private key (`--client-key-file`) is refused when others may read it.
//! Also the names of state files ([`state_name`]). A leaf: it imports nothing of the crate.
//!
//! Unix: mode bits (0700 directories, 0600 files, and a file with any group or other bit is
//! exposed). Windows (issue 21.17: a `--state-dir` outside the profile left every secret writable
//! by every local user, and a world-readable key file was accepted): directories are created with
//! a protected DACL granting full control to the user and SYSTEM only, inherited by what is
//! created inside; secret files get the same DACL before anything is written to them; and a file
//! is exposed when its DACL is null or allows reading or changing it to anyone but its owner,
//! the user, SYSTEM or Administrators (who can take any file anyway).

use std::fs;
use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The name of the state of `origin` and `key_id`: a hash that says nothing about either.
pub fn state_name(origin: &str, key_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(origin.as_bytes());
    h.update([0]);
    h.update(key_id.as_bytes());
    h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates `dir` and its missing parents for the owner only (existing ones are left as they are).
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    #[cfg(windows)]
    {
        windows::create_dir(dir)
    }
    #[cfg(not(windows))]
    {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)
    }
}

/// Options that create a file for the owner only (Unix; on Windows see [`restrict`]).
pub(crate) fn owner_only(options: &mut fs::OpenOptions) -> &mut fs::OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

/// Writes `bytes` to `path` whole, for the owner only: a temporary file beside it, then a
/// rename (readers never see half a file). `create_only`: only if no file is there yet
/// (`Ok(false)` when one was: a hard link cannot replace a file, so of two processes the first
/// wins).
pub(crate) fn write_private(path: &Path, bytes: &[u8], create_only: bool) -> io::Result<bool> {
    static TEMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().ok_or_else(|| io::Error::other("no directory"))?;
    create_private_dir(dir)?;
    let n = TEMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = dir.join(format!(".write-{}-{n}.tmp", std::process::id()));
    let written = (|| {
        let mut options = fs::OpenOptions::new();
        let mut file = owner_only(options.write(true).create_new(true)).open(&temp)?;
        restrict(&temp)?;
        io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        if create_only {
            return match fs::hard_link(&temp, path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            };
        }
        fs::rename(&temp, path).map(|()| true)
    })();
    let _ = fs::remove_file(&temp);
    written
}

/// Gives the file at `path` to the owner only, whatever it inherited (Windows: a file created in
/// a directory others may use inherits their access; Unix: the mode was set when it was created).
pub(crate) fn restrict(path: &Path) -> io::Result<()> {
    #[cfg(windows)]
    {
        windows::restrict(path)
    }
    #[cfg(not(windows))]
    {
        let _ = path;
        Ok(())
    }
}

/// Whether a file holding secrets (a token file, a private key) can be read or changed by other
/// users.
pub fn exposed(path: &Path, meta: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        let _ = path;
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o077 != 0
    }
    #[cfg(windows)]
    {
        let _ = meta;
        windows::exposed(path)
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (path, meta);
        false
    }
}

/// The command that makes `path` its owner's only, for an error message.
pub fn fix_command(path: &Path) -> String {
    if cfg!(windows) {
        format!("icacls \"{}\" /inheritance:r /grant:r \"%USERNAME%:F\"", path.display())
    } else {
        format!("chmod 600 {}", path.display())
    }
}

#[cfg(windows)]
mod windows {
    use std::ffi::c_void;
    use std::io;
    use std::os::windows::ffi::OsStrExt;
    use std::path::Path;
    use std::ptr::{null, null_mut};

    use windows_sys::Win32::Foundation::{CloseHandle, ERROR_ALREADY_EXISTS, HANDLE, LocalFree};
    use windows_sys::Win32::Security::Authorization::{
        ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, GetNamedSecurityInfoW,
        SDDL_REVISION_1, SE_FILE_OBJECT, SetNamedSecurityInfoW,
    };
    use windows_sys::Win32::Security::{
        ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, DACL_SECURITY_INFORMATION, EqualSid, GetAce,
        GetSecurityDescriptorDacl, GetTokenInformation, INHERIT_ONLY_ACE, IsWellKnownSid,
        OWNER_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
        SECURITY_ATTRIBUTES, TOKEN_QUERY, TOKEN_USER, TokenUser, WinBuiltinAdministratorsSid,
        WinLocalSystemSid,
    };
    use windows_sys::Win32::Storage::FileSystem::CreateDirectoryW;
    use windows_sys::Win32::System::SystemServices::ACCESS_ALLOWED_ACE_TYPE;
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    /// The rights that let someone read a file's content or change it or its access: read and
    /// write data, append, the generic read, write and all, write DAC and write owner.
    const SENSITIVE: u32 = 0x1 | 0x2 | 0x4 | 0x8000_0000 | 0x4000_0000 | 0x1000_0000 | 0x4_0000 | 0x8_0000;

    pub(super) fn wide(path: &Path) -> Vec<u16> {
        path.as_os_str().encode_wide().chain(std::iter::once(0)).collect()
    }

    /// Memory the system allocated for us, freed with `LocalFree`.
    struct Local(*mut c_void);

    impl Drop for Local {
        fn drop(&mut self) {
            if !self.0.is_null() {
                // SAFETY: allocated by the system call that returned it, freed once.
                unsafe { LocalFree(self.0) };
            }
        }
    }

    /// The user this process runs as: its SID, in a buffer that holds it.
    struct User {
        buffer: Vec<u64>,
    }

    impl User {
        fn current() -> io::Result<User> {
            let mut token: HANDLE = null_mut();
            // SAFETY: the pseudo-handle of this process; `token` is written on success.
            if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buffer = vec![0u64; 128];
            let mut len = 0u32;
            let size = u32::try_from(buffer.len() * 8).unwrap_or(u32::MAX);
            // SAFETY: the buffer is `size` bytes, 8-aligned (TOKEN_USER holds pointers).
            let ok =
                unsafe { GetTokenInformation(token, TokenUser, buffer.as_mut_ptr().cast(), size, &mut len) };
            // SAFETY: opened above, closed once.
            unsafe { CloseHandle(token) };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(User { buffer })
        }

        fn sid(&self) -> PSID {
            // SAFETY: GetTokenInformation wrote a TOKEN_USER at the start of the buffer, whose
            // SID points into the same buffer.
            unsafe { (*self.buffer.as_ptr().cast::<TOKEN_USER>()).User.Sid }
        }

        fn sid_string(&self) -> io::Result<String> {
            let mut text: *mut u16 = null_mut();
            // SAFETY: a valid SID; the string is allocated by the call and freed by `Local`.
            if unsafe { ConvertSidToStringSidW(self.sid(), &mut text) } == 0 {
                return Err(io::Error::last_os_error());
            }
            let _free = Local(text.cast());
            // SAFETY: a NUL-terminated string the call returned.
            let len = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
            // SAFETY: `len` units before the NUL.
            Ok(String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) }))
        }
    }

    /// A security descriptor whose DACL gives full control to the user and SYSTEM only, is
    /// inherited by files and directories created inside, and takes nothing from the parent.
    fn owner_only() -> io::Result<Local> {
        let sddl = format!("D:P(A;OICI;FA;;;{})(A;OICI;FA;;;SY)", User::current()?.sid_string()?);
        let text: Vec<u16> = sddl.encode_utf16().chain(std::iter::once(0)).collect();
        let mut sd: PSECURITY_DESCRIPTOR = null_mut();
        // SAFETY: a NUL-terminated SDDL string; the descriptor is freed by `Local`.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Local(sd))
    }

    /// Creates `dir` and each missing parent with the owner-only descriptor, outermost first.
    pub fn create_dir(dir: &Path) -> io::Result<()> {
        let sd = owner_only()?;
        let sa = SECURITY_ATTRIBUTES {
            nLength: u32::try_from(std::mem::size_of::<SECURITY_ATTRIBUTES>()).unwrap_or(0),
            lpSecurityDescriptor: sd.0,
            bInheritHandle: 0,
        };
        let missing: Vec<&Path> =
            dir.ancestors().take_while(|p| !p.as_os_str().is_empty() && !p.is_dir()).collect();
        for path in missing.into_iter().rev() {
            // SAFETY: a NUL-terminated path and a valid descriptor for the call's duration.
            if unsafe { CreateDirectoryW(wide(path).as_ptr(), &sa) } == 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(ERROR_ALREADY_EXISTS as i32) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Replaces the DACL of `path` with the owner-only one, inheriting nothing.
    pub fn restrict(path: &Path) -> io::Result<()> {
        let sd = owner_only()?;
        let (mut present, mut defaulted) = (0, 0);
        let mut dacl: *mut ACL = null_mut();
        // SAFETY: a valid descriptor; `dacl` points into it, which lives until the end.
        if unsafe { GetSecurityDescriptorDacl(sd.0, &mut present, &mut dacl, &mut defaulted) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let what = DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION;
        // SAFETY: a NUL-terminated path and a valid DACL.
        let rc = unsafe {
            SetNamedSecurityInfoW(
                wide(path).as_ptr(),
                SE_FILE_OBJECT,
                what,
                null_mut(),
                null_mut(),
                dacl,
                null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc as i32));
        }
        Ok(())
    }

    /// Whether anyone but the file's owner, this user, SYSTEM or Administrators may read or
    /// change `path`. A file whose security cannot be read counts as exposed.
    pub fn exposed(path: &Path) -> bool {
        let Ok(user) = User::current() else { return true };
        let (mut owner, mut dacl, mut sd): (PSID, *mut ACL, PSECURITY_DESCRIPTOR) =
            (null_mut(), null_mut(), null_mut());
        let what = OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION;
        // SAFETY: a NUL-terminated path; the descriptor is freed by `Local`, and `owner` and
        // `dacl` point into it.
        let rc = unsafe {
            GetNamedSecurityInfoW(
                wide(path).as_ptr(),
                SE_FILE_OBJECT,
                what,
                &mut owner,
                null_mut(),
                &mut dacl,
                null_mut(),
                &mut sd,
            )
        };
        if rc != 0 {
            return true;
        }
        let _free = Local(sd);
        if dacl.is_null() {
            return true; // a null DACL lets everyone in
        }
        // SAFETY: a valid ACL inside the descriptor.
        let count = unsafe { (*dacl).AceCount };
        (0..u32::from(count)).any(|i| {
            let mut ace: *mut c_void = null_mut();
            // SAFETY: `i` is below the ACL's count; the ACE lives inside the descriptor.
            if unsafe { GetAce(dacl, i, &mut ace) } == 0 {
                return true;
            }
            // SAFETY: every ACE starts with a header.
            let header = unsafe { *ace.cast::<ACE_HEADER>() };
            if u32::from(header.AceType) != ACCESS_ALLOWED_ACE_TYPE
                || u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0
            {
                return false; // a deny, or one that applies only to what is created inside
            }
            let allowed = ace.cast::<ACCESS_ALLOWED_ACE>();
            // SAFETY: an access-allowed ACE: its mask, then its SID from `SidStart` on.
            let (mask, sid) =
                unsafe { ((*allowed).Mask, std::ptr::addr_of_mut!((*allowed).SidStart).cast::<c_void>()) };
            if mask & SENSITIVE == 0 {
                return false;
            }
            // SAFETY: valid SIDs.
            let trusted = unsafe {
                (!owner.is_null() && EqualSid(sid, owner) != 0)
                    || EqualSid(sid, user.sid()) != 0
                    || IsWellKnownSid(sid, WinLocalSystemSid) != 0
                    || IsWellKnownSid(sid, WinBuiltinAdministratorsSid) != 0
            };
            !trusted
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mcp-sidecar-private-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// Issue 21.17: a directory made here, and a file made in it, are the owner's only; a file
    /// others may read is exposed.
    #[test]
    fn private_dirs_and_files_are_the_owners_only_and_open_ones_are_exposed() {
        let dir = temp("dirs").join("a").join("b");
        create_private_dir(&dir).unwrap();
        let file = dir.join("secret.json");
        owner_only(fs::OpenOptions::new().write(true).create(true)).open(&file).unwrap();
        restrict(&file).unwrap();
        assert!(!exposed(&file, &fs::metadata(&file).unwrap()), "made private");
        let open = dir.join("open.json");
        fs::write(&open, b"{}").unwrap();
        make_readable_by_everyone(&open);
        assert!(exposed(&open, &fs::metadata(&open).unwrap()), "readable by everyone");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for d in [dir.parent().unwrap(), &dir] {
                assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
            }
        }
        #[cfg(windows)]
        assert_eq!(windows_dacl(&dir), 2, "the user and SYSTEM, nothing inherited");
        let _ = fs::remove_dir_all(temp("dirs"));
    }

    #[cfg(unix)]
    fn make_readable_by_everyone(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Everyone (S-1-1-0) may read it, as a file under C:\Users\Public or a shared drive.
    #[cfg(windows)]
    fn make_readable_by_everyone(path: &Path) {
        let sddl: Vec<u16> = "D:P(A;;FR;;;WD)(A;;FA;;;SY)".encode_utf16().chain(std::iter::once(0)).collect();
        use windows_sys::Win32::Security::Authorization::*;
        use windows_sys::Win32::Security::*;
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        let wide = super::windows::wide(path);
        // SAFETY: test code: valid strings and out-pointers.
        unsafe {
            assert_ne!(
                ConvertStringSecurityDescriptorToSecurityDescriptorW(
                    sddl.as_ptr(),
                    SDDL_REVISION_1,
                    &mut sd,
                    std::ptr::null_mut()
                ),
                0
            );
            let (mut present, mut defaulted) = (0, 0);
            let mut dacl: *mut ACL = std::ptr::null_mut();
            assert_ne!(GetSecurityDescriptorDacl(sd, &mut present, &mut dacl, &mut defaulted), 0);
            let what = DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION;
            let rc = SetNamedSecurityInfoW(
                wide.as_ptr(),
                SE_FILE_OBJECT,
                what,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                dacl,
                std::ptr::null(),
            );
            assert_eq!(rc, 0);
            windows_sys::Win32::Foundation::LocalFree(sd);
        }
    }

    /// How many ACEs the DACL of `path` has.
    #[cfg(windows)]
    fn windows_dacl(path: &Path) -> u16 {
        use windows_sys::Win32::Security::Authorization::*;
        use windows_sys::Win32::Security::*;
        let wide = super::windows::wide(path);
        let (mut dacl, mut sd): (*mut ACL, PSECURITY_DESCRIPTOR) =
            (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: test code: valid strings and out-pointers.
        unsafe {
            let rc = GetNamedSecurityInfoW(
                wide.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut dacl,
                std::ptr::null_mut(),
                &mut sd,
            );
            assert_eq!(rc, 0);
            let n = (*dacl).AceCount;
            windows_sys::Win32::Foundation::LocalFree(sd);
            n
        }
    }
}
