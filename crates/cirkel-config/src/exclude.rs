//! The syntax of exclusion patterns, shared by the configuration (checked
//! when it is read) and the file source (which applies them), so a pattern
//! `config check` accepts is one a backup accepts.

use std::path::Path;

/// The pattern a line stands for: blank lines and `#` comments stand for
/// none, and a trailing `/` is dropped (a directory is matched by its name).
pub fn normalise(line: &str) -> Option<&str> {
    let p = line.trim();
    if p.is_empty() || p.starts_with('#') {
        return None;
    }
    Some(p.trim_end_matches('/'))
}

/// The glob a pattern compiles to, or why it does not.
pub fn glob(pattern: &str) -> Result<globset::Glob, String> {
    globset::Glob::new(pattern).map_err(|e| format!("bad exclude pattern `{pattern}`: {e}"))
}

/// Whether a pattern line is valid.
pub fn check_pattern(line: &str) -> Result<(), String> {
    normalise(line).map_or(Ok(()), |p| glob(p).map(drop))
}

/// Reads patterns from a file, one per line; `#` starts a comment.
pub fn read_pattern_file(path: &Path) -> Result<Vec<String>, String> {
    let text = crate::read_bounded(path, crate::CONFIG_MAX)
        .map_err(|e| format!("read exclude file {}: {e}", path.display()))?;
    Ok(text.lines().filter_map(normalise).map(String::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked_as_backups_apply_them() {
        assert_eq!(normalise("  node_modules/ "), Some("node_modules"));
        assert_eq!(normalise("# comment"), None);
        assert!(check_pattern("*.tmp").is_ok());
        assert!(check_pattern("a[").unwrap_err().contains("a["));
    }
}
