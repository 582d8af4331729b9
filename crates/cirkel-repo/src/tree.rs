//! Directory trees: how a snapshot describes files, stored as tree blobs.

use serde::{Deserialize, Serialize};

use crate::Id;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ctime_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub size: u64,
    /// File content, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Where a long `content` is stored: blobs of [`LIST_IDS`] ids each, so
    /// that a backup of a changed file rewrites only the lists that changed.
    /// [`Repository::load_tree`](crate::Repository::load_tree) fills
    /// `content` from them; both are never stored together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_lists: Vec<Id>,
    /// A directory's tree blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl Node {
    /// A file written by cirkel itself (not read from a filesystem): owned
    /// by nobody in particular, readable by its owner only.
    pub fn synthetic_file(name: String, size: u64, content: Vec<Id>, mtime_ns: i64) -> Node {
        Node {
            name,
            kind: NodeKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime_ns,
            ctime_ns: 0,
            inode: 0,
            size,
            content,
            content_lists: Vec::new(),
            subtree: None,
            link_target: None,
        }
    }

    /// A name is safe to join onto a restore target: a single, non-empty
    /// path component that is neither `.` nor `..`.
    pub fn name_is_safe(name: &str) -> bool {
        !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
    }
}

/// A directory's entries, sorted by name.
/// Block ids per list blob: 8 KiB of ids, 32 MiB of a file cut into
/// 128 KiB blocks.
pub const LIST_IDS: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(id: &Id, b: &[u8]) -> crate::Result<Self> {
        serde_json::from_slice(b).map_err(|e| crate::Error::corrupt("tree", id, e))
    }

    pub fn find(&self, name: &str) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.as_str().cmp(name)).ok().map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_are_rejected() {
        for bad in ["", ".", "..", "a/b", "/etc", "x\0"] {
            assert!(!Node::name_is_safe(bad), "{bad:?}");
        }
        for good in ["a", "..a", ".hidden", "a b"] {
            assert!(Node::name_is_safe(good));
        }
    }
}
