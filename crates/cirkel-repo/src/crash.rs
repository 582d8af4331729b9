//! Crash points for tests: `CIRKEL_CRASH_AT=<name>` makes the process kill
//! itself with SIGKILL when it reaches the named point, so tests can prove
//! that a crash at exactly that step leaves the repository consistent.
//! Unset (always, in normal use), a crash point does nothing.

use std::sync::OnceLock;

static TARGET: OnceLock<Option<String>> = OnceLock::new();

pub fn point(name: &str) {
    let target = TARGET.get_or_init(|| std::env::var("CIRKEL_CRASH_AT").ok());
    if target.as_deref() == Some(name) {
        // SAFETY: sending SIGKILL to ourselves; nothing runs after it.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
