//! CLI for the system set: vulnerability records, assessment types and assessments. The checks
//! live in the store (`cairn_store::system`), shared with the HTTP API.

use std::io::Write;

use anyhow::{Context, Result};
use cairn_store::doc::{Assessment, Vulnerability};
use cairn_store::system::NewAssessment;
use cairn_store::Store;

use crate::{AssessmentCommand, AssessmentTypeCommand, VulnCommand};

pub(crate) fn vuln(store: &Store, out: &mut dyn Write, command: VulnCommand) -> Result<()> {
    match command {
        VulnCommand::Import { files } => {
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                for id in store
                    .import_osv(&text)
                    .with_context(|| format!("importing {}", f.display()))?
                {
                    writeln!(out, "imported {id}")?;
                }
            }
        }
        VulnCommand::List => {
            for v in store.system_documents::<Vulnerability>("vulnerability/")? {
                writeln!(
                    out,
                    "{} {} {}",
                    v.id,
                    v.modified,
                    v.summary.unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}

pub(crate) fn assessment_type(
    store: &Store,
    out: &mut dyn Write,
    command: AssessmentTypeCommand,
) -> Result<()> {
    match command {
        AssessmentTypeCommand::Create {
            name,
            blocking,
            description,
        } => {
            store
                .create_assessment_type(&name, blocking, &description)
                .with_context(|| format!("assessment type `{name}`"))?;
            writeln!(
                out,
                "assessment type {name}{}",
                if blocking { " (blocking)" } else { "" }
            )?;
        }
        AssessmentTypeCommand::Rm { name } => {
            store.delete_system_document(&format!("assessment-type/{name}"))?;
            writeln!(out, "deleted assessment type {name}")?;
        }
        AssessmentTypeCommand::List => {
            for t in store.assessment_types()? {
                writeln!(
                    out,
                    "{} {} {}",
                    t.name,
                    if t.blocking { "blocking" } else { "-" },
                    t.description
                )?;
            }
        }
    }
    Ok(())
}

pub(crate) fn assessment(
    store: &Store,
    out: &mut dyn Write,
    command: AssessmentCommand,
) -> Result<()> {
    match command {
        AssessmentCommand::Create {
            vulnerability,
            assessment_type,
            comment,
            author,
            expires_days,
        } => {
            let id = store.create_assessment(NewAssessment {
                vulnerability,
                assessment_type,
                comment,
                author,
                expires_days,
            })?;
            writeln!(out, "{id}")?;
        }
        AssessmentCommand::List { json } => {
            let all = store.system_documents::<Assessment>("assessment/")?;
            if json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|a| serde_json::json!({"id": a.id, "vulnerability": a.vulnerability, "type": a.assessment_type, "comment": a.comment, "author": a.author, "created": a.created, "expires": a.expires}))
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                for a in all {
                    writeln!(
                        out,
                        "{} {} {} {} {}",
                        a.id, a.vulnerability, a.assessment_type, a.author, a.comment
                    )?;
                }
            }
        }
        AssessmentCommand::Rm { id } => {
            store.delete_system_document(&format!("assessment/{id}"))?;
            writeln!(out, "deleted assessment {id}")?;
        }
    }
    Ok(())
}
