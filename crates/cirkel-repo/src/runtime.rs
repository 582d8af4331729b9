//! The process's one async runtime.
//!
//! Storage backends and PostgreSQL connections are async; most of cirkel's
//! callers are not. Instead of each `Repository` or connection building a
//! runtime of its own, every blocking caller runs its futures on one shared
//! multi-threaded runtime: the daemon's, when `cirkel serve` installs it,
//! else one built on first use. [`block_on`] is safe from a plain thread,
//! from a `spawn_blocking` task and from a task on a multi-threaded
//! runtime's worker (it steps out of the worker with `block_in_place`), so
//! blocking code can be called from the daemon's async workers.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

static INSTALLED: OnceLock<Handle> = OnceLock::new();
static OWN: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Makes `handle` the runtime every blocking call runs on. It must be a
/// multi-threaded runtime that lives as long as the process uses it;
/// returns false (and changes nothing) when a runtime is already in use.
pub fn install(handle: Handle) -> bool {
    if OWN.get().is_some() || handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return false;
    }
    INSTALLED.set(handle).is_ok()
}

/// The shared runtime's handle, built on first use when none was installed.
pub fn handle() -> std::io::Result<Handle> {
    if let Some(h) = INSTALLED.get() {
        return Ok(h.clone());
    }
    let own = OWN.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("cirkel-io")
            .build()
            .map_err(|e| e.to_string())
    });
    match own {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(e) => Err(std::io::Error::other(format!("start the I/O runtime: {e}"))),
    }
}

/// Runs `fut` to completion on the shared runtime and returns its output,
/// blocking the calling thread. Inside a current-thread runtime this
/// cannot work and panics, as tokio's own `block_on` does there.
pub fn block_on<F: Future>(fut: F) -> std::io::Result<F::Output> {
    Ok(Shared::get()?.block_on(fut))
}

/// A handle on the shared runtime, for objects that block on it often.
#[derive(Clone, Debug)]
pub struct Shared(Handle);

impl Shared {
    pub fn get() -> std::io::Result<Shared> {
        handle().map(Shared)
    }

    /// See [`block_on`].
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        match Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| self.0.block_on(fut)),
            Err(_) => self.0.block_on(fut),
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_calls_work_from_threads_blocking_tasks_and_async_workers() {
        assert_eq!(block_on(async { 1 }).unwrap(), 1);
        let h = handle().unwrap();
        let from_blocking = h.block_on(async { tokio::task::spawn_blocking(|| block_on(async { 2 }).unwrap()).await });
        assert_eq!(from_blocking.unwrap(), 2);
        let from_worker = h.block_on(async { tokio::spawn(async { block_on(async { 3 }).unwrap() }).await });
        assert_eq!(from_worker.unwrap(), 3);
    }
}
