//! Errors of the repository layer.

use crate::backend::BackendError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when working with a repository. Each variant says what
/// happened; [`Error::hint`] says what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage backend failed (I/O, network, permissions).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The location holds no repository (no `config` object).
    #[error("no cirkel repository at {0}")]
    NotARepository(String),
    /// `repo init` on a location that already holds one.
    #[error("a repository already exists at {0}")]
    AlreadyInitialized(String),
    /// No key file could be opened with the given passphrase.
    #[error("wrong passphrase: no key of the repository opens with it")]
    WrongPassword,
    /// No key opened with the passphrase, and some key files are damaged:
    /// the passphrase may be right and its key file the damaged one.
    #[error(
        "no key of the repository opens with this passphrase, and {} key file(s) are damaged ({}): either the passphrase is wrong or its key file is damaged",
        .0.len(), .0.join("; ")
    )]
    WrongPasswordOrDamagedKey(Vec<String>),
    /// A repository parameter is out of range, or the config fails its
    /// authentication: it was changed outside cirkel.
    #[error("invalid repository config at {location}: {detail}")]
    BadConfig { location: String, detail: String },
    /// The repository is encrypted but no passphrase was given.
    #[error("the repository is encrypted and no passphrase was given")]
    PasswordRequired,
    /// An object failed authentication, its hash, or its format.
    #[error("corrupt {kind} {name}: {detail}")]
    Corrupt { kind: &'static str, name: String, detail: String },
    /// A blob that a snapshot references is in no index.
    #[error("blob {0} is missing from the repository")]
    MissingBlob(String),
    /// A snapshot id (or prefix) matched no snapshot, or more than one.
    #[error("{0}")]
    SnapshotLookup(String),
    /// Another process holds a lock that conflicts with this operation.
    #[error("repository is locked: {0}")]
    Locked(String),
    /// The repository's format is not one this build understands.
    #[error("unsupported repository: {0}")]
    Unsupported(String),
    /// Two repositories that must share a master key do not.
    #[error("{src} and {dst} do not share a master key")]
    KeysDiffer { src: String, dst: String },
    /// A stream name already holds different content.
    #[error("{0} already exists with different content; refusing to overwrite it")]
    StreamConflict(String),
    /// An earlier failure, replayed (for example to every thread of a writer).
    #[error("{message}")]
    Failed { message: String, hint: Option<String> },
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// A copy that keeps the message and the hint.
    pub fn replay(&self) -> Error {
        Error::Failed { message: self.to_string(), hint: self.hint() }
    }

    pub(crate) fn corrupt(kind: &'static str, name: impl ToString, detail: impl ToString) -> Self {
        Error::Corrupt { kind, name: name.to_string(), detail: detail.to_string() }
    }

    /// A sentence telling the user what to do next.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::Backend(e) => return e.hint(),
            Error::NotARepository(_) => {
                "check --repo / CIRKEL_REPO, or create one with `cirkel repo init`".into()
            }
            Error::AlreadyInitialized(_) => "use the existing repository, or choose another --repo".into(),
            Error::WrongPassword => {
                "check --password-file / CIRKEL_PASSWORD_FILE / CIRKEL_PASSWORD; the passphrase cannot be recovered".into()
            }
            Error::WrongPasswordOrDamagedKey(_) => {
                "check the passphrase; if it is right, restore the damaged key file from a copy of the repository, or open it with another key's passphrase and `cirkel repo key remove` the damaged one".into()
            }
            Error::BadConfig { .. } => {
                "the config object was changed outside cirkel; restore it from a copy of the repository (its values are fixed at `repo init`)".into()
            }
            Error::PasswordRequired => {
                "pass --password-file FILE, or set CIRKEL_PASSWORD_FILE or CIRKEL_PASSWORD".into()
            }
            Error::Corrupt { .. } | Error::MissingBlob(_) => {
                "run `cirkel repo verify --read-data` to find every affected snapshot; restore those from a second repository (`cirkel repo copy`)".into()
            }
            Error::SnapshotLookup(_) => "list snapshots with `cirkel snapshots`".into(),
            Error::Locked(_) => {
                "wait for the other operation to finish; if its process is gone, run `cirkel repo unlock`".into()
            }
            Error::Unsupported(_) => "upgrade cirkel".into(),
            Error::KeysDiffer { .. } => {
                "create the destination with `cirkel repo init --repo DEST --copy-keys-from SOURCE`, then copy again".into()
            }
            Error::Failed { hint, .. } => return hint.clone(),
            Error::StreamConflict(_) => {
                "two sources are writing to one repository under the same name; give each its own repository or cluster".into()
            }
            Error::Other(_) => return None,
        })
    }
}

/// An error and its sources on one line. Libraries such as `object_store`
/// and `tokio-postgres` put the useful part (connection refused, an HTTP
/// status, the server's message) in the source chain.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}
