//! Property tests of the repository engine on a local backend.

use std::sync::Arc;

use cirkel_repo::backend::LocalBackend;
use cirkel_repo::crypto::KdfParams;
use cirkel_repo::index::Index;
use cirkel_repo::prune::{PruneOptions, prune};
use cirkel_repo::retention::Policy;
use cirkel_repo::verify::{VerifyOptions, verify};
use cirkel_repo::{BlobKind, BlobWriter, Id, InitOptions, Node, Repository, Snapshot, Tree};
use proptest::prelude::*;

fn new_repo(dir: &std::path::Path, encrypt: bool) -> Repository {
    let opts = InitOptions {
        encrypt,
        pack_size: 64 * 1024,
        kdf: KdfParams { m_cost: 256, t_cost: 1, p_cost: 1 },
        ..Default::default()
    };
    Repository::init(Arc::new(LocalBackend::new(dir.join("repo"))), Some(b"pw"), opts).unwrap()
}

fn blob_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // incompressible
        proptest::collection::vec(any::<u8>(), 0..40_000),
        // compressible
        (any::<u8>(), 1usize..100_000).prop_map(|(b, n)| vec![b; n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    /// chunk → pack → index → read gives back every byte, duplicates stored once.
    #[test]
    fn blobs_round_trip(blobs in proptest::collection::vec(blob_strategy(), 1..40), encrypt in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path(), encrypt);
        let writer = BlobWriter::new(&repo, Arc::new(Index::default()));
        let mut ids = Vec::new();
        for b in &blobs {
            ids.push(writer.add(BlobKind::Data, b).unwrap());
        }
        // the same content again: all deduplicated
        for b in &blobs {
            writer.add(BlobKind::Data, b).unwrap();
        }
        let stats = writer.finish().unwrap();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        prop_assert_eq!(stats.blobs_new as usize, distinct.len());

        let reopened = Repository::open(Arc::new(LocalBackend::new(dir.path().join("repo"))), Some(b"pw")).unwrap();
        let index = reopened.load_index().unwrap();
        prop_assert_eq!(index.blob_count(), distinct.len());
        for (id, b) in ids.iter().zip(&blobs) {
            prop_assert_eq!(&reopened.read_blob(&index, id).unwrap(), b);
        }
        // every pack's own header agrees with the index
        for p in index.packs() {
            let bytes = reopened.read_pack(&p.id).unwrap();
            prop_assert_eq!(Id::of(&bytes), p.id);
            let header = cirkel_repo::pack::parse_header(reopened.crypto(), &p.id, &bytes).unwrap();
            prop_assert_eq!(&header, &p.blobs);
        }
    }

    /// Whatever the policy and repack threshold, prune keeps every blob a
    /// kept snapshot reaches, and the repository verifies afterwards.
    #[test]
    fn prune_never_removes_reachable_data(
        snaps in proptest::collection::vec(proptest::collection::vec(0usize..30, 1..12), 1..8),
        keep_last in 1u32..5,
        max_unused in 0.0f64..1.0,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path(), true);
        let pool: Vec<Vec<u8>> = (0..30u32).map(|i| {
            let mut v = i.to_le_bytes().repeat(3000);
            v.extend((0..5000u32).map(|j| (j.wrapping_mul(i + 7) % 256) as u8));
            v
        }).collect();
        let mut expected = Vec::new();
        for (n, picks) in snaps.iter().enumerate() {
            let writer = BlobWriter::new(&repo, Arc::new(repo.load_index().unwrap()));
            let content: Vec<Id> = picks.iter().map(|&i| writer.add(BlobKind::Data, &pool[i]).unwrap()).collect();
            let tree = Tree { nodes: vec![Node::synthetic_file("f".into(), picks.iter().map(|&i| pool[i].len() as u64).sum(), content, 0)]};
            let root = writer.add_tree(&tree).unwrap();
            writer.finish().unwrap();
            let snap = Snapshot {
                time: chrono::Utc::now() + chrono::Duration::seconds(n as i64),
                ..Snapshot::new("files", "h", vec!["/x".into()], root)
            };
            let id = repo.save_snapshot(&snap).unwrap();
            expected.push((id, picks.clone()));
        }
        let opts = PruneOptions { policy: Policy { keep_last, ..Default::default() }, max_unused, ..Default::default() };
        prune(&repo, &opts).unwrap();

        let left = repo.snapshots().unwrap();
        prop_assert_eq!(left.len(), expected.len().min(keep_last as usize));
        let index = repo.load_index().unwrap();
        for (id, snap) in &left {
            let picks = &expected.iter().find(|(e, _)| e == id).unwrap().1;
            let tree = repo.load_tree(&index, &snap.tree).unwrap();
            let data: Vec<u8> = tree.nodes[0].content.iter().flat_map(|b| repo.read_blob(&index, b).unwrap()).collect();
            let want: Vec<u8> = picks.iter().flat_map(|&i| pool[i].clone()).collect();
            prop_assert_eq!(data, want);
        }
        let report = verify(&repo, &VerifyOptions { read_data: true }, &|_, _| {}).unwrap();
        prop_assert!(report.ok(), "{:?}", report.errors);
        prop_assert!(report.notes.is_empty(), "prune leaves no orphans: {:?}", report.notes);
    }
}

