//! Buckets as a source: backups of a real S3-compatible server (moto),
//! filled and described by an independent client (boto3).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use cirkel_testkit::S3Server;
use common::*;
use serde_json::{Value, json};

const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/s3tool.py");

/// Runs the independent S3 client against `server`, with `input` on stdin.
fn tool(server: &S3Server, args: &[&str], input: &Value) -> String {
    let mut child = Command::new("python3")
        .arg(TOOL)
        .arg(server.endpoint())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test.sh installs boto3 with moto[server])");
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "s3tool {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn dump(server: &S3Server, bucket: &str) -> Value {
    serde_json::from_str(&tool(server, &["dump", bucket], &Value::Null)).unwrap()
}

/// A local repository and a configuration naming the server's `uploads` bucket.
fn setup(server: &S3Server, bucket_table: &str) -> Env {
    let mut env = Env::new();
    env.extra_env = server.env();
    env.init();
    let config = format!(
        "[buckets.uploads]\nurl = \"s3://uploads\"\n{bucket_table}\n[buckets.uploads.s3]\nendpoint = \"{}\"\n",
        server.endpoint()
    );
    std::fs::write(env.path("cirkel.toml"), config).unwrap();
    env.extra_env.push(("CIRKEL_CONFIG".into(), env.path("cirkel.toml").display().to_string()));
    env
}

const UNUSUAL: &[&str] = &[
    "a b.txt",
    "dir//double",
    "trailing/",
    "/leading",
    "ünï/cødé ✓",
    "x/../y",
    "./dot",
    "percent%2Fenc%",
    "plus+sign",
    "q?uery#frag&amp=1",
    "quote\"'<>",
    "emoji-😀",
    "space at end ",
    "~tilde/(paren)[bracket]{brace}",
];

#[test]
fn a_bucket_round_trips_with_metadata_and_unusual_keys() {
    let server = S3Server::start();
    tool(&server, &["create", "uploads"], &Value::Null);
    tool(&server, &["create", "restored"], &Value::Null);
    let mut objects: Vec<Value> =
        UNUSUAL.iter().map(|k| json!({ "key": k, "data": format!("content of {k}") })).collect();
    objects.push(json!({
        "key": "images/cat.png",
        "data": "not really a png",
        "content_type": "image/png",
        "cache_control": "max-age=3600",
        "content_disposition": "attachment; filename=\"cat.png\"",
        "metadata": { "owner": "ada", "uploaded-by": "web-7" },
    }));
    objects.push(json!({ "key": "empty", "data": "" }));
    // Larger than one part of a restore's multipart upload, and chunked.
    objects.push(json!({ "key": "big/video.bin", "fill": ["v", 20_000_000], "content_type": "video/mp4" }));
    tool(&server, &["put", "uploads"], &json!(objects));
    let before = dump(&server, "uploads");
    assert_eq!(before.as_object().unwrap().len(), objects.len(), "every key was stored: {before}");

    let env = setup(&server, "");
    let v = env.json(&["backup", "bucket", "uploads"]);
    assert_eq!(v["stats"]["objects"], objects.len());
    assert_eq!(v["stats"]["read"], objects.len());
    assert_eq!(v["snapshot"]["kind"], "bucket");
    env.ok(&["repo", "verify", "--read-data"]);

    let out = env.json(&["restore", "bucket", "latest", "--to", "s3://restored"]);
    assert_eq!(out["report"]["objects"], objects.len());
    assert_eq!(dump(&server, "restored"), before, "keys, bytes, content headers and metadata come back");

    // A target that holds objects is refused, and nothing in it changes.
    let err = env.fails(&["restore", "bucket", "latest", "--to", "s3://restored"]);
    assert!(err.contains("already holds objects") && err.contains("--force"), "{err}");
    // Into a prefix of another bucket, and over it again with --force.
    env.ok(&["restore", "bucket", "latest", "--to", "s3://restored/copy"]);
    env.ok(&["restore", "bucket", "latest", "--to", "s3://restored/copy", "--force"]);
    let copy = dump(&server, "restored");
    for (k, d) in before.as_object().unwrap() {
        assert_eq!(&copy[format!("copy/{k}")], d, "{k} below the prefix");
    }
}

