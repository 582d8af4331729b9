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
