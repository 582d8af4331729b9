//! Directory trees: how a snapshot describes files, stored as tree blobs.
//!
//! A node keeps everything a restore needs to put an entry back as it was:
//! its name and link target byte for byte (names on Unix are bytes, not
//! text), its hard-link identity, its extended attributes (POSIX ACLs
//! among them) and, for device nodes, the device number. Fields added over
//! time are optional, so trees written before them still read.

use serde::{Deserialize, Serialize};

use crate::Id;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    #[default]
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    /// A character device; `rdev` holds its number.
    CharDevice,
    /// A block device; `rdev` holds its number.
    BlockDevice,
}

/// One entry of a directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The name, or when it is not valid UTF-8 a lossy rendering of it for
    /// display and ordering; [`Node::raw_name`] is what a restore creates.
    pub name: String,
    /// The name's bytes, stored only when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_bytes")]
    pub name_bytes: Option<Vec<u8>>,
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
    /// The link target's bytes, stored only when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_bytes")]
    pub link_target_bytes: Option<Vec<u8>>,
    /// Device of the file system the entry was on; with `inode`, what
    /// identifies the hard links of one file.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub device: u64,
    /// Link count of a file with more than one hard link (0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub links: u64,
    /// Device number of a character or block device.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub rdev: u64,
    /// Extended attributes, POSIX ACLs (`system.posix_acl_*`) included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute: its full name (`user.comment`) and raw value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: String,
    #[serde(with = "hex_value")]
    pub value: Vec<u8>,
}

/// Bytes as a hex string in tree JSON.
mod hex_value {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Optional bytes as a hex string in tree JSON.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => hex::decode(s).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
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
        Node { name, kind: NodeKind::File, mode: 0o600, mtime_ns, size, content, ..Node::default() }
    }

    /// The name as the file system has it.
    pub fn raw_name(&self) -> &[u8] {
        self.name_bytes.as_deref().unwrap_or(self.name.as_bytes())
    }

    /// Sets the name from the file system's bytes: as text when they are
    /// UTF-8, byte for byte otherwise.
    pub fn set_raw_name(&mut self, name: &[u8]) {
        (self.name, self.name_bytes) = text_or_bytes(name);
    }

    /// The symlink target as the file system has it.
    pub fn raw_link_target(&self) -> Option<&[u8]> {
        self.link_target_bytes.as_deref().or(self.link_target.as_deref().map(str::as_bytes))
    }

    /// Sets the symlink target from the file system's bytes.
    pub fn set_raw_link_target(&mut self, target: &[u8]) {
        let (text, bytes) = text_or_bytes(target);
        (self.link_target, self.link_target_bytes) = (Some(text), bytes);
    }

    /// A name is safe to join onto a restore target: a single, non-empty
    /// path component that is neither `.` nor `..`.
    pub fn name_is_safe(name: &str) -> bool {
        Node::raw_name_is_safe(name.as_bytes())
    }

    /// [`Node::name_is_safe`] for a name's bytes.
    pub fn raw_name_is_safe(name: &[u8]) -> bool {
        !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
    }
}

fn text_or_bytes(b: &[u8]) -> (String, Option<Vec<u8>>) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (String::from_utf8_lossy(b).into_owned(), Some(b.to_vec())),
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

    /// The node whose name has exactly these bytes (names that are not
    /// UTF-8 can share their lossy rendering).
    pub fn find_raw(&self, name: &[u8]) -> Option<&Node> {
        let shown = String::from_utf8_lossy(name);
        let start = self.nodes.partition_point(|n| n.name.as_str() < shown.as_ref());
        self.nodes[start..].iter().take_while(|n| n.name == shown).find(|n| n.raw_name() == name)
    }

    /// Sorts nodes by name, and names that render alike by their bytes.
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.raw_name().cmp(b.raw_name())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names that are not UTF-8 keep their bytes, two that render alike stay
    /// apart, and trees written before these fields existed still read.
    #[test]
    fn names_round_trip_byte_for_byte_and_old_trees_read() {
        let mut a = Node::default();
        a.set_raw_name(b"caf\xe9");
        let mut b = Node::default();
        b.set_raw_name(b"caf\xe8");
        b.set_raw_link_target(b"/x/\xff");
        let mut c = Node::default();
        c.set_raw_name("café".as_bytes());
        assert_eq!(a.name, b.name);
        assert_eq!(c.name_bytes, None);
        let mut tree = Tree { nodes: vec![c.clone(), b.clone(), a.clone()] };
        tree.sort();
        let back = Tree::from_bytes(&Id([0; 32]), &tree.to_bytes()).unwrap();
        assert_eq!(back, tree);
        assert_eq!(back.find_raw(b"caf\xe9").unwrap().raw_name(), b"caf\xe9");
        assert_eq!(back.find_raw(b"caf\xe8").unwrap().raw_link_target(), Some(&b"/x/\xff"[..]));
        assert_eq!(back.find_raw("café".as_bytes()), Some(&c));
        assert_eq!(back.find_raw(b"caf\xe7"), None);

        let old =
            br#"{"nodes":[{"name":"a","kind":"symlink","mode":511,"uid":0,"gid":0,"mtime_ns":5,"link_target":"b"}]}"#;
        let t = Tree::from_bytes(&Id([0; 32]), old).unwrap();
        assert_eq!(t.nodes[0].raw_name(), b"a");
        assert_eq!(t.nodes[0].raw_link_target(), Some(&b"b"[..]));
        assert!(t.nodes[0].xattrs.is_empty() && t.nodes[0].links == 0);
    }

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