#[test]
fn an_incremental_backup_reads_only_changed_objects() {
    let server = S3Server::start();
    tool(&server, &["create", "uploads"], &Value::Null);
    let first: Vec<Value> = (0..40)
        .map(
            |i| json!({ "key": format!("u/{i:03}"), "data": format!("first {i}"), "metadata": { "n": i.to_string() } }),
        )
        .collect();
    tool(&server, &["put", "uploads"], &json!(first));
    let env = setup(&server, "tags = [\"uploads\"]");
    let v1 = env.json(&["backup", "bucket", "uploads"]);
    assert_eq!(v1["stats"]["read"], 40);
    let state1 = dump(&server, "uploads");

    // Two changed, one new, one deleted.
    tool(
        &server,
        &["put", "uploads"],
        &json!([
            { "key": "u/003", "data": "changed three" },
            { "key": "u/017", "data": "first 17 but longer now" },
            { "key": "u/new", "data": "new", "content_type": "text/plain" },
        ]),
    );
    tool(&server, &["delete", "uploads"], &json!(["u/020"]));
    let v2 = env.json(&["backup", "bucket", "uploads"]);
    assert_eq!(v2["stats"]["read"], 3, "only the changed and new objects are read: {v2}");
    assert_eq!(v2["stats"]["reused"], 37);
    assert_eq!(v2["stats"]["objects"], 40);
    assert_eq!(v2["parent"], v1["id"]);
    assert_eq!(v2["snapshot"]["tags"], json!(["uploads"]));
    let state2 = dump(&server, "uploads");

    // Nothing changed: nothing read.
    let v3 = env.json(&["backup", "bucket", "uploads"]);
    assert_eq!(v3["stats"]["read"], 0, "{v3}");

    // Each snapshot restores the bucket as it was.
    for (id, state, target) in [(&v1["id"], &state1, "first"), (&v2["id"], &state2, "second")] {
        tool(&server, &["create", target], &Value::Null);
        env.ok(&["restore", "bucket", id.as_str().unwrap(), "--to", &format!("s3://{target}")]);
        assert_eq!(&dump(&server, target), state, "snapshot {id}");
    }
    // --force reads everything again.
    let v4 = env.json(&["backup", "bucket", "uploads", "--force"]);
    assert_eq!(v4["stats"]["read"], 40);
}

#[test]
fn objects_changing_during_the_backup_are_never_torn() {
    let server = S3Server::start();
    tool(&server, &["create", "uploads"], &Value::Null);
    let keys: Vec<String> = (0..6).map(|i| format!("hot/{i}")).collect();
    let steady: Vec<Value> = (0..30).map(|i| json!({ "key": format!("cold/{i}"), "fill": ["c", 300_000] })).collect();
    tool(&server, &["put", "uploads"], &json!(steady));
    let env = setup(&server, "");
    // A writer rewrites and deletes the hot keys while backups run.
    let mut churn = Command::new("python3")
        .arg(TOOL)
        .arg(server.endpoint())
        .arg("churn")
        .arg("uploads")
        .args(&keys)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let v = env.json(&["backup", "bucket", "uploads"]);
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    drop(churn.stdin.take());
    let out = churn.wait_with_output().unwrap();
    let rounds: u64 = stdout(&out).trim().parse().unwrap();
    assert!(rounds > 0, "the writer wrote");
    env.ok(&["repo", "verify", "--read-data"]);
    for (n, id) in ids.iter().enumerate() {
        let target = format!("check{n}");
        tool(&server, &["create", &target], &Value::Null);
        env.ok(&["restore", "bucket", id, "--to", &format!("s3://{target}")]);
        let restored = dump(&server, &target);
        for (key, d) in restored.as_object().unwrap() {
            if !key.starts_with("hot/") {
                continue;
            }
            // Every restored object is one whole version: one byte repeated,
            // the byte its metadata names, at one of the sizes written.
            let fill = d["metadata"]["fill"].as_str().unwrap();
            assert_eq!(d["first"].as_str().unwrap(), fill, "{key} in snapshot {id}");
            let size = d["size"].as_u64().unwrap();
            assert!(size >= 100_000 && (size - 100_000) % 50_000 == 0, "{key}: {size} bytes");
            let expect = sha256_of_fill(fill.as_bytes()[0], size as usize);
            assert_eq!(d["sha256"].as_str().unwrap(), expect, "{key} in snapshot {id} is one version, whole");
        }
        assert_eq!(restored.as_object().unwrap().keys().filter(|k| k.starts_with("cold/")).count(), 30);
    }
}

