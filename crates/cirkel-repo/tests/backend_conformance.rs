//! One suite, every backend: the local filesystem and a real S3-compatible
//! server (moto) started for the test.

use std::sync::Arc;

use bytes::Bytes;
use cirkel_repo::backend::{Backend, Created, LocalBackend, S3Backend, S3Options};
use cirkel_testkit::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server};

async fn suite(b: Arc<dyn Backend>) {
    // create-if-absent
    assert_eq!(b.create("data/ab/obj1", Bytes::from_static(b"hello")).await.unwrap(), Created::New);
    assert_eq!(b.create("data/ab/obj1", Bytes::from_static(b"other")).await.unwrap(), Created::Existed);
    assert_eq!(&b.read("data/ab/obj1").await.unwrap()[..], b"hello", "an existing object is never overwritten");

    // ranged reads
    assert_eq!(&b.read_range("data/ab/obj1", 1..4).await.unwrap()[..], b"ell");

    // not found is its own error
    let e = b.read("data/ab/missing").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");

    // listing by prefix, with sizes, sorted, nothing from other prefixes
    b.create("data/cd/obj2", Bytes::from_static(b"12345678")).await.unwrap();
    b.create("index/i1", Bytes::from_static(b"i")).await.unwrap();
    let listed = b.list("data/").await.unwrap();
    let keys: Vec<_> = listed.iter().map(|o| (o.key.as_str(), o.size)).collect();
    assert_eq!(keys, vec![("data/ab/obj1", 5), ("data/cd/obj2", 8)]);
    let now = chrono::Utc::now();
    for o in &listed {
        let m = o.modified.expect("backends report modification times");
        assert!((now - m).num_seconds().abs() < 300, "{m}");
    }
    assert!(b.list("snapshots/").await.unwrap().is_empty());

    // deletes are idempotent
    b.delete("data/ab/obj1").await.unwrap();
    b.delete("data/ab/obj1").await.unwrap();
    assert!(b.read("data/ab/obj1").await.unwrap_err().is_not_found());
    assert_eq!(b.list("data/").await.unwrap().len(), 1);

    // concurrent creators of one key: exactly one wins, the content is one of theirs
    let futs = (0..8u8).map(|i| {
        let b = b.clone();
        async move { b.create("race", Bytes::from(vec![i; 1000])).await.unwrap() }
    });
    let results = futures::future::join_all(futs).await;
    assert_eq!(results.iter().filter(|r| **r == Created::New).count(), 1);
    let got = b.read("race").await.unwrap();
    assert!(got.iter().all(|&x| x == got[0]) && got.len() == 1000);

    // replace (the config, by `repo repair config`) swaps the whole object
    b.create("config", Bytes::from_static(b"old config")).await.unwrap();
    b.replace("config", Bytes::from_static(b"new")).await.unwrap();
    assert_eq!(&b.read("config").await.unwrap()[..], b"new");

    // larger objects round-trip byte for byte
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    b.create("data/ee/big", Bytes::from(big.clone())).await.unwrap();
    assert_eq!(b.read("data/ee/big").await.unwrap().as_ref(), &big[..]);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

#[test]
fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    // A local repository writes into its directory once `init` made it.
    std::fs::create_dir(dir.path().join("repo")).unwrap();
    rt().block_on(suite(Arc::new(LocalBackend::new(dir.path().join("repo")))));
}

#[test]
fn s3_backend_conforms() {
    let server = S3Server::start();
    let opts = S3Options {
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
        allow_http: Some(true),
        retry_timeout: Some(std::time::Duration::from_secs(5)),
    };
    rt().block_on(suite(Arc::new(S3Backend::new(&server.bucket, "conformance", &opts).unwrap())));
}

#[test]
fn s3_backend_unreachable_is_a_clear_error() {
    let port = cirkel_testkit::free_port();
    let opts = S3Options {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        access_key_id: Some("k".into()),
        secret_access_key: Some("s".into()),
        allow_http: Some(true),
        retry_timeout: Some(std::time::Duration::from_secs(1)),
        ..Default::default()
    };
    let b = S3Backend::new("bucket", "", &opts).unwrap();
    let e = rt().block_on(b.read("config")).unwrap_err();
    assert!(matches!(e, cirkel_repo::BackendError::Unavailable { .. }), "{e:?}");
    assert!(e.to_string().contains("storage unavailable"), "{e}");
    assert!(!format!("{opts:?}").contains("\"s\""), "secret must not appear in Debug");
}

/// A repository directory that vanishes under a writer (moved aside,
/// deleted, unmounted) is never made again by it: the write fails, and
/// nothing appears at the old path; `init` alone makes the directory.
#[test]
fn a_local_repository_that_vanished_is_not_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let b = LocalBackend::new(&root);
    let rt = rt();
    assert_eq!(rt.block_on(b.create("config", Bytes::from_static(b"c"))).unwrap(), Created::New);
    assert!(rt.block_on(b.create("data/ab/abc", Bytes::from_static(b"x"))).is_ok());
    std::fs::rename(&root, dir.path().join("aside")).unwrap();
    let err = rt.block_on(b.create("data/cd/cde", Bytes::from_static(b"y"))).unwrap_err();
    assert!(err.to_string().contains("is gone"), "{err}");
    let err = rt.block_on(b.replace("locks/x", Bytes::from_static(b"z"))).unwrap_err();
    assert!(err.to_string().contains("is gone"), "{err}");
    assert!(!root.exists(), "the writer made the repository again");
    assert!(dir.path().join("aside/data/ab/abc").exists());
}
