//! The system set as its users see it: vulnerability records, assessment types (with the
//! built-in ones) and assessments, read and written with the checks both the command line and
//! the HTTP API apply.

use crate::doc::{
    Assessment, AssessmentType, Payload, Vulnerability, BUILTIN_ASSESSMENT_TYPES, PAYLOAD_VERSION,
};
use crate::store::{EntryKind, StoreError};
use crate::{Store, SYSTEM_FEED};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A new assessment, before it gets its id and time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewAssessment {
    /// The vulnerability's id (imported before).
    pub vulnerability: String,
    /// An assessment type (built in or created).
    pub assessment_type: String,
    /// Why.
    pub comment: String,
    /// Who decided.
    pub author: String,
    /// Days until it no longer applies.
    pub expires_days: Option<u64>,
}

impl Store {
    /// The live documents of one kind in the system set (`prefix` like `assessment/`).
    pub fn system_documents<P: Payload>(&self, prefix: &str) -> Result<Vec<P>> {
        let mut out = Vec::new();
        for e in self.entries(SYSTEM_FEED)? {
            if e.key.starts_with(prefix) && e.value.kind == EntryKind::Document {
                let doc = self.document(&e.value.doc)?.ok_or_else(|| {
                    StoreError::missing_document("system entry", &e.key, &e.value.doc)
                })?;
                // A decision signed by a key no longer trusted has no authority here.
                if self.is_trusted(SYSTEM_FEED, &doc.signer())? {
                    out.push(doc.payload()?);
                }
            }
        }
        Ok(out)
    }

    fn system_entry_live(&self, key: &str) -> Result<bool> {
        Ok(self
            .entry(SYSTEM_FEED, key)?
            .is_some_and(|e| e.kind == EntryKind::Document))
    }

    /// Imports OSV records (one JSON object or an array of them); returns their ids.
    pub fn import_osv(&self, json: &str) -> Result<Vec<String>> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| StoreError::InvalidInput {
                what: "OSV record",
                detail: format!("not JSON: {e}"),
            })?;
        let records = match value {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        };
        // Every record is read before any is stored.
        let parsed = records
            .iter()
            .map(|r| {
                Vulnerability::from_osv_json(&r.to_string()).map_err(|detail| {
                    StoreError::InvalidInput {
                        what: "OSV record",
                        detail,
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut ids = Vec::new();
        for v in parsed {
            ids.push(v.id.clone());
            self.publish_system(v)?;
        }
        Ok(ids)
    }

    /// Every assessment type: the created ones, and the built-in ones none replaces.
    pub fn assessment_types(&self) -> Result<Vec<AssessmentType>> {
        let mut types = self.system_documents::<AssessmentType>("assessment-type/")?;
        for (name, blocking, description) in BUILTIN_ASSESSMENT_TYPES {
            if !types.iter().any(|t| t.name == name) {
                types.push(AssessmentType {
                    v: PAYLOAD_VERSION,
                    name: name.into(),
                    blocking,
                    description: format!("{description} (built in)"),
                    hlc: 0,
                });
            }
        }
        types.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(types)
    }

    /// Creates (or replaces) an assessment type.
    pub fn create_assessment_type(
        &self,
        name: &str,
        blocking: bool,
        description: &str,
    ) -> Result<()> {
        crate::names::check_version(name)?;
        self.publish_system(AssessmentType {
            v: PAYLOAD_VERSION,
            name: name.into(),
            blocking,
            description: description.into(),
            hlc: 0,
        })?;
        Ok(())
    }

    /// Creates an assessment of an imported vulnerability with a known type; returns its id.
    pub fn create_assessment(&self, new: NewAssessment) -> Result<String> {
        if !self
            .assessment_types()?
            .iter()
            .any(|t| t.name == new.assessment_type)
        {
            return Err(StoreError::UnknownReference {
                what: "assessment type",
                name: new.assessment_type.clone(),
                advice: format!(
                    "create it with `cairn assessment-type create {}`",
                    new.assessment_type
                ),
            });
        }
        if !self.system_entry_live(&format!("vulnerability/{}", new.vulnerability))? {
            return Err(StoreError::UnknownReference {
                what: "vulnerability",
                name: new.vulnerability.clone(),
                advice: "import it with `cairn vuln import FILE`".into(),
            });
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|e| {
            StoreError::Input(std::io::Error::other(format!(
                "no randomness for an assessment id: {e}"
            )))
        })?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        self.publish_system(Assessment {
            v: PAYLOAD_VERSION,
            id: id.clone(),
            vulnerability: new.vulnerability,
            assessment_type: new.assessment_type,
            comment: new.comment,
            author: new.author,
            created: now,
            expires: new.expires_days.map(|d| now + d.saturating_mul(86_400)),
            hlc: 0,
        })?;
        Ok(id)
    }

    /// Deletes a system document (`assessment/ID`, `assessment-type/NAME`,
    /// `vulnerability/ID`) with a tombstone that replicates.
    pub fn delete_system_document(&self, key: &str) -> Result<()> {
        if !self.system_entry_live(key)? {
            return Err(StoreError::EntryNotFound {
                feed: SYSTEM_FEED.into(),
                key: key.into(),
            });
        }
        self.delete_system(key)?;
        Ok(())
    }
}