/// A file of many blocks keeps its block ids in list blobs: a second tree
/// whose file differs in one block stores one new list, shares the others,
/// reads back whole, and prune keeps exactly what the kept tree needs.
#[test]
fn long_block_lists_are_shared_between_trees() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), true);
    let blocks: Vec<Vec<u8>> = (0..601u32).map(|i| i.to_le_bytes().repeat(50)).collect();
    let mut roots = Vec::new();
    let mut contents = Vec::new();
    for changed in [None, Some(300)] {
        let writer = BlobWriter::new(&repo, Arc::new(repo.load_index().unwrap()));
        let mut content: Vec<Id> = blocks[..600].iter().map(|b| writer.add(BlobKind::Data, b).unwrap()).collect();
        if let Some(at) = changed {
            content[at] = writer.add(BlobKind::Data, &blocks[600]).unwrap();
        }
        let tree = Tree { nodes: vec![Node::synthetic_file("f".into(), 600 * 200, content.clone(), 0)] };
        let root = writer.add_tree(&tree).unwrap();
        let stats = writer.finish().unwrap();
        if changed.is_some() {
            // the changed block, the list holding it, and the tree
            assert_eq!(stats.blobs_new, 3, "{stats:?}");
        }
        let snap = Snapshot {
            time: chrono::Utc::now() + chrono::Duration::seconds(roots.len() as i64),
            ..Snapshot::new("files", "h", vec!["/x".into()], root)
        };
        repo.save_snapshot(&snap).unwrap();
        roots.push(root);
        contents.push(content);
    }
    let index = repo.load_index().unwrap();
    for (root, content) in roots.iter().zip(&contents) {
        let tree = repo.load_tree(&index, root).unwrap();
        assert_eq!(&tree.nodes[0].content, content);
        assert_eq!(tree.nodes[0].content_lists.len(), 3);
    }
    let opts = PruneOptions { policy: Policy { keep_last: 1, ..Default::default() }, ..Default::default() };
    prune(&repo, &opts).unwrap();
    let index = repo.load_index().unwrap();
    let tree = repo.load_tree(&index, &roots[1]).unwrap();
    assert_eq!(tree.nodes[0].content, contents[1]);
    let report = verify(&repo, &VerifyOptions { read_data: true }, &|_, _| {}).unwrap();
    assert!(report.ok(), "{:?}", report.errors);
}

/// Two writers that did not see each other store one blob twice; losing
/// either copy loses nothing, and verify says so.
#[test]
fn any_copy_of_a_duplicated_blob_serves() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), true);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let writer = BlobWriter::new(&repo, Arc::new(Index::default()));
        let id = writer.add(BlobKind::Data, &data).unwrap();
        let tree = Tree { nodes: vec![Node::synthetic_file("f".into(), data.len() as u64, vec![id], 0)] };
        let root = writer.add(BlobKind::Tree, &tree.to_bytes()).unwrap();
        writer.finish().unwrap();
        let snap = Snapshot::new("files", "h", vec!["/x".into()], root);
        repo.save_snapshot(&snap).unwrap();
        ids.push(id);
    }
    assert_eq!(ids[0], ids[1]);
    let index = repo.load_index().unwrap();
    let copies: Vec<_> = index.locations(&ids[0]).map(|l| l.pack).collect();
    assert_eq!(copies.len(), 2, "stored twice");
    // Lose the copy reads would choose first.
    let first = index.get(&ids[0]).unwrap().pack;
    let hex = first.to_hex();
    std::fs::remove_file(dir.path().join("repo/data").join(&hex[..2]).join(&hex)).unwrap();
    assert_eq!(repo.read_blob(&index, &ids[0]).unwrap(), data, "the other copy serves");
    let report = verify(&repo, &VerifyOptions { read_data: true }, &|_, _| {}).unwrap();
    assert!(!report.ok(), "the missing pack is reported");
    assert!(report.damaged.is_empty(), "but no snapshot is damaged: {:?}", report.damaged);
}

