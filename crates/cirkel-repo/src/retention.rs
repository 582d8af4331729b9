//! Retention policies: which snapshots to keep. A pure function of the
//! snapshots, the policy and the current time.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::{Id, Snapshot};

/// Keep rules, combined with "or": a snapshot any rule keeps is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// Keep everything younger than this.
    #[serde(default, with = "opt_duration")]
    pub keep_within: Option<Duration>,
    /// Keep snapshots carrying any of these tags.
    #[serde(default)]
    pub keep_tags: Vec<String>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&humantime_like(*d)),
            None => s.serialize_none(),
        }
    }

    fn humantime_like(d: Duration) -> String {
        format!("{}s", d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            s.strip_suffix('s')
                .and_then(|n| n.parse().ok())
                .map(Duration::from_secs)
                .ok_or_else(|| serde::de::Error::custom("expected a duration like `3600s`"))
        })
        .transpose()
    }
}

impl Policy {
    /// A policy that keeps nothing would delete every snapshot: refuse it.
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && self.keep_hourly == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_yearly == 0
            && self.keep_within.is_none()
            && self.keep_tags.is_empty()
    }
}

/// The decision for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: Id,
    pub keep: bool,
    /// Which rules keep it (empty when it goes).
    pub reasons: Vec<String>,
}

/// The `keep_tags` of `policy` that kept no snapshot: most likely misspelt.
pub fn unmatched_keep_tags<'a>(policy: &'a Policy, decisions: &[Decision]) -> Vec<&'a str> {
    policy
        .keep_tags
        .iter()
        .filter(|t| {
            let reason = format!("tag {t}");
            !decisions.iter().any(|d| d.reasons.contains(&reason))
        })
        .map(String::as_str)
        .collect()
}

/// Snapshots are grouped by kind, host and paths; each group is judged on its own.
fn group_key(s: &Snapshot) -> (String, String, Vec<String>) {
    let mut paths = s.paths.clone();
    paths.sort();
    (s.kind.clone(), s.host.clone(), paths)
}

