"""An S3 client independent of cirkel's, for the bucket tests: it fills
buckets and describes them (boto3, which moto[server] installs).

usage: s3tool.py ENDPOINT COMMAND [ARGS...], reading JSON on stdin where a
command takes some."""

import hashlib
import json
import sys

import boto3
from botocore.config import Config

endpoint, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id="cirkeltest",
    aws_secret_access_key="cirkeltestsecret",
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10}),
)


def describe(bucket, key, version=None):
    kw = {"Bucket": bucket, "Key": key}
    if version:
        kw["VersionId"] = version
    o = s3.get_object(**kw)
    body = o["Body"].read()
    return {
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
        "content_type": o.get("ContentType"),
        "cache_control": o.get("CacheControl"),
        "content_disposition": o.get("ContentDisposition"),
        "metadata": o.get("Metadata", {}),
        "first": body[:1].decode("latin-1"),
    }


if command == "create":
    s3.create_bucket(Bucket=args[0])
    if len(args) > 1 and args[1] == "versioned":
        s3.put_bucket_versioning(Bucket=args[0], VersioningConfiguration={"Status": "Enabled"})
elif command == "put":
    # stdin: [{"key", "data" (text) or "fill": [char, n], "content_type", "metadata", "cache_control"}]
    for o in json.load(sys.stdin):
        body = o["data"].encode() if "data" in o else (o["fill"][0] * o["fill"][1]).encode("latin-1")
        kw = {"Bucket": args[0], "Key": o["key"], "Body": body, "Metadata": o.get("metadata", {})}
        if "content_type" in o:
            kw["ContentType"] = o["content_type"]
        if "cache_control" in o:
            kw["CacheControl"] = o["cache_control"]
        if "content_disposition" in o:
            kw["ContentDisposition"] = o["content_disposition"]
        s3.put_object(**kw)
elif command == "many":
    # many BUCKET N SIZE: N objects of SIZE bytes, keys d/NNNNNNN
    bucket, n, size = args[0], int(args[1]), int(args[2])
    from concurrent.futures import ThreadPoolExecutor

    def put(i):
        s3.put_object(Bucket=bucket, Key=f"d{i % 100:02}/{i:07}", Body=(f"{i:07}" * (size // 7 + 1))[:size].encode())

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(put, range(n)))
elif command == "delete":
    for k in json.load(sys.stdin):
        s3.delete_object(Bucket=args[0], Key=k)
elif command == "dump":
    # Every current object: key → its description.
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args[0]):
        for c in page.get("Contents", []):
            out[c["Key"]] = describe(args[0], c["Key"])
    print(json.dumps(out, sort_keys=True))
elif command == "versions":
    # key → {"versions": [sha256 of each version, newest first], "deleted": the latest is a delete marker}
    out = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=args[0]):
        for v in page.get("Versions", []):
            d = out.setdefault(v["Key"], {"versions": [], "deleted": False})
            d["versions"].append(describe(args[0], v["Key"], v["VersionId"])["sha256"])
        for m in page.get("DeleteMarkers", []):
            if m["IsLatest"]:
                out.setdefault(m["Key"], {"versions": [], "deleted": False})["deleted"] = True
    print(json.dumps(out, sort_keys=True))
elif command == "churn":
    # churn BUCKET KEY...: rewrite the keys over and over until stdin closes;
    # each version is one byte repeated, named in its metadata.
    import threading

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    bucket, keys, n = args[0], args[1:], 0
    while not stop.is_set():
        c = "abcdefghijklmnopqrstuvwxyz"[n % 26]
        for k in keys:
            size = 100_000 + (n % 7) * 50_000
            s3.put_object(Bucket=bucket, Key=k, Body=(c * size).encode(), Metadata={"fill": c})
        if n % 5 == 4:
            s3.delete_object(Bucket=bucket, Key=keys[0])
        n += 1
    print(n)
else:
    sys.exit(f"unknown command {command}")
