//! Version order for matching OSV ranges: PEP 440 for PyPI, SemVer for npm and crates, close
//! enough for either to order the versions real packages use.
//!
//! A version is an optional epoch (`1!`), release numbers (`1.2.3`), an optional pre-release
//! (`a1`, `b2`, `rc1`, `.dev3`, `-alpha.1`, `-beta`, `-rc.2`, ...) that sorts before the
//! release, and an optional post-release (`.post1`) that sorts after it. Local versions and
//! build metadata (`+...`) do not take part in the order.

use std::cmp::Ordering;

use cairn_store::doc::{Ecosystem, OsvAffected};

pub use cairn_store::names::normalize_pypi;

#[derive(Debug, PartialEq, Eq)]
enum Part {
    Num(u64),
    Text(String),
}

impl PartialOrd for Part {
    fn partial_cmp(&self, other: &Part) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Part {
    fn cmp(&self, other: &Part) -> Ordering {
        match (self, other) {
            (Part::Num(a), Part::Num(b)) => a.cmp(b),
            // SemVer: numeric identifiers sort before alphanumeric ones.
            (Part::Num(_), Part::Text(_)) => Ordering::Less,
            (Part::Text(_), Part::Num(_)) => Ordering::Greater,
            (Part::Text(a), Part::Text(b)) => a.cmp(b),
        }
    }
}

#[derive(Debug)]
struct Version {
    epoch: u64,
    release: Vec<u64>,
    /// (rank, identifiers): dev 0, alpha 1, beta 2, rc 3, other 4.
    pre: Option<(u8, Vec<Part>)>,
    post: Option<u64>,
}

fn pre_rank(word: &str) -> u8 {
    match word {
        "dev" => 0,
        "a" | "alpha" => 1,
        "b" | "beta" => 2,
        "c" | "rc" | "pre" | "preview" => 3,
        _ => 4,
    }
}

fn split_parts(s: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut digits = false;
    let flush = |cur: &mut String, digits: bool, parts: &mut Vec<Part>| {
        if cur.is_empty() {
            return;
        }
        parts.push(if digits {
            Part::Num(cur.parse().unwrap_or(u64::MAX))
        } else {
            Part::Text(cur.clone())
        });
        cur.clear();
    };
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() {
            flush(&mut cur, digits, &mut parts);
            continue;
        }
        let d = c.is_ascii_digit();
        if !cur.is_empty() && d != digits {
            flush(&mut cur, digits, &mut parts);
        }
        digits = d;
        cur.push(c.to_ascii_lowercase());
    }
    flush(&mut cur, digits, &mut parts);
    parts
}

fn parse(v: &str) -> Version {
    let v = v.trim().trim_start_matches(['v', 'V']);
    let v = v.split('+').next().unwrap_or("");
    let (epoch, rest) = match v.split_once('!') {
        Some((e, r)) => (e.parse().unwrap_or(0), r),
        None => (0, v),
    };
    let parts = split_parts(rest);
    let mut release = Vec::new();
    let mut i = 0;
    while let Some(Part::Num(n)) = parts.get(i) {
        release.push(*n);
        i += 1;
    }
    let mut pre = None;
    let mut post = None;
    while i < parts.len() {
        match &parts[i] {
            Part::Text(w) if w == "post" || w == "r" || w == "rev" => {
                post = Some(match parts.get(i + 1) {
                    Some(Part::Num(n)) => {
                        i += 1;
                        *n
                    }
                    _ => 0,
                });
                i += 1;
            }
            Part::Text(w) if pre.is_none() => {
                let rank = pre_rank(w);
                let mut ids = Vec::new();
                if rank == 4 {
                    ids.push(Part::Text(w.clone()));
                }
                i += 1;
                while let Some(p) = parts.get(i) {
                    if matches!(p, Part::Text(t) if t == "post") {
                        break;
                    }
                    ids.push(match p {
                        Part::Num(n) => Part::Num(*n),
                        Part::Text(t) => Part::Text(t.clone()),
                    });
                    i += 1;
                }
                pre = Some((rank, ids));
            }
            _ => i += 1,
        }
    }
    Version {
        epoch,
        release,
        pre,
        post,
    }
}

/// Orders two version strings.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (parse(a), parse(b));
    a.epoch
        .cmp(&b.epoch)
        .then_with(|| {
            let n = a.release.len().max(b.release.len());
            (0..n)
                .map(|i| {
                    let x = a.release.get(i).copied().unwrap_or(0);
                    let y = b.release.get(i).copied().unwrap_or(0);
                    x.cmp(&y)
                })
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        })
        .then_with(|| match (&a.pre, &b.pre) {
            (None, None) => Ordering::Equal,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ra, ia)), Some((rb, ib))) => ra.cmp(rb).then_with(|| ia.cmp(ib)),
        })
        .then_with(|| a.post.cmp(&b.post))
}

/// The OSV ecosystem name of a feed ecosystem.
pub fn osv_ecosystem(e: Ecosystem) -> Option<&'static str> {
    match e {
        Ecosystem::Pypi => Some("PyPI"),
        Ecosystem::Npm => Some("npm"),
        Ecosystem::Cargo => Some("crates.io"),
        Ecosystem::Raw => None,
    }
}