/// SHA-256 of `n` times the byte `b`, computed by the independent client.
fn sha256_of_fill(b: u8, n: usize) -> String {
    let out = Command::new("python3")
        .args(["-c", &format!("import hashlib; print(hashlib.sha256(bytes([{b}]) * {n}).hexdigest())")])
        .output()
        .unwrap();
    stdout(&out).trim().to_string()
}

#[test]
fn every_version_of_a_versioned_bucket_is_kept() {
    let server = S3Server::start();
    tool(&server, &["create", "uploads", "versioned"], &Value::Null);
    for round in 0..3 {
        tool(
            &server,
            &["put", "uploads"],
            &json!([
                { "key": "doc", "data": format!("doc v{round}") },
                { "key": "gone", "data": format!("gone v{round}") },
            ]),
        );
    }
    tool(&server, &["delete", "uploads"], &json!(["gone"]));
    let history = tool(&server, &["versions", "uploads"], &Value::Null);
    let env = setup(&server, "versions = true");
    let v = env.json(&["backup", "bucket", "uploads"]);
    assert_eq!(v["stats"]["objects"], 7, "six versions and a delete marker: {v}");
    // A second backup reads no version again: a version never changes.
    let v2 = env.json(&["backup", "bucket", "uploads"]);
    assert_eq!(v2["stats"]["read"], 0, "{v2}");

    tool(&server, &["create", "again", "versioned"], &Value::Null);
    let out = env.json(&["restore", "bucket", "latest", "--to", "s3://again", "--all-versions"]);
    assert_eq!(out["report"]["objects"], 6);
    assert_eq!(out["report"]["deleted"], 1);
    let replayed = tool(&server, &["versions", "again"], &Value::Null);
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history["gone"]["deleted"], true);
    assert_eq!(history["doc"]["versions"].as_array().unwrap().len(), 3);
    assert_eq!(
        serde_json::from_str::<Value>(&replayed).unwrap(),
        history,
        "the same history, in order, ending deleted"
    );
    // Without --all-versions only what is current comes back.
    tool(&server, &["create", "current"], &Value::Null);
    env.ok(&["restore", "bucket", "latest", "--to", "s3://current"]);
    let current = dump(&server, "current");
    assert_eq!(current.as_object().unwrap().keys().collect::<Vec<_>>(), ["doc"]);
    assert_eq!(current["doc"], dump(&server, "uploads")["doc"]);
}