// ---- parsers of untrusted bytes -----------------------------------------
//
// Everything below reads bytes an attacker with write access to the storage
// controls. Arbitrary and mutated inputs must never panic, and never make the
// reader allocate more than the input could justify: a counting allocator
// records the largest single allocation, which must stay far below what a
// trusted length field could ask for.

struct Counting;

static LARGEST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The largest allocation any test here legitimately makes is a few MiB
/// (zstd contexts, 100 kB blobs); a length field trusted blindly asks for
/// hundreds of MiB or more.
const ALLOCATION_LIMIT: usize = 48 << 20;

fn assert_bounded() {
    let largest = LARGEST.load(std::sync::atomic::Ordering::Relaxed);
    assert!(largest < ALLOCATION_LIMIT, "an allocation of {largest} bytes");
}

/// Bytes: arbitrary, or a valid seed with some bytes overwritten, some
/// little-endian u32/u64 fields set to extreme values, and maybe truncated.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len().max(1);
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (
            proptest::collection::vec((0..len, any::<u8>()), 0..8),
            proptest::collection::vec((0..len, prop_oneof![Just(u32::MAX), Just(1u32 << 30), any::<u32>()]), 0..3),
            proptest::option::of(0..len + 1),
        )
            .prop_map(move |(bytes, words, cut)| {
                let mut b = seed.clone();
                for (at, v) in bytes {
                    if let Some(x) = b.get_mut(at) {
                        *x = v;
                    }
                }
                for (at, v) in words {
                    if let Some(w) = b.get_mut(at..at + 4) {
                        w.copy_from_slice(&v.to_le_bytes());
                    }
                }
                if let Some(c) = cut {
                    b.truncate(c);
                }
                b
            }),
    ]
}

fn plain_crypto() -> cirkel_repo::crypto::Crypto {
    cirkel_repo::crypto::Crypto::Plain { mac: [7; 32] }
}

fn valid_index_plain() -> Vec<u8> {
    let blobs = (0..3u32)
        .map(|i| cirkel_repo::pack::BlobEntry {
            id: Id::of(&i.to_le_bytes()),
            kind: BlobKind::Data,
            offset: i * 100,
            length: 100,
            raw_length: 200,
            compressed: true,
        })
        .collect();
    cirkel_repo::index::encode(&[cirkel_repo::index::PackRecord { id: Id::of(b"pack"), size: 400, blobs }])
}

/// A metadata object as an unencrypted repository stores it: the declared
/// plaintext length, then zstd; `declared` replaces the honest length.
fn object_bytes(plain: &[u8], declared: Option<u64>) -> Vec<u8> {
    let mut out = declared.unwrap_or(plain.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&zstd::bulk::compress(plain, 3).unwrap());
    out
}

fn valid_snapshot_json() -> Vec<u8> {
    serde_json::to_vec(&Snapshot::new("files", "host", vec!["/a".into()], Id::of(b"tree"))).unwrap()
}

