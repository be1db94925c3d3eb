//! CLI for the system set: vulnerability records, assessment types and assessments.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use cairn_store::doc::{
    Assessment, AssessmentType, Vulnerability, BUILTIN_ASSESSMENT_TYPES, PAYLOAD_VERSION,
};
use cairn_store::{EntryKind, Store, SYSTEM_FEED};

use crate::{AssessmentCommand, AssessmentTypeCommand, VulnCommand};

fn live<P: cairn_store::doc::Payload>(store: &Store, prefix: &str) -> Result<Vec<P>> {
    let mut out = Vec::new();
    for e in store.entries(SYSTEM_FEED)? {
        if e.key.starts_with(prefix) && e.value.kind == EntryKind::Document {
            let doc = store
                .document(&e.value.doc)?
                .ok_or_else(|| anyhow!("document {} missing; run `cairn verify`", e.value.doc))?;
            out.push(doc.payload()?);
        }
    }
    Ok(out)
}

pub(crate) fn vuln(store: &Store, command: VulnCommand) -> Result<()> {
    match command {
        VulnCommand::Import { files } => {
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", f.display()))?;
                let records = match value {
                    serde_json::Value::Array(a) => a,
                    other => vec![other],
                };
                for r in records {
                    let v = Vulnerability::from_osv_json(&r.to_string())
                        .map_err(|e| anyhow!("{}: {e}", f.display()))?;
                    let id = v.id.clone();
                    store.publish_system(v)?;
                    println!("imported {id}");
                }
            }
        }
        VulnCommand::List => {
            for v in live::<Vulnerability>(store, "vulnerability/")? {
                println!("{} {} {}", v.id, v.modified, v.summary.unwrap_or_default());
            }
        }
    }
    Ok(())
}

pub(crate) fn assessment_type(store: &Store, command: AssessmentTypeCommand) -> Result<()> {
    match command {
        AssessmentTypeCommand::Create {
            name,
            blocking,
            description,
        } => {
            cairn_store::names::check_version(&name)
                .map_err(|_| anyhow!("invalid assessment type name `{name}`"))?;
            store.publish_system(AssessmentType {
                v: PAYLOAD_VERSION,
                name: name.clone(),
                blocking,
                description,
                hlc: 0,
            })?;
            println!(
                "assessment type {name}{}",
                if blocking { " (blocking)" } else { "" }
            );
        }
        AssessmentTypeCommand::List => {
            let mut types = live::<AssessmentType>(store, "assessment-type/")?;
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
            for t in types {
                println!(
                    "{} {} {}",
                    t.name,
                    if t.blocking { "blocking" } else { "-" },
                    t.description
                );
            }
        }
    }
    Ok(())
}

pub(crate) fn assessment(store: &Store, command: AssessmentCommand) -> Result<()> {
    match command {
        AssessmentCommand::Create {
            vulnerability,
            assessment_type,
            comment,
            author,
            expires_days,
        } => {
            let builtin = BUILTIN_ASSESSMENT_TYPES
                .iter()
                .any(|(n, _, _)| *n == assessment_type);
            if !builtin
                && store
                    .entry(SYSTEM_FEED, &format!("assessment-type/{assessment_type}"))?
                    .is_none_or(|e| e.kind != EntryKind::Document)
            {
                bail!("no assessment type `{assessment_type}`; create it with `cairn assessment-type create {assessment_type}`");
            }
            if store
                .entry(SYSTEM_FEED, &format!("vulnerability/{vulnerability}"))?
                .is_none_or(|e| e.kind != EntryKind::Document)
            {
                bail!(
                    "no vulnerability `{vulnerability}`; import it with `cairn vuln import FILE`"
                );
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut id = [0u8; 8];
            getrandom_fill(&mut id)?;
            let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
            store.publish_system(Assessment {
                v: PAYLOAD_VERSION,
                id: id.clone(),
                vulnerability,
                assessment_type,
                comment,
                author,
                created: now,
                expires: expires_days.map(|d| now + d * 86_400),
                hlc: 0,
            })?;
            println!("{id}");
        }
        AssessmentCommand::List { json } => {
            let all = live::<Assessment>(store, "assessment/")?;
            if json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|a| serde_json::json!({"id": a.id, "vulnerability": a.vulnerability, "type": a.assessment_type, "comment": a.comment, "author": a.author, "created": a.created, "expires": a.expires}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for a in all {
                    println!(
                        "{} {} {} {} {}",
                        a.id, a.vulnerability, a.assessment_type, a.author, a.comment
                    );
                }
            }
        }
        AssessmentCommand::Rm { id } => {
            store.delete_system(&format!("assessment/{id}"))?;
            println!("deleted assessment {id}");
        }
    }
    Ok(())
}

fn getrandom_fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| anyhow!("no randomness for an assessment id: {e}"))
}