/// Applies `policy` to `snapshots`. Snapshots not matching `only_tag` (when
/// given) are left out of the decision and always kept. The newest snapshot
/// of each group is always kept, whatever the policy says: a mistyped tag or
/// a window shorter than the time since the last backup must never leave a
/// source with nothing to restore.
pub fn apply(
    policy: &Policy,
    snapshots: &[(Id, Snapshot)],
    now: DateTime<Utc>,
    only_tag: Option<&str>,
) -> Vec<Decision> {
    let mut groups: BTreeMap<_, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    let mut out = Vec::new();
    for s in snapshots {
        if only_tag.is_some_and(|t| !s.1.tags.iter().any(|x| x == t)) {
            out.push(Decision { id: s.0, keep: true, reasons: vec!["not selected by --tag".into()] });
            continue;
        }
        groups.entry(group_key(&s.1)).or_default().push(s);
    }
    type BucketFn = fn(&DateTime<Utc>) -> i64;
    let rules: [(&str, u32, BucketFn); 6] = [
        ("last", policy.keep_last, |_| 0),
        ("hourly", policy.keep_hourly, |t| t.timestamp() / 3600),
        ("daily", policy.keep_daily, |t| t.num_days_from_ce() as i64),
        ("weekly", policy.keep_weekly, |t| {
            let w = t.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }),
        ("monthly", policy.keep_monthly, |t| t.year() as i64 * 100 + t.month() as i64),
        ("yearly", policy.keep_yearly, |t| t.year() as i64),
    ];
    for (_, mut group) in groups {
        // Newest first; ties broken by id so the result is deterministic.
        group.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); group.len()];
        for (name, count, bucket) in rules {
            let mut left = count;
            let mut last_bucket: Option<i64> = None;
            for (i, (_, s)) in group.iter().map(|x| (x.0, &x.1)).enumerate() {
                if left == 0 {
                    break;
                }
                // keep-last counts every snapshot; the others one per period.
                let b = if name == "last" { i as i64 } else { bucket(&s.time) };
                if last_bucket != Some(b) {
                    last_bucket = Some(b);
                    reasons[i].push(name.to_string());
                    left -= 1;
                }
            }
        }
        for (i, (id, s)) in group.iter().map(|x| (x.0, &x.1)).enumerate() {
            if let Some(w) = policy.keep_within {
                let age = now.signed_duration_since(s.time).to_std().unwrap_or_default();
                if age <= w {
                    reasons[i].push("within".into());
                }
            }
            for t in policy.keep_tags.iter().filter(|t| s.tags.contains(t)) {
                reasons[i].push(format!("tag {t}"));
            }
            if i == 0 && reasons[i].is_empty() {
                reasons[i].push("newest".into());
            }
            let r = std::mem::take(&mut reasons[i]);
            out.push(Decision { id, keep: !r.is_empty(), reasons: r });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn snap(t: DateTime<Utc>, tags: &[&str]) -> (Id, Snapshot) {
        let s = Snapshot {
            time: t,
            tags: tags.iter().map(|s| s.to_string()).collect(),
            ..Snapshot::new("files", "h", vec!["/d".into()], Id::of(b"t"))
        };
        (Id::of(t.to_rfc3339().as_bytes()), s)
    }

    #[test]
    fn daily_keeps_newest_of_each_day() {
        let day = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap();
        let snaps = vec![snap(day(1, 1), &[]), snap(day(1, 5), &[]), snap(day(2, 3), &[]), snap(day(3, 3), &[])];
        let p = Policy { keep_daily: 2, ..Default::default() };
        let d = apply(&p, &snaps, day(4, 0), None);
        let kept: Vec<_> = d.iter().filter(|d| d.keep).map(|d| d.id).collect();
        assert_eq!(kept.len(), 2);
        assert!(kept.contains(&snaps[3].0) && kept.contains(&snaps[2].0));
    }

    #[test]
    fn within_tags_and_only_tag() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        let old = snap(now - chrono::Duration::days(10), &["pre-deploy"]);
        let older = snap(now - chrono::Duration::days(8), &["pre-deploy"]);
        let young = snap(now - chrono::Duration::days(1), &[]);
        let other = snap(now - chrono::Duration::days(20), &["weekly"]);
        let p = Policy { keep_within: Some(Duration::from_secs(7 * 86400)), ..Default::default() };
        let d = apply(&p, &[old.clone(), older.clone(), young.clone(), other.clone()], now, Some("pre-deploy"));
        let keep = |id: Id| d.iter().find(|x| x.id == id).unwrap().keep;
        assert!(!keep(old.0));
        assert!(keep(older.0), "the newest of its group is kept even outside the window");
        assert!(keep(other.0), "not selected by tag: untouched");
        let p = Policy { keep_tags: vec!["pre-deploy".into()], ..Default::default() };
        let d = apply(&p, std::slice::from_ref(&old), now, None);
        assert!(d[0].keep);
    }

    #[test]
    fn the_newest_snapshot_survives_any_policy() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        let snaps: Vec<_> = (1..=3).map(|d| snap(now - chrono::Duration::days(d), &["daily"])).collect();
        for p in [
            Policy { keep_tags: vec!["dialy".into()], ..Default::default() },
            Policy { keep_within: Some(Duration::from_secs(1)), ..Default::default() },
        ] {
            let d = apply(&p, &snaps, now, None);
            let kept: Vec<_> = d.iter().filter(|d| d.keep).collect();
            assert_eq!(kept.len(), 1, "{p:?}");
            assert_eq!(kept[0].id, snaps[0].0);
            assert_eq!(kept[0].reasons, vec!["newest".to_string()]);
            assert_eq!(unmatched_keep_tags(&p, &d), p.keep_tags.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    #[test]
    fn empty_policy_is_detected() {
        assert!(Policy::default().is_empty());
        assert!(!Policy { keep_last: 1, ..Default::default() }.is_empty());
    }
}