fn valid_tree_json() -> Vec<u8> {
    let mut node = Node::synthetic_file("f".into(), 3, vec![Id::of(b"x")], 0);
    node.content_lists = vec![Id::of(b"l")];
    Tree { nodes: vec![node] }.to_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn index_codec_never_panics_or_over_allocates(b in mutated(valid_index_plain())) {
        let _ = cirkel_repo::index::decode(&Id::of(b"i"), &b);
        assert_bounded();
    }

    #[test]
    fn pack_headers_never_panic_or_over_allocate(b in mutated({
        let mut p = vec![0u8; 300];
        let mut header = Vec::new();
        for i in 0..4u8 {
            header.extend_from_slice(&[i; 32]);
            header.extend_from_slice(&[0, 1]);
            header.extend_from_slice(&(u32::from(i) * 50).to_le_bytes());
            header.extend_from_slice(&50u32.to_le_bytes());
            header.extend_from_slice(&90u32.to_le_bytes());
        }
        p.extend_from_slice(&header);
        p.extend_from_slice(&(header.len() as u32).to_le_bytes());
        p
    })) {
        let _ = cirkel_repo::pack::parse_header(&plain_crypto(), &Id::of(b"p"), &b);
        if b.len() >= 4 {
            let _ = cirkel_repo::pack::parse_sealed_header(&plain_crypto(), &Id::of(b"p"), b.len() as u64, &b[..b.len() - 4]);
        }
        assert_bounded();
    }

    #[test]
    fn tree_and_snapshot_json_never_panic(t in mutated(valid_tree_json()), s in mutated(valid_snapshot_json())) {
        let _ = Tree::from_bytes(&Id::of(b"t"), &t);
        let _ = serde_json::from_slice::<Snapshot>(&s);
        assert_bounded();
    }

    #[test]
    fn key_files_are_checked_before_any_derivation(b in mutated({
        let key = cirkel_repo::crypto::MasterKey::generate();
        let kf = cirkel_repo::crypto::KeyFile::wrap(&key, b"pw", KdfParams { m_cost: 256, t_cost: 1, p_cost: 1 }).unwrap();
        serde_json::to_vec_pretty(&kf).unwrap()
    })) {
        if let Ok(kf) = cirkel_repo::crypto::KeyFile::parse("keys/not-a-hash", &b) {
            // Parsed key files have bounded costs; derive only cheap ones here.
            prop_assert!(kf.params.m_cost <= cirkel_repo::crypto::KDF_MAX_MEMORY_KIB);
            prop_assert!(kf.params.t_cost <= 64 && kf.params.p_cost <= 64);
            if kf.params.m_cost <= 4096 && kf.params.t_cost <= 2 {
                let _ = kf.unwrap_key(b"pw");
            }
        }
        assert_bounded();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Index and snapshot objects, and the config, read through a real
    /// (unencrypted, so unauthenticated) repository.
    #[test]
    fn stored_objects_and_config_never_panic_or_over_allocate(
        index_plain in mutated(valid_index_plain()),
        snap_plain in mutated(valid_snapshot_json()),
        declared in proptest::option::of(prop_oneof![Just(u64::MAX), Just(1u64 << 40), any::<u64>()]),
        raw in mutated(object_bytes(&valid_snapshot_json(), None)),
        config_edit in (0usize..4, prop_oneof![Just(0u64), Just(1), Just(u64::from(u32::MAX)), any::<u32>().prop_map(u64::from)]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        new_repo(dir.path(), false);
        let write = |prefix: &str, bytes: &[u8]| {
            let id = Id::of(bytes);
            std::fs::create_dir_all(root.join(prefix)).unwrap();
            std::fs::write(root.join(format!("{prefix}/{id}")), bytes).unwrap();
            id
        };
        write("index", &object_bytes(&index_plain, declared));
        let snap = write("snapshots", &object_bytes(&snap_plain, declared));
        let raw_snap = write("snapshots", &raw);

        let repo = Repository::open(Arc::new(LocalBackend::new(&root)), None).unwrap();
        let _ = repo.load_index_report();
        let _ = repo.load_snapshot(&snap);
        let _ = repo.load_snapshot(&raw_snap);
        let _ = repo.snapshots_report().unwrap();
        assert_bounded();

        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("config")).unwrap()).unwrap();
        let field = ["/chunker/min", "/chunker/avg", "/chunker/max", "/pack_size"][config_edit.0];
        *config.pointer_mut(field).unwrap() = config_edit.1.into();
        std::fs::write(root.join("config"), serde_json::to_vec(&config).unwrap()).unwrap();
        if let Ok(r) = Repository::open(Arc::new(LocalBackend::new(&root)), None) {
            prop_assert!(r.config().check_bounds().is_ok());
        }
    }

    /// Stream objects (WAL): header counts and lengths are checked against
    /// the object's size before anything is sized by them.
    #[test]
    fn stream_objects_never_panic_or_over_allocate(b in mutated({
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path(), false);
        repo.put_stream("ns", "seed", &[5u8; 3000], 3).unwrap();
        std::fs::read(dir.path().join("repo/streams/ns/seed")).unwrap()
    })) {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path(), false);
        std::fs::create_dir_all(dir.path().join("repo/streams/ns")).unwrap();
        std::fs::write(dir.path().join("repo/streams/ns/x"), &b).unwrap();
        let _ = repo.get_stream("ns", "x");
        assert_bounded();
    }
}