/// Whether an OSV `affected` entry covers `name` at `version` in `ecosystem`.
pub fn affects(affected: &OsvAffected, ecosystem: Ecosystem, name: &str, version: &str) -> bool {
    let Some(eco) = osv_ecosystem(ecosystem) else {
        return false;
    };
    if !affected.package.ecosystem.eq_ignore_ascii_case(eco) {
        return false;
    }
    let same_name = match ecosystem {
        Ecosystem::Pypi => normalize_pypi(&affected.package.name) == normalize_pypi(name),
        _ => affected.package.name == name,
    };
    if !same_name {
        return false;
    }
    if affected
        .versions
        .iter()
        .any(|v| compare(v, version) == Ordering::Equal)
    {
        return true;
    }
    affected
        .ranges
        .iter()
        .filter(|r| r.range_type == "ECOSYSTEM" || r.range_type == "SEMVER")
        .any(|r| {
            // Events in version order ("0" first); the last one at or below the version
            // decides.
            let mut events: Vec<(&str, u8)> = r
                .events
                .iter()
                .filter_map(|e| {
                    if let Some(v) = &e.introduced {
                        Some((v.as_str(), 0))
                    } else if let Some(v) = &e.fixed {
                        Some((v.as_str(), 1))
                    } else {
                        e.last_affected.as_deref().map(|v| (v, 2))
                    }
                })
                .collect();
            events.sort_by(|a, b| compare(a.0, b.0).then(a.1.cmp(&b.1)));
            let mut affected = false;
            for (v, kind) in events {
                let ord = compare(version, v);
                match kind {
                    0 if ord != Ordering::Less => affected = true,
                    1 if ord != Ordering::Less => affected = false,
                    2 if ord == Ordering::Greater => affected = false,
                    _ => {}
                }
            }
            affected
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::doc::{OsvEvent, OsvPackage, OsvRange};

    #[test]
    fn pep503_names() {
        assert_eq!(normalize_pypi("Friendly-Bard"), "friendly-bard");
        assert_eq!(normalize_pypi("FRIENDLY._-BARD"), "friendly-bard");
        assert_eq!(normalize_pypi("friendly_bard"), "friendly-bard");
        assert_eq!(normalize_pypi("a.b"), "a-b");
    }

    fn check(a: &str, b: &str, expect: Ordering) {
        assert_eq!(compare(a, b), expect, "{a} vs {b}");
        assert_eq!(compare(b, a), expect.reverse(), "{b} vs {a}");
    }

    #[test]
    fn order() {
        check("1.0", "1.0.0", Ordering::Equal);
        check("1.2", "1.10", Ordering::Less);
        check("1.0.dev1", "1.0a1", Ordering::Less);
        check("1.0a1", "1.0b1", Ordering::Less);
        check("1.0b2", "1.0rc1", Ordering::Less);
        check("1.0rc1", "1.0", Ordering::Less);
        check("1.0", "1.0.post1", Ordering::Less);
        check("1!0.5", "2.0", Ordering::Greater);
        check("1.0.0-alpha", "1.0.0-alpha.1", Ordering::Less);
        check("1.0.0-alpha.1", "1.0.0-beta", Ordering::Less);
        check("1.0.0-rc.1", "1.0.0", Ordering::Less);
        check("1.0.0+build.5", "1.0.0", Ordering::Equal);
        check("v2.0.0", "2.0.0", Ordering::Equal);
    }

    fn affected(events: Vec<OsvEvent>, versions: Vec<&str>) -> OsvAffected {
        OsvAffected {
            package: OsvPackage {
                ecosystem: "PyPI".into(),
                name: "Demo_Pkg".into(),
                purl: None,
            },
            ranges: vec![OsvRange {
                range_type: "ECOSYSTEM".into(),
                repo: None,
                events,
            }],
            versions: versions.into_iter().map(String::from).collect(),
        }
    }

    fn ev(introduced: Option<&str>, fixed: Option<&str>, last: Option<&str>) -> OsvEvent {
        OsvEvent {
            introduced: introduced.map(String::from),
            fixed: fixed.map(String::from),
            last_affected: last.map(String::from),
            limit: None,
        }
    }

    #[test]
    fn ranges_and_versions() {
        let a = affected(
            vec![ev(Some("0"), None, None), ev(None, Some("1.4"), None)],
            vec![],
        );
        assert!(affects(&a, Ecosystem::Pypi, "demo-pkg", "1.3.9"));
        assert!(!affects(&a, Ecosystem::Pypi, "demo-pkg", "1.4"));
        assert!(!affects(&a, Ecosystem::Npm, "Demo_Pkg", "1.0"));
        assert!(!affects(&a, Ecosystem::Pypi, "other", "1.0"));
        let b = affected(
            vec![
                ev(Some("2.0"), None, None),
                ev(None, None, Some("2.2")),
                ev(Some("3.0"), None, None),
            ],
            vec!["1.0.1"],
        );
        assert!(affects(&b, Ecosystem::Pypi, "demo.pkg", "1.0.1"));
        assert!(!affects(&b, Ecosystem::Pypi, "demo.pkg", "1.5"));
        assert!(affects(&b, Ecosystem::Pypi, "demo.pkg", "2.2"));
        assert!(!affects(&b, Ecosystem::Pypi, "demo.pkg", "2.3"));
        assert!(affects(&b, Ecosystem::Pypi, "demo.pkg", "3.1"));
    }
}
