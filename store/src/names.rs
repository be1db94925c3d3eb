//! Validation of every name that becomes part of a key or a path: feed names, package names,
//! versions and file names. Names are checked before anything is stored, so `../x`, absolute
//! paths, separators and control characters never reach the store or the file system.

use crate::doc::Ecosystem;

/// A name that is not acceptable, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: {reason}")]
pub struct NameError {
    /// What kind of name (`feed name`, `package name`, `version`, `file name`).
    pub what: &'static str,
    /// The offending value, escaped and cut for display.
    pub value: String,
    /// Why it is refused.
    pub reason: &'static str,
}

fn error(what: &'static str, value: &str, reason: &'static str) -> NameError {
    NameError {
        what,
        value: value.escape_debug().take(100).collect(),
        reason,
    }
}

/// Longest name of any kind.
pub const MAX_NAME_LEN: usize = 214;

/// Feed names: 1-64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_feed_name(name: &str) -> Result<(), NameError> {
    const WHAT: &str = "feed name";
    if name.is_empty() || name.len() > 64 {
        return Err(error(WHAT, name, "must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(error(WHAT, name, "use only a-z, 0-9, '.', '_' and '-'"));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(error(WHAT, name, "must start with a letter or digit"));
    }
    Ok(())
}

fn check_segment(what: &'static str, s: &str, extra: &[u8]) -> Result<(), NameError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(error(what, s, "must be 1 to 214 characters"));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(error(what, s, "must not contain control characters"));
    }
    if s.contains('/') || s.contains('\\') {
        return Err(error(what, s, "must not contain '/' or '\\'"));
    }
    if s.contains("..") {
        return Err(error(what, s, "must not contain '..'"));
    }
    if s.starts_with('.') || s.starts_with('-') {
        return Err(error(what, s, "must not start with '.' or '-'"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b) || extra.contains(&b))
    {
        return Err(error(
            what,
            s,
            "use only letters, digits and '.', '_', '-', '+', '~'",
        ));
    }
    Ok(())
}

/// Package names: one segment of letters, digits and `._-+~`; npm also allows `@scope/name`.
pub fn check_package_name(ecosystem: Ecosystem, name: &str) -> Result<(), NameError> {
    const WHAT: &str = "package name";
    if ecosystem == Ecosystem::Npm {
        if let Some(scoped) = name.strip_prefix('@') {
            let Some((scope, rest)) = scoped.split_once('/') else {
                return Err(error(WHAT, name, "a scoped npm name is @scope/name"));
            };
            check_segment(WHAT, scope, b"")?;
            return check_segment(WHAT, rest, b"");
        }
    }
    check_segment(WHAT, name, b"")
}

/// Versions: one segment of letters, digits and `._-+~!`.
pub fn check_version(version: &str) -> Result<(), NameError> {
    check_segment("version", version, b"!")
}

/// File names: one segment; also allows `@`, `!`, `(`, `)`, `,`, `=` and spaces inside.
pub fn check_file_name(name: &str) -> Result<(), NameError> {
    check_segment("file name", name, b"@!(),= ")?;
    if name.ends_with(' ') {
        return Err(error("file name", name, "must not end with a space"));
    }
    Ok(())
}

/// The entry key of a package version in a feed.
pub fn package_key(name: &str, version: &str) -> String {
    format!("{name}/{version}")
}

/// Splits a package key back into name and version.
pub fn split_package_key(key: &str) -> Option<(&str, &str)> {
    key.rsplit_once('/')
}

/// PEP 503 normalization of a Python project name: lowercase, runs of `-`, `_` and `.`
/// become one `-`.
pub fn normalize_pypi(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
            continue;
        }
        if sep && !out.is_empty() {
            out.push('-');
        }
        sep = false;
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expect: Result<(), &str>) {
        let got = check_package_name(Ecosystem::Raw, name)
            .and_then(|()| check_file_name(name))
            .map_err(|e| e.reason);
        assert_eq!(got, expect, "{name:?}");
    }

    #[test]
    fn package_and_file_names() {
        check("requests", Ok(()));
        check("my_pkg-2.0+local", Ok(()));
        check("a/b", Err("must not contain '/' or '\\'"));
        check("../x", Err("must not contain '/' or '\\'"));
        check("..", Err("must not contain '..'"));
        check("a..b", Err("must not contain '..'"));
        check(".hidden", Err("must not start with '.' or '-'"));
        check("/etc", Err("must not contain '/' or '\\'"));
        check("a\\b", Err("must not contain '/' or '\\'"));
        check("a\nb", Err("must not contain control characters"));
        check("a\u{7f}", Err("must not contain control characters"));
        check("", Err("must be 1 to 214 characters"));
        check(
            "a%2fb",
            Err("use only letters, digits and '.', '_', '-', '+', '~'"),
        );
    }

    #[test]
    fn npm_scopes_are_allowed_only_for_npm() {
        assert!(check_package_name(Ecosystem::Npm, "@acme/left-pad").is_ok());
        assert!(check_package_name(Ecosystem::Npm, "@acme/../x").is_err());
        assert!(check_package_name(Ecosystem::Npm, "@acme").is_err());
        assert!(check_package_name(Ecosystem::Raw, "@acme/left-pad").is_err());
    }

    #[test]
    fn feed_names() {
        assert!(check_feed_name("pypi-internal").is_ok());
        assert!(check_feed_name("@system").is_err());
        assert!(check_feed_name("Demo").is_err());
        assert!(check_feed_name("-x").is_err());
        assert!(check_feed_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn keys_split_at_the_last_slash() {
        let key = package_key("@acme/left-pad", "1.0.0");
        assert_eq!(split_package_key(&key), Some(("@acme/left-pad", "1.0.0")));
    }
}
