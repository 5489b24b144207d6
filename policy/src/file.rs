//! Policy files: TOML import and export, validation, and diagnostics that
//! name the field and the line.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::rules::{format_timezone, parse_timezone, BcpRelax, Effect, Policy, WorkHours};
use crate::vocab::{Level, TerminalClass};

/// The only policy file format version so far.
pub const FORMAT_VERSION: i64 = 1;

/// Longest accepted duration settings (MFA age, session length), minutes: a week.
pub const MAX_MINUTES: u32 = 7 * 24 * 60;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Severity {
    /// The policy cannot be used.
    Error,
    /// The policy works but probably not as the officer meant.
    Warning,
}

/// One finding about a policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Line, from 1 (0 when the policy did not come from a file).
    pub line: usize,
    /// Column in characters, from 1 (0 when not from a file).
    pub col: usize,
    /// Dotted path of the field, such as `rules[2].levels[1]`; empty when the
    /// file could not be parsed far enough to tell.
    pub field: String,
    /// What is wrong, lowercase English.
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.line > 0 {
            write!(f, "line {}, column {}: ", self.line, self.col)?;
        }
        write!(f, "{sev}: ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy has errors; each diagnostic names the field and the line.
    #[error("invalid policy: {}", summary(.diagnostics))]
    Invalid {
        /// The errors (warnings are not included), in file order.
        diagnostics: Vec<Diagnostic>,
    },
    /// An argument of the offline what-if is not valid.
    #[error("invalid argument {field}: {message}")]
    Argument {
        /// The argument.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The policy could not be written as TOML.
    #[error("cannot write the policy as toml: {0}")]
    Export(String),
}

fn summary(d: &[Diagnostic]) -> String {
    match d {
        [] => "no details".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

/// The file layer: what serde reads and writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "default_version")]
    version: i64,
    #[serde(default = "default_timezone")]
    timezone: String,
    #[serde(default)]
    work_hours: WorkHours,
    #[serde(default)]
    bcp_default_relax: BcpRelax,
    #[serde(default)]
    rules: Vec<crate::rules::Rule>,
}

fn default_version() -> i64 {
    FORMAT_VERSION
}

fn default_timezone() -> String {
    "+09:00".into()
}

/// A problem found in a typed policy, located by field path.
struct Problem {
    field: String,
    message: String,
    severity: Severity,
}

fn err(field: String, message: impl Into<String>) -> Problem {
    Problem {
        field,
        message: message.into(),
        severity: Severity::Error,
    }
}

fn warn(field: String, message: impl Into<String>) -> Problem {
    Problem {
        field,
        message: message.into(),
        severity: Severity::Warning,
    }
}

fn valid_rule_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Semantic checks shared by files and programmatically built policies.
fn problems(p: &Policy) -> Vec<Problem> {
    let mut out = Vec::new();
    let wh = &p.work_hours;
    if wh.days.is_empty() {
        out.push(err(
            "work_hours.days".into(),
            "no working day: list at least one",
        ));
    }
    for (i, d) in wh.days.iter().enumerate() {
        if wh.days[..i].contains(d) {
            out.push(err(
                format!("work_hours.days[{i}]"),
                format!("{d} listed twice"),
            ));
        }
    }
    if wh.start >= wh.end {
        out.push(err(
            "work_hours.end".into(),
            format!(
                "end {} is not after start {} (windows cannot cross midnight)",
                wh.end, wh.start
            ),
        ));
    }
    let b = &p.bcp_default_relax;
    if (b.plan || b.hours) && (b.levels.is_empty() || b.classes.is_empty()) {
        out.push(warn(
            "bcp_default_relax".into(),
            "relaxes nothing: levels and classes must both be listed",
        ));
    }
    if b.levels.contains(&Level::L3) && b.classes.contains(&TerminalClass::Home) {
        out.push(warn(
            "bcp_default_relax.levels".into(),
            "bcp never relaxes level 3 from home; that combination is ignored",
        ));
    }

    for (i, r) in p.rules.iter().enumerate() {
        let f = |name: &str| format!("rules[{i}].{name}");
        if !valid_rule_id(&r.id) {
            out.push(err(
                f("id"),
                format!(
                    "invalid rule id {:?}: use 1 to 64 ascii letters, digits, '-', '_' or '.'",
                    r.id
                ),
            ));
        } else if let Some(j) = p.rules[..i].iter().position(|o| o.id == r.id) {
            out.push(err(
                f("id"),
                format!("duplicate rule id {:?} (first used by rules[{j}])", r.id),
            ));
        }
        if r.levels.is_empty() {
            out.push(err(f("levels"), "no level: list at least one of 1, 2, 3"));
        }
        if r.classes.is_empty() {
            out.push(err(
                f("classes"),
                "no terminal class: list at least one of home, mobile, satellite",
            ));
        }
        if let Some(d) = &r.departments {
            if d.is_empty() {
                out.push(err(
                    f("departments"),
                    "empty list matches nothing: omit the field to match every department",
                ));
            }
            for (k, name) in d.iter().enumerate() {
                if name.trim().is_empty() {
                    out.push(err(
                        format!("rules[{i}].departments[{k}]"),
                        "empty department name",
                    ));
                }
            }
        }
        for (name, v, max) in [
            ("mfa_max_age_mins", r.mfa_max_age_mins, MAX_MINUTES),
            ("max_duration_mins", r.max_duration_mins, MAX_MINUTES),
            ("idle_timeout_mins", r.idle_timeout_mins, 24 * 60),
        ] {
            match v {
                Some(0) => out.push(err(
                    f(name),
                    "must be at least 1 minute (omit the field for no limit)",
                )),
                Some(v) if v > max => out.push(err(
                    f(name),
                    format!("{v} minutes is more than the maximum {max}"),
                )),
                _ => {}
            }
        }
        if r.effect == Effect::Allow && r.levels.contains(&Level::L3) && !r.step_up {
            out.push(warn(
                f("step_up"),
                "allows level 3 without a per-session step-up (design says level 3 needs one)",
            ));
        }
        // Unreachable: every cell already taken by an earlier rule at least as wide.
        let earlier = &p.rules[..i];
        let covered = !r.levels.is_empty()
            && !r.classes.is_empty()
            && r.levels.iter().all(|l| {
                r.classes.iter().all(|c| {
                    earlier.iter().any(|e| {
                        e.levels.contains(l)
                            && e.classes.contains(c)
                            && match (&e.departments, &r.departments) {
                                (None, _) => true,
                                (Some(_), None) => false,
                                (Some(ed), Some(rd)) => rd.iter().all(|d| ed.contains(d)),
                            }
                    })
                })
            });
        if covered {
            out.push(warn(
                f("id"),
                format!(
                    "rule {:?} never applies: earlier rules match everything it matches",
                    r.id
                ),
            ));
        }
    }
    out
}

impl Policy {
    /// Check a policy built in code. Errors carry field paths but no line.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let diagnostics: Vec<Diagnostic> = problems(self)
            .into_iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| Diagnostic {
                line: 0,
                col: 0,
                field: p.field,
                message: p.message,
                severity: p.severity,
            })
            .collect();
        if diagnostics.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::Invalid { diagnostics })
        }
    }

    /// Read and validate a TOML policy file. Warnings do not fail; see [`check`].
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let (policy, diags) = load(text);
        let errors: Vec<Diagnostic> = diags
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        match policy {
            Some(p) if errors.is_empty() => Ok(p),
            _ => Err(PolicyError::Invalid {
                diagnostics: errors,
            }),
        }
    }

    /// Write the policy as TOML (no comments); [`Policy::from_toml`] reads it
    /// back to an equal policy.
    pub fn to_toml(&self) -> Result<String, PolicyError> {
        let file = PolicyFile {
            version: FORMAT_VERSION,
            timezone: format_timezone(self.timezone),
            work_hours: self.work_hours.clone(),
            bcp_default_relax: self.bcp_default_relax.clone(),
            rules: self.rules.clone(),
        };
        toml::to_string(&file).map_err(|e| PolicyError::Export(e.to_string()))
    }
}