#[test]
fn bucket_failures_say_what_went_wrong_and_what_to_do() {
    let mut server = S3Server::start();
    tool(&server, &["create", "uploads"], &Value::Null);
    tool(&server, &["put", "uploads"], &json!([{ "key": "a", "data": "a" }]));
    let mut env = setup(&server, "");
    let err = env.fails(&["backup", "bucket", "nope"]);
    assert!(err.contains("no bucket named `nope`") && err.contains("uploads"), "{err}");
    let err = env.fails(&["backup", "bucket", "s3://no-such-bucket"]);
    assert!(err.contains("S3 refused") && err.contains("NoSuchBucket"), "{err}");
    let err = env.fails(&["restore", "bucket", "latest", "--to", "s3://uploads"]);
    assert!(err.contains("no bucket snapshot"), "{err}");
    let err = env.fails(&["restore", "bucket", "latest", "--to", "restored"]);
    assert!(err.contains("neither an s3:// URL") && err.contains("./restored"), "{err}");

    // The server gone: retried, then refused with a hint; no snapshot.
    server.stop();
    env.extra_env.push(("CIRKEL_S3_RETRY_TIMEOUT".into(), "2s".into()));
    let err = env.fails(&["backup", "bucket", "uploads"]);
    assert!(err.contains("S3 unavailable") && err.contains("reachable"), "{err}");
    assert!(env.snapshot_ids().is_empty());

    // A configuration error names the line.
    std::fs::write(env.path("bad.toml"), "[buckets.x]\nurl = \"/srv/uploads\"\nschedule = \"nope\"\n").unwrap();
    let out = env.run(&["--config", env.path("bad.toml").to_str().unwrap(), "config", "check"]);
    assert!(!out.status.success());
    let err = format!("{}{}", stdout(&out), stderr(&out));
    assert!(err.contains("bad.toml:2") && err.contains("not an s3:// URL"), "{err}");
    assert!(err.contains("bad.toml:3"), "{err}");
}

/// Keys a directory can hold as they are, each with its content.
const AS_FILES: &[(&str, &str)] = &[
    ("a b.txt", "spaces"),
    ("ünï/cødé ✓.txt", "unicode"),
    ("100%25 done%", "percent"),
    ("plus+sign", "plus"),
    ("a/b/c", "nested"),
    ("...", "dots are a name"),
];

