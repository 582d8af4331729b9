//! File system calls relative to open directories.
//!
//! A restore as root writes into directories that other users may own, and
//! such a user can rename a directory and put a symlink in its place at any
//! moment. A path resolved again for every call would follow that symlink
//! out of the target, so the restore never hands the kernel a path of more
//! than one component: it opens the target once, then each directory below
//! it with `openat(parent, name, O_NOFOLLOW)`, and creates, opens, removes
//! and changes entries relative to those descriptors. Metadata goes on open
//! descriptors (`fchown`, `fchmod`, `futimens`) wherever the item can be
//! opened, and otherwise through `*at` calls that do not follow symlinks.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A name as the kernel takes it; names come from a snapshot and were
/// checked to be one safe component, so an inner NUL only means a bad name.
pub(crate) fn c_name(name: &[u8]) -> Result<CString, String> {
    CString::new(name).map_err(|_| "a name with a NUL byte".to_string())
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn retry<F: FnMut() -> libc::c_int>(mut f: F) -> io::Result<libc::c_int> {
    loop {
        match check(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Opens a directory given by path (the restore target), not following a
/// symlink in its last component.
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `p` is a valid C string; the returned descriptor is owned by us.
    let fd = retry(|| unsafe { libc::open(p.as_ptr(), flags) })?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory `name` in `dir`; a symlink there is refused (`ELOOP`),
/// as is anything that is not a directory (`ENOTDIR`).
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is a valid C string and `dir` an open descriptor.
    let fd = retry(|| unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates the directory `name` in `dir`.
pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is a valid C string and `dir` an open descriptor.
    retry(|| unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// Removes the non-directory `name` in `dir`; a missing one is no error.
/// `unlinkat` without `AT_REMOVEDIR` never removes a directory.
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a valid C string and `dir` an open descriptor.
    match retry(|| unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the regular file `name` in `dir`, which must not exist yet: an
/// entry put there by someone else (a symlink included) makes it fail.
pub(crate) fn create_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<File> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is a valid C string and `dir` an open descriptor.
    let fd = retry(|| unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) })?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens the existing regular file `name` in `dir` for writing, never
/// through a symlink, optionally with `O_DIRECT`. `O_NONBLOCK` makes a FIFO
/// put in its place fail at once instead of waiting for a reader; regular
/// files ignore it.
pub(crate) fn open_write_at(dir: BorrowedFd<'_>, name: &CStr, direct: bool) -> io::Result<File> {
    let mut flags = libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    if direct {
        flags |= libc::O_DIRECT;
    }
    // SAFETY: `name` is a valid C string and `dir` an open descriptor.
    let fd = retry(|| unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `fstat` of an open descriptor.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer and `fd` an open descriptor.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// The (device, inode) pair that names one file for as long as it exists.
pub(crate) fn identity(st: &libc::stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Creates the symlink `name` in `dir` pointing at `target`.
pub(crate) fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both are valid C strings and `dir` an open descriptor.
    retry(|| unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// Changes the owner of `name` in `dir` itself, never of what it points to.
pub(crate) fn lchown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `name` is a valid C string and `dir` an open descriptor.
    retry(|| unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

fn timespecs(mtime_ns: i64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    [t, t]
}

/// Sets the access and modification times of `name` in `dir` itself.
pub(crate) fn set_times_at(dir: BorrowedFd<'_>, name: &CStr, mtime_ns: i64) -> io::Result<()> {
    let ts = timespecs(mtime_ns);
    // SAFETY: `name` is a valid C string, `ts` two timespecs, `dir` an open descriptor.
    retry(|| unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

/// Owner, permission bits and times of an open file or directory, in the
/// order that keeps setuid/setgid bits (a chown clears them).
pub(crate) fn set_meta(fd: BorrowedFd<'_>, owner: Option<(u32, u32)>, mode: u32, mtime_ns: i64) -> Result<(), String> {
    let raw = fd.as_raw_fd();
    if let Some((uid, gid)) = owner {
        // SAFETY: `raw` is an open descriptor.
        retry(|| unsafe { libc::fchown(raw, uid, gid) }).map_err(|e| format!("chown: {e}"))?;
    }
    // SAFETY: `raw` is an open descriptor.
    retry(|| unsafe { libc::fchmod(raw, mode as libc::mode_t) }).map_err(|e| format!("chmod: {e}"))?;
    let ts = timespecs(mtime_ns);
    // SAFETY: `ts` holds two timespecs and `raw` is an open descriptor.
    retry(|| unsafe { libc::futimens(raw, ts.as_ptr()) }).map_err(|e| format!("set mtime: {e}"))?;
    Ok(())
}
