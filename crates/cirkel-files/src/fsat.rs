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

/// Opens `name` in `dir` itself, whatever its type, without following a
/// symlink and without the side effects of opening a device or FIFO.
pub(crate) fn open_path_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is a valid C string and `dir` an open descriptor.
    let fd = retry(|| unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates a FIFO or device node `name` in `dir`.
pub(crate) fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: `name` is a valid C string and `dir` an open descriptor.
    retry(|| unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })
        .map(drop)
}

/// The path through which the kernel reaches exactly the file open as `fd`
/// (not a name someone could change).
fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Links the open file `fd` as `name` in `dir`.
pub(crate) fn link_fd_at(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: both are valid C strings and `dir` an open descriptor.
    retry(|| unsafe {
        libc::linkat(libc::AT_FDCWD, p.as_ptr(), dir.as_raw_fd(), name.as_ptr(), libc::AT_SYMLINK_FOLLOW)
    })
    .map(drop)
}

fn set_xattrs(set: &dyn Fn(&CStr, &[u8]) -> libc::c_int, xattrs: &[cirkel_repo::Xattr]) -> Result<(), String> {
    let mut failed = Vec::new();
    for x in xattrs {
        let Ok(n) = CString::new(x.name.as_bytes()) else {
            failed.push(format!("{}: a name with a NUL byte", x.name));
            continue;
        };
        if let Err(e) = retry(|| set(&n, &x.value)) {
            failed.push(format!("{}: {e}", x.name));
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("set extended attributes: {}", failed.join(", "))) }
}

/// Sets the extended attributes of `name` in `dir` itself (a symlink).
pub(crate) fn set_xattrs_at(dir: BorrowedFd<'_>, name: &CStr, xattrs: &[cirkel_repo::Xattr]) -> Result<(), String> {
    if xattrs.is_empty() {
        return Ok(());
    }
    // The directory is reached through its descriptor, and the last
    // component is not followed.
    let mut p = proc_path(dir).into_bytes();
    p.push(b'/');
    p.extend_from_slice(name.to_bytes());
    let p = CString::new(p).map_err(|_| "a name with a NUL byte".to_string())?;
    set_xattrs(
        // SAFETY: all are valid C strings / buffers of the given lengths.
        &|n, v| unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) },
        xattrs,
    )
}

/// Owner, permission bits and times of an open file or directory, in the
/// order that keeps setuid/setgid bits (a chown clears them).
/// Extended attributes (ACLs) go after the owner (a chown clears file
/// capabilities) and before the mode; an attribute that cannot be set is
/// reported once the rest is done.
pub(crate) fn set_meta(
    fd: BorrowedFd<'_>,
    owner: Option<(u32, u32)>,
    xattrs: &[cirkel_repo::Xattr],
    mode: u32,
    mtime_ns: i64,
) -> Result<(), String> {
    let raw = fd.as_raw_fd();
    if let Some((uid, gid)) = owner {
        // SAFETY: `raw` is an open descriptor.
        retry(|| unsafe { libc::fchown(raw, uid, gid) }).map_err(|e| format!("chown: {e}"))?;
    }
    let attrs = set_xattrs(
        // SAFETY: `raw` is an open descriptor, the others valid C strings / buffers.
        &|n, v| unsafe { libc::fsetxattr(raw, n.as_ptr(), v.as_ptr().cast(), v.len(), 0) },
        xattrs,
    );
    // SAFETY: `raw` is an open descriptor.
    retry(|| unsafe { libc::fchmod(raw, mode as libc::mode_t) }).map_err(|e| format!("chmod: {e}"))?;
    let ts = timespecs(mtime_ns);
    // SAFETY: `ts` holds two timespecs and `raw` is an open descriptor.
    retry(|| unsafe { libc::futimens(raw, ts.as_ptr()) }).map_err(|e| format!("set mtime: {e}"))?;
    attrs
}

/// [`set_meta`] for an `O_PATH` descriptor (a FIFO or device node, which is
/// not opened for real): the calls go through `/proc/self/fd`, which leads
/// to that very inode.
pub(crate) fn set_meta_path_fd(
    fd: BorrowedFd<'_>,
    owner: Option<(u32, u32)>,
    xattrs: &[cirkel_repo::Xattr],
    mode: u32,
    mtime_ns: i64,
) -> Result<(), String> {
    let raw = fd.as_raw_fd();
    let p = proc_path(fd);
    if let Some((uid, gid)) = owner {
        // SAFETY: `raw` is an open descriptor and the path an empty C string.
        retry(|| unsafe {
            libc::fchownat(raw, c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
        })
        .map_err(|e| format!("chown: {e}"))?;
    }
    let attrs = set_xattrs(
        // SAFETY: all are valid C strings / buffers of the given lengths.
        &|n, v| unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) },
        xattrs,
    );
    // SAFETY: `p` is a valid C string.
    retry(|| unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }).map_err(|e| format!("chmod: {e}"))?;
    let ts = timespecs(mtime_ns);
    // SAFETY: `p` is a valid C string and `ts` two timespecs.
    retry(|| unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) })
        .map_err(|e| format!("set mtime: {e}"))?;
    attrs
}
