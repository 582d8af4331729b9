//! Retention of base backups and WAL, as the recovery plan sets it:
//! daily backups 35 days, weekly backups 90 days, `pre-deploy` backups 7
//! days, and WAL 7 days beyond what the kept backups need. The newest backup
//! of each cluster is always kept, and no WAL a kept backup needs is removed.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cirkel_repo::{Id, Repository};
use serde::Serialize;

use crate::backup::{BackupMeta, of_snapshots};
use crate::wal::Segment;

#[derive(Clone, Debug)]
pub struct ExpirePolicy {
    pub daily: Duration,
    pub weekly: Duration,
    pub pre_deploy: Duration,
    /// How long WAL stays beyond what kept backups need.
    pub wal_extra: Duration,
}

const DAY: u64 = 86_400;

impl Default for ExpirePolicy {
    fn default() -> Self {
        ExpirePolicy {
            daily: Duration::from_secs(35 * DAY),
            weekly: Duration::from_secs(90 * DAY),
            pre_deploy: Duration::from_secs(7 * DAY),
            wal_extra: Duration::from_secs(7 * DAY),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub id: Id,
    pub keep: bool,
    pub why: String,
}

/// Which backups stay. Pure: backups as (id, tags, stop time, system id).
pub fn decide(
    backups: &[(Id, Vec<String>, DateTime<Utc>, String)],
    policy: &ExpirePolicy,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut newest: HashMap<&str, (DateTime<Utc>, Id)> = HashMap::new();
    for (id, _, t, sys) in backups {
        let e = newest.entry(sys.as_str()).or_insert((*t, *id));
        if *t > e.0 {
            *e = (*t, *id);
        }
    }
    backups
        .iter()
        .map(|(id, tags, t, sys)| {
            let (class, limit) = if tags.iter().any(|t| t == "pre-deploy") {
                ("pre-deploy", policy.pre_deploy)
            } else if tags.iter().any(|t| t == "weekly") {
                ("weekly", policy.weekly)
            } else {
                ("daily", policy.daily)
            };
            let age = now.signed_duration_since(*t).to_std().unwrap_or_default();
            let (keep, why) = if newest.get(sys.as_str()).map(|n| n.1) == Some(*id) {
                (true, "newest backup of its cluster".to_string())
            } else if age <= limit {
                (true, format!("{class}, kept {} days", limit.as_secs() / DAY))
            } else {
                (false, format!("{class}, older than {} days", limit.as_secs() / DAY))
            };
            Decision { id: *id, keep, why }
        })
        .collect()
}

#[derive(Debug, Default, Serialize)]
pub struct ExpireReport {
    pub decisions: Vec<Decision>,
    pub backups_removed: usize,
    pub wal_removed: usize,
    pub dry_run: bool,
}

pub fn expire(repo: &Repository, policy: &ExpirePolicy, dry_run: bool) -> anyhow::Result<ExpireReport> {
    let now = Utc::now();
    // An unreadable snapshot may be a kept backup whose WAL must stay:
    // nothing is deleted until every snapshot reads.
    let backups = of_snapshots(repo.snapshots_strict()?);
    // Incomplete backups cannot be restored: they neither protect the newest
    // slot nor hold WAL back; they simply age out.
    let input: Vec<_> = backups
        .iter()
        .filter(|(_, s, _)| !s.incomplete)
        .map(|(id, s, m)| (*id, s.tags.clone(), m.stop_time, m.system_id.clone()))
        .collect();
    let mut decisions = decide(&input, policy, now);
    for (id, _, m) in backups.iter().filter(|(_, s, _)| s.incomplete) {
        let age = now.signed_duration_since(m.stop_time).to_std().unwrap_or_default();
        let keep = age <= policy.daily;
        decisions.push(Decision {
            id: *id,
            keep,
            why: format!("incomplete, {}", if keep { "young" } else { "expired" }),
        });
    }
    let mut report = ExpireReport { dry_run, ..Default::default() };
    let kept: Vec<&BackupMeta> = backups
        .iter()
        .filter(|(id, s, _)| !s.incomplete && decisions.iter().any(|d| d.id == *id && d.keep))
        .map(|(_, _, m)| m)
        .collect();
    for d in decisions.iter().filter(|d| !d.keep) {
        if !dry_run {
            repo.delete_snapshot(&d.id)?;
        }
        report.backups_removed += 1;
    }
    // WAL: per cluster, segments before the oldest kept backup's start go
    // once they are older than the extra window.
    let mut systems: Vec<&str> = kept.iter().map(|m| m.system_id.as_str()).collect();
    systems.sort();
    systems.dedup();
    let cutoff = now - chrono::Duration::from_std(policy.wal_extra)?;
    for sys in systems {
        let mine: Vec<&&BackupMeta> = kept.iter().filter(|m| m.system_id == sys).collect();
        let seg_size = mine[0].wal_segment_size;
        let Some(min) = mine.iter().filter_map(|m| m.start_segment()).map(|s| s.segno(seg_size)).min() else {
            continue;
        };
        let ns = crate::namespace(sys.parse().unwrap_or(0));
        for s in repo.list_streams(&ns, "wal/")?.into_iter().chain(repo.list_streams(&ns, "partial/")?) {
            let file = s.name.rsplit('/').next().unwrap_or_default();
            let Some(seg) = Segment::parse(file.get(..24).unwrap_or_default()) else { continue };
            let old_enough = s.modified.is_some_and(|m| m < cutoff);
            if seg.segno(seg_size) < min && old_enough {
                if !dry_run {
                    repo.delete_stream(&ns, &s.name)?;
                }
                report.wal_removed += 1;
            }
        }
    }
    report.decisions = decisions;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_retention() {
        let now = Utc::now();
        let d = |days: i64| now - chrono::Duration::days(days);
        let id = |n: u8| Id([n; 32]);
        let t = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let backups = vec![
            (id(1), t(&[]), d(40), "a".to_string()),
            (id(2), t(&[]), d(30), "a".to_string()),
            (id(3), t(&["weekly"]), d(80), "a".to_string()),
            (id(4), t(&["weekly"]), d(100), "a".to_string()),
            (id(5), t(&["pre-deploy"]), d(8), "a".to_string()),
            (id(6), t(&["pre-deploy"]), d(1), "a".to_string()),
            (id(7), t(&[]), d(400), "b".to_string()),
        ];
        let out = decide(&backups, &ExpirePolicy::default(), now);
        let keep: Vec<bool> = out.iter().map(|d| d.keep).collect();
        assert_eq!(keep, vec![false, true, true, false, false, true, true]);
        assert!(out[6].why.contains("newest"));
    }
}