fn read_tree(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    walk_files(root)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn a_bucket_restores_into_a_directory_and_never_outside_it() {
    let server = S3Server::start();
    tool(&server, &["create", "uploads"], &Value::Null);
    let mut objects: Vec<Value> = AS_FILES.iter().map(|(k, d)| json!({ "key": k, "data": d })).collect();
    objects.push(json!({ "key": "folder/", "data": "" }));
    objects.push(
        json!({ "key": "images/cat.png", "data": "png", "content_type": "image/png", "metadata": { "owner": "ada" } }),
    );
    tool(&server, &["put", "uploads"], &json!(objects));
    let env = setup(&server, "");
    env.ok(&["backup", "bucket", "uploads"]);

    let dir = env.path("out/uploads");
    let manifest = env.path("out/uploads.json");
    let v = env.json(&[
        "restore",
        "bucket",
        "latest",
        "--to",
        dir.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(v["report"]["objects"], AS_FILES.len() + 1, "{v}");
    let mut want: std::collections::BTreeMap<String, String> =
        AS_FILES.iter().map(|(k, d)| (k.to_string(), d.to_string())).collect();
    want.insert("images/cat.png".into(), "png".into());
    assert_eq!(read_tree(&dir), want, "every key a file, with its content");
    assert!(dir.join("folder").is_dir(), "a folder key is a directory");
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let cat = m.as_array().unwrap().iter().find(|e| e["key"] == "images/cat.png").unwrap();
    assert_eq!(cat["headers"]["content-type"], "image/png", "{m:#}");
    assert_eq!(cat["metadata"]["owner"], "ada", "{m:#}");

    // Nothing already there is replaced, even with --force.
    let err = env.fails(&["restore", "bucket", "latest", "--to", dir.to_str().unwrap()]);
    assert!(err.contains("already holds files") && err.contains("--force"), "{err}");
    let err = env.fails(&["restore", "bucket", "latest", "--to", dir.to_str().unwrap(), "--force"]);
    assert!(err.contains("File exists") || err.contains("exists"), "{err}");
    assert_eq!(read_tree(&dir), want);

    // Keys that are no path below the directory: refused, named, nothing written.
    tool(
        &server,
        &["put", "uploads"],
        &json!([
            { "key": "x/../../escape", "data": "out" },
            { "key": "/etc/cirkel-test-absolute", "data": "abs" },
            { "key": "a/b", "data": "a file where a directory is" },
        ]),
    );
    env.ok(&["backup", "bucket", "uploads"]);
    let unsafe_dir = env.path("unsafe/uploads");
    let err = env.fails(&["restore", "bucket", "latest", "--to", unsafe_dir.to_str().unwrap()]);
    assert!(err.contains("3 key(s)") && err.contains("x/../../escape") && err.contains("`..`"), "{err}");
    assert!(err.contains("absolute") && err.contains("another key has it as its directory"), "{err}");
    assert!(err.contains("s3://"), "the hint names the way that keeps every key: {err}");
    assert!(!env.path("unsafe").exists() && !env.path("escape").exists());
    assert!(!std::path::Path::new("/etc/cirkel-test-absolute").exists());
}

/// Two S3 servers, two regions: the `uploads` bucket and the main
/// repository on the first, the second repository and the bucket
/// `uploads-dr` (described, once needed, as `[buckets.uploads-dr]` with its
/// own endpoint) on the second.
#[test]
fn recover_brings_a_bucket_back_from_the_second_region() {
    let mut first = S3Server::start();
    let second = S3Server::start();
    tool(&first, &["create", "uploads"], &Value::Null);
    tool(&second, &["create", "uploads-dr"], &Value::Null);
    let mut objects: Vec<Value> = AS_FILES.iter().map(|(k, d)| json!({ "key": k, "data": d })).collect();
    objects.push(json!({
        "key": "images/cat.png",
        "data": "not really a png",
        "content_type": "image/png",
        "metadata": { "owner": "ada" },
    }));
    tool(&first, &["put", "uploads"], &json!(objects));
    let before = dump(&first, "uploads");

    let mut env = Env::new();
    env.repo = "s3://cirkel-test/main".into();
    // Credentials only: every repository and bucket names its endpoint.
    env.extra_env = first.env().into_iter().filter(|(k, _)| k != "AWS_ENDPOINT_URL").collect();
    env.extra_env.push(("AWS_ENDPOINT_URL".into(), format!("http://127.0.0.1:{}", cirkel_testkit::free_port())));
    let (state, first_endpoint) = (env.path("state"), first.endpoint());
    let config = |extra: &str| {
        format!(
            "[state]\ndir = \"{state}\"\n\
             [repository]\nurl = \"s3://cirkel-test/main\"\n[repository.s3]\nendpoint = \"{first}\"\n\
             [repositories.dr]\nurl = \"s3://cirkel-test/dr\"\n[repositories.dr.s3]\nendpoint = \"{second}\"\n\
             [buckets.uploads]\nurl = \"s3://uploads\"\n[buckets.uploads.s3]\nendpoint = \"{first}\"\n{extra}",
            state = state.display(),
            first = first_endpoint,
            second = second.endpoint(),
        )
    };
    std::fs::write(env.path("cirkel.toml"), config("")).unwrap();
    env.extra_env.push(("CIRKEL_CONFIG".into(), env.path("cirkel.toml").display().to_string()));
    env.init();
    env.ok(&["repo", "init", "--repo", "dr", "--copy-keys-from", &env.repo]);
    let snap = env.json(&["backup", "bucket", "uploads"]);
    env.ok(&["repo", "copy", "--to", "dr"]);
    // The first region lost: its server, the bucket and the main repository.
    first.stop();

    let plan = env.json(&["recover", "--from", "dr", "--dry-run"]);
    let step = &plan["steps"][0];
    assert_eq!(step["source"], "bucket/uploads", "{plan:#}");
    assert_eq!(plan["steps"].as_array().unwrap().len(), 1, "{plan:#}");
    assert_eq!(step["snapshot"], snap["id"]);
    assert_eq!(step["dir"], "buckets/uploads");
    assert!(step["bytes"].as_u64().unwrap() > 0 && step["predicted_s"].as_f64().is_some(), "{step}");
    assert!(step["rpo_s"].as_f64().is_some() && step["data_time"].is_string(), "{step}");
    let text = env.ok(&["recover", "--from", "dr", "--dry-run"]);
    assert!(text.contains("bucket/uploads") && text.contains("buckets/uploads/"), "{text}");

    // By default: objects as files below --to.
    let to = env.path("rebuilt");
    let v = env.json(&["recover", "--from", "dr", "--to", to.to_str().unwrap()]);
    assert_eq!(v["recover"]["ok"], true, "{v:#}");
    assert!(v["recover"]["steps"][0]["seconds"].as_f64().is_some(), "{v:#}");
    let mut want: std::collections::BTreeMap<String, String> =
        AS_FILES.iter().map(|(k, d)| (k.to_string(), d.to_string())).collect();
    want.insert("images/cat.png".into(), "not really a png".into());
    assert_eq!(read_tree(&to.join("buckets/uploads")), want);
    let m: Value = serde_json::from_slice(&std::fs::read(to.join("buckets/uploads.objects.json")).unwrap()).unwrap();
    assert!(m.to_string().contains("image/png"), "{m}");
    // The region drill rebuilds it into a scratch directory and counts its files.
    let drill = env.json(&["drill", "region", "--from", "dr"]);
    assert_eq!(drill["drill"]["passed"], true, "{drill:#}");
    let check = &drill["drill"]["checks"][0];
    assert_eq!((&check["source"], &check["counts"]["objects"]), (&json!("bucket/uploads"), &json!(want.len())));
    // Again into the same directory: the bucket's directory exists, refused.
    let err = env.fails(&["recover", "--from", "dr", "--to", to.to_str().unwrap(), "--force"]);
    assert!(err.contains("buckets/uploads") && err.contains("already exists"), "{err}");

    // --bucket-to: into a live bucket of the second region, headers kept.
    let second_bucket = format!(
        "[buckets.uploads-dr]\nurl = \"s3://uploads-dr\"\n[buckets.uploads-dr.s3]\nendpoint = \"{}\"\n",
        second.endpoint()
    );
    std::fs::write(env.path("cirkel.toml"), config(&second_bucket)).unwrap();
    let err = env.fails(&["recover", "--from", "dr", "--dry-run"]);
    assert!(err.contains("`uploads-dr` has no complete snapshot") && err.contains("--bucket-to"), "{err}");
    let text = env.ok(&["recover", "--from", "dr", "--dry-run", "--bucket-to", "uploads=uploads-dr"]);
    assert!(text.contains("bucket/uploads: written into [buckets.uploads-dr]"), "{text}");
    let to2 = env.path("rebuilt2");
    let v = env.json(&["recover", "--from", "dr", "--to", to2.to_str().unwrap(), "--bucket-to", "uploads=uploads-dr"]);
    assert_eq!(v["recover"]["steps"][0]["target"], "uploads-dr", "{v:#}");
    assert_eq!(dump(&second, "uploads-dr"), before, "keys, bytes, content type and metadata");
    assert!(!to2.join("buckets").exists(), "nothing written below --to for it");
    // A target holding objects: refused before anything is restored.
    let to3 = env.path("rebuilt3");
    let err =
        env.fails(&["recover", "--from", "dr", "--to", to3.to_str().unwrap(), "--bucket-to", "uploads=uploads-dr"]);
    assert!(err.contains("already holds objects") && err.contains("--force"), "{err}");
    assert!(!to3.exists(), "a refused recover writes nothing");
    let err = env.fails(&["recover", "--from", "dr", "--dry-run", "--bucket-to", "nope=s3://x"]);
    assert!(err.contains("`nope`") && err.contains("uploads"), "{err}");
    let err = env.fails(&["recover", "--from", "dr", "--dry-run", "--bucket-to", "uploads"]);
    assert!(err.contains("NAME=s3://"), "{err}");

    // A configured bucket the repository holds no snapshot of: said, with what to do.
    std::fs::write(env.path("cirkel.toml"), config("[buckets.photos]\nurl = \"s3://photos\"\n")).unwrap();
    let err = env.fails(&["recover", "--from", "dr", "--dry-run"]);
    assert!(
        err.contains("bucket `photos` has no complete snapshot") && err.contains("cirkel backup bucket photos"),
        "{err}"
    );
    let to4 = env.path("rebuilt4");
    env.fails(&["recover", "--from", "dr", "--to", to4.to_str().unwrap()]);
    assert!(!to4.exists());
}
