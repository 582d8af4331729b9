//! Reading `[buckets.NAME]`.

use std::ops::Range;

use super::{Table, read_retention, read_s3, retention_needs_tags};
use crate::buckets::BucketConfig;

pub(super) fn read_bucket(mut t: Table<'_, '_>) -> (BucketConfig, Range<usize>) {
    let url = t.required_string("url", "\"s3://uploads\" or \"s3://bucket/prefix\"");
    if !url.is_empty() && !url.starts_with("s3://") {
        let span = t.value_span("url").unwrap_or(t.span.clone());
        t.cx.error(span, &t.key_path("url"), format!("`{url}` is not an s3:// URL; expected e.g. \"s3://uploads\""));
    } else if url.len() > 5 && url[5..].starts_with('/') {
        let span = t.value_span("url").unwrap_or(t.span.clone());
        t.cx.error(span, &t.key_path("url"), "names no bucket; expected s3://BUCKET[/PREFIX]");
    }
    let cfg = BucketConfig {
        url,
        versions: t.boolean("versions").unwrap_or(false),
        tags: t.strings("tags"),
        schedule: t.schedule("schedule"),
        copy_to: t.strings("copy_to"),
        retention: t.table("retention").map(read_retention),
        s3: t.table("s3").map(read_s3).unwrap_or_default(),
    };
    retention_needs_tags(&t, cfg.retention.is_some(), &cfg.tags);
    let copy_span = t.value_span("copy_to").unwrap_or(t.span.clone());
    t.finish();
    (cfg, copy_span)
}
