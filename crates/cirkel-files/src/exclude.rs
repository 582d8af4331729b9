//! Exclusion rules, in the spirit of rsync and restic.
//!
//! A pattern without `/` matches a file or directory name anywhere
//! (`node_modules`, `*.tmp`); a pattern with `/` matches the whole absolute
//! path (`/srv/app/cache/**`). A directory holding a file named by
//! `--exclude-if-present` is skipped with everything below it.

use std::path::Path;

use cirkel_config::exclude;
use globset::{GlobSet, GlobSetBuilder};

#[derive(Clone, Debug, Default)]
pub struct Excludes {
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
    if_present: Vec<String>,
    patterns: Vec<String>,
}

impl Excludes {
    pub fn new(patterns: &[String], if_present: &[String]) -> Result<Self, String> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let (mut n_names, mut n_paths) = (0, 0);
        for p in patterns {
            let Some(p) = exclude::normalise(p) else { continue };
            let glob = exclude::glob(p)?;
            if p.contains('/') {
                paths.add(glob);
                n_paths += 1;
            } else {
                names.add(glob);
                n_names += 1;
            }
        }
        let build = |b: GlobSetBuilder, n: usize| -> Result<Option<GlobSet>, String> {
            if n == 0 { Ok(None) } else { b.build().map(Some).map_err(|e| e.to_string()) }
        };
        Ok(Excludes {
            names: build(names, n_names)?,
            paths: build(paths, n_paths)?,
            if_present: if_present.to_vec(),
            patterns: patterns.to_vec(),
        })
    }

    /// Reads patterns from a file, one per line; `#` starts a comment.
    pub fn read_pattern_file(path: &Path) -> Result<Vec<String>, String> {
        exclude::read_pattern_file(path)
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn is_excluded(&self, path: &Path) -> bool {
        if let (Some(set), Some(name)) = (&self.names, path.file_name())
            && set.is_match(name)
        {
            return true;
        }
        self.paths.as_ref().is_some_and(|set| set.is_match(path))
    }

    /// Whether a directory carries a marker that excludes it.
    pub fn dir_has_marker(&self, dir: &Path) -> bool {
        self.if_present.iter().any(|m| dir.join(m).symlink_metadata().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let ex = Excludes::new(&["node_modules".into(), "*.tmp".into(), "/srv/cache/**".into(), "venv/".into()], &[])
            .unwrap();
        assert!(ex.is_excluded(Path::new("/a/b/node_modules")));
        assert!(ex.is_excluded(Path::new("/a/x.tmp")));
        assert!(ex.is_excluded(Path::new("/srv/cache/a/b")));
        assert!(ex.is_excluded(Path::new("/home/u/venv")));
        assert!(!ex.is_excluded(Path::new("/srv/data/a")));
        assert!(Excludes::new(&["[".into()], &[]).is_err());
    }
}