/// Every error and warning in a policy file, in file order.
pub fn check(text: &str) -> Vec<Diagnostic> {
    load(text).1
}

fn load(text: &str) -> (Option<Policy>, Vec<Diagnostic>) {
    let (tree, syntax) = DeTable::parse_recoverable(text);
    let root = DeValue::Table(tree.into_inner());
    let at = |span: Option<Range<usize>>, field: Option<String>, message: String, severity| {
        let (line, col) = span.as_ref().map_or((0, 0), |s| line_col(text, s.start));
        let field = field
            .or_else(|| span.as_ref().map(|s| path_at(&root, s.start)))
            .unwrap_or_default();
        Diagnostic {
            line,
            col,
            field,
            message,
            severity,
        }
    };
    if !syntax.is_empty() {
        let mut out: Vec<Diagnostic> = syntax
            .iter()
            .map(|e| {
                at(
                    e.span(),
                    None,
                    e.message().trim().to_owned(),
                    Severity::Error,
                )
            })
            .collect();
        out.sort_by_key(|d| (d.line, d.col));
        out.dedup();
        return (None, out);
    }
    let file: PolicyFile = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            return (
                None,
                vec![at(
                    e.span(),
                    None,
                    e.message().trim().to_owned(),
                    Severity::Error,
                )],
            )
        }
    };
    let mut out = Vec::new();
    let locate_field = |field: String, message: String, severity| {
        let span = locate(&root, &field);
        at(span, Some(field), message, severity)
    };
    if file.version != FORMAT_VERSION {
        out.push(locate_field(
            "version".into(),
            format!(
                "unsupported policy format version {}: this gateway reads version {FORMAT_VERSION}",
                file.version
            ),
            Severity::Error,
        ));
    }
    let timezone = match parse_timezone(&file.timezone) {
        Ok(tz) => tz,
        Err(m) => {
            out.push(locate_field("timezone".into(), m, Severity::Error));
            time::UtcOffset::UTC
        }
    };
    let policy = Policy {
        rules: file.rules,
        work_hours: file.work_hours,
        timezone,
        bcp_default_relax: file.bcp_default_relax,
    };
    out.extend(
        problems(&policy)
            .into_iter()
            .map(|p| locate_field(p.field, p.message, p.severity)),
    );
    out.sort_by_key(|d| (d.line, d.col));
    (Some(policy), out)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut off = offset.min(text.len());
    while !text.is_char_boundary(off) {
        off -= 1;
    }
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some((n, r)) = rest.split_once(']') {
            if let Ok(n) = n.parse() {
                out.push(Seg::Index(n));
            }
            rest = r.strip_prefix('[').unwrap_or(r);
        }
    }
    out
}

