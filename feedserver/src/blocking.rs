//! Which package versions a blocking assessment refuses to serve.
//!
//! The system set holds vulnerability records (OSV), assessment types (built in: `Ignore`,
//! `Caution`, `Blocked`; custom ones carry their own blocking flag), assessments (a
//! vulnerability, a type, a comment, an optional expiry) and policies (the type applied to
//! vulnerabilities nobody has assessed yet, for some feeds or all). A download is refused when
//! a vulnerability that affects the version has a live assessment of a blocking type, or has
//! none and a policy for the feed applies a blocking type to unassessed ones.
//!
//! The list is rebuilt only when the system set changes (its change-log cursor moves), so a
//! download costs a lookup, and an assessment that replication brought in holds from the
//! next request on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use cairn_store::doc::{
    Assessment, AssessmentType, Ecosystem, Policy, Vulnerability, BUILTIN_ASSESSMENT_TYPES,
};
use cairn_store::store::{EntryKind, StoreError};
use cairn_store::{Store, SYSTEM_FEED};
use parking_lot::Mutex;

use crate::versions;

/// Why a version is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The vulnerability's id.
    pub vulnerability: String,
    /// The assessment type that blocks.
    pub assessment_type: String,
    /// The assessment's comment, or the policy that applied.
    pub reason: String,
    /// Unix seconds after which the assessment no longer applies.
    pub expires: Option<u64>,
    /// Feeds a policy limits it to (empty: every feed).
    pub feeds: Vec<String>,
}

/// Every blocking decision, with the vulnerability records they concern.
#[derive(Debug, Default)]
pub struct Blocklist {
    blocks: Vec<(Block, Arc<Vulnerability>)>,
}

impl Blocklist {
    /// Reads the system set.
    pub fn build(store: &Store) -> Result<Blocklist, StoreError> {
        let mut types: HashMap<String, bool> = HashMap::new();
        let mut assessments: Vec<Assessment> = Vec::new();
        let mut vulns: BTreeMap<String, Arc<Vulnerability>> = BTreeMap::new();
        let mut policies: Vec<Policy> = Vec::new();
        for e in store.entries(SYSTEM_FEED)? {
            if e.value.kind != EntryKind::Document {
                continue;
            }
            // A decision signed by a key no longer trusted has no authority here.
            let Some(doc) = store.served_document(SYSTEM_FEED, &e.value.doc)? else {
                continue;
            };
            let (kind, _) = e.key.split_once('/').unwrap_or((&e.key, ""));
            match kind {
                "assessment-type" => {
                    let t: AssessmentType = doc.payload()?;
                    types.insert(t.name, t.blocking);
                }
                "assessment" => assessments.push(doc.payload()?),
                "vulnerability" => {
                    let v: Vulnerability = doc.payload()?;
                    vulns.insert(v.id.clone(), Arc::new(v));
                }
                "policy" => policies.push(doc.payload()?),
                _ => {}
            }
        }
        for (name, blocking, _) in BUILTIN_ASSESSMENT_TYPES {
            types.entry(name.into()).or_insert(blocking);
        }
        let blocking = |t: &str| types.get(t).copied().unwrap_or(false);
        let mut blocks = Vec::new();
        let mut assessed = HashSet::new();
        for a in assessments {
            assessed.insert(a.vulnerability.clone());
            if !blocking(&a.assessment_type) {
                continue;
            }
            if let Some(v) = vulns.get(&a.vulnerability) {
                blocks.push((
                    Block {
                        vulnerability: a.vulnerability.clone(),
                        assessment_type: a.assessment_type.clone(),
                        reason: if a.comment.is_empty() {
                            format!("assessed {} by {}", a.assessment_type, a.author)
                        } else {
                            a.comment.clone()
                        },
                        expires: a.expires,
                        feeds: Vec::new(),
                    },
                    v.clone(),
                ));
            }
        }
        for p in policies {
            let Some(t) = p.unassessed.as_deref().filter(|t| blocking(t)) else {
                continue;
            };
            for (id, v) in &vulns {
                if !assessed.contains(id) && v.withdrawn.is_none() {
                    blocks.push((
                        Block {
                            vulnerability: id.clone(),
                            assessment_type: t.to_owned(),
                            reason: format!("not assessed yet; policy `{}` applies {t}", p.name),
                            expires: None,
                            feeds: p.feeds.clone(),
                        },
                        v.clone(),
                    ));
                }
            }
        }
        Ok(Blocklist { blocks })
    }

    /// The first blocking decision that covers `name` `version` in `feed`, if any.
    pub fn check(
        &self,
        feed: &str,
        ecosystem: Ecosystem,
        name: &str,
        version: &str,
        now_secs: u64,
    ) -> Option<&Block> {
        self.blocks.iter().find_map(|(b, v)| {
            let live = b.expires.is_none_or(|e| e > now_secs);
            let here = b.feeds.is_empty() || b.feeds.iter().any(|f| f == feed);
            let hit = live
                && here
                && v.withdrawn.is_none()
                && v.affected
                    .iter()
                    .any(|a| versions::affects(a, ecosystem, name, version));
            hit.then_some(b)
        })
    }
}

/// The blocklist, rebuilt when the system set's cursor moves or trust changes.
#[derive(Debug, Default)]
pub struct Cache {
    /// The list and the system set's (epoch, seq) and trust generation it was built at.
    current: Mutex<Option<(SystemCursor, Arc<Blocklist>)>>,
}

type SystemCursor = (u64, u64, u64);

impl Cache {
    /// The list for the system set as it is now.
    pub fn get(&self, store: &Store) -> Result<Arc<Blocklist>, StoreError> {
        let cursor = store.feed(SYSTEM_FEED)?.cursor();
        let key = (cursor.epoch, cursor.seq, store.trust_generation());
        if let Some((k, list)) = &*self.current.lock() {
            if *k == key {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(Blocklist::build(store)?);
        *self.current.lock() = Some((key, list.clone()));
        Ok(list)
    }
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