/// Span of the deepest existing node along `path`.
fn locate(root: &DeValue<'_>, path: &str) -> Option<Range<usize>> {
    let mut node = root;
    let mut span = None;
    for seg in segments(path) {
        let next = match (seg, node) {
            (Seg::Key(k), DeValue::Table(t)) => {
                t.iter().find(|(key, _)| key.get_ref() == k).map(|(_, v)| v)
            }
            (Seg::Index(i), DeValue::Array(a)) => a.get(i),
            _ => None,
        };
        match next {
            Some(v) => {
                span = Some(v.span());
                node = v.get_ref();
            }
            None => break,
        }
    }
    span
}

/// Dotted path of the deepest key or value whose span contains `offset`.
fn path_at(root: &DeValue<'_>, offset: usize) -> String {
    fn walk(v: &DeValue<'_>, path: &str, depth: usize, offset: usize, best: &mut (usize, String)) {
        let hit = |s: Range<usize>| s.start <= offset && offset <= s.end;
        match v {
            DeValue::Table(t) => {
                for (k, val) in t.iter() {
                    let p = if path.is_empty() {
                        k.get_ref().to_string()
                    } else {
                        format!("{path}.{}", k.get_ref())
                    };
                    if (hit(k.span()) || hit(val.span())) && depth + 1 >= best.0 {
                        *best = (depth + 1, p.clone());
                    }
                    walk(val.get_ref(), &p, depth + 1, offset, best);
                }
            }
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    if hit(item.span()) && depth + 1 >= best.0 {
                        *best = (depth + 1, p.clone());
                    }
                    walk(item.get_ref(), &p, depth + 1, offset, best);
                }
            }
            _ => {}
        }
    }
    let mut best = (0, String::new());
    walk(root, "", 0, offset, &mut best);
    best.1
}

#[cfg(test)]
mod tests;
