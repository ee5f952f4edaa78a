//! The enrolment notice's template: a `Subject:` line, a blank line, the
//! body. Placeholders are `{name}` (see [`PLACEHOLDERS`]); `{{` and `}}`
//! stand for braces. The file is checked when it is loaded, so an unknown
//! placeholder stops the command or the server with the file, line and
//! name, before any mail is sent.

use std::path::{Path, PathBuf};

/// The placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &["display_name", "upn", "mail", "portal_url", "organization"];

/// A template file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the enrolment notice template {path} (smtp.template): {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} line {line}: unknown placeholder {{{name}}}; known: {} (write {{{{ for a brace)",
        PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
    )]
    Unknown { path: PathBuf, line: usize, name: String },
    #[error("{path} line {line}: {message}")]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value(&'static str),
}

/// A checked template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    subject: Vec<Piece>,
    body: Vec<Piece>,
}

/// A notice made from the template for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub body: String,
}

impl Template {
    pub fn load(path: &Path) -> Result<Template, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_owned(),
            source,
        })?;
        Template::parse(path, &text)
    }

    /// Parses `text`, read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Template, TemplateError> {
        let malformed = |line, message: &str| TemplateError::Malformed {
            path: path.to_owned(),
            line,
            message: message.to_owned(),
        };
        let text = text.trim_start_matches('\u{FEFF}');
        let mut lines = text.split_inclusive('\n');
        let first = lines.next().unwrap_or("");
        let subject = first
            .trim_end_matches(['\r', '\n'])
            .strip_prefix("Subject:")
            .ok_or_else(|| malformed(1, "the first line must be \"Subject: ...\""))?
            .trim();
        if subject.is_empty() {
            return Err(malformed(1, "the subject is empty"));
        }
        let blank = lines.next().unwrap_or("");
        if !blank.trim().is_empty() {
            return Err(malformed(2, "a blank line must follow the subject line"));
        }
        let body: String = lines.collect();
        if body.trim().is_empty() {
            return Err(malformed(3, "the body is empty"));
        }
        Ok(Template {
            subject: pieces(path, subject, 1)?,
            body: pieces(path, &body, 3)?,
        })
    }

    /// The notice for one user. Values are inserted as plain text on one
    /// line: control characters (a line break in a display name, say)
    /// become spaces, so no value can add a header or a line of its own.
    pub fn render(&self, values: &Values<'_>) -> Rendered {
        Rendered {
            subject: fill(&self.subject, values),
            body: fill(&self.body, values),
        }
    }
}

/// What the placeholders stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values<'a> {
    pub display_name: &'a str,
    pub upn: &'a str,
    pub mail: &'a str,
    pub portal_url: &'a str,
    pub organization: &'a str,
}

impl Values<'_> {
    fn get(&self, name: &str) -> &str {
        match name {
            "display_name" => self.display_name,
            "upn" => self.upn,
            "mail" => self.mail,
            "portal_url" => self.portal_url,
            _ => self.organization,
        }
    }
}

fn fill(pieces: &[Piece], values: &Values<'_>) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Value(name) => out.extend(values.get(name).chars().map(|c| if c.is_control() { ' ' } else { c })),
        }
    }
    out
}

fn pieces(path: &Path, text: &str, first_line: usize) -> Result<Vec<Piece>, TemplateError> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut line = first_line;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                line += 1;
                literal.push(c);
            }
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('\n') | None => {
                            return Err(TemplateError::Malformed {
                                path: path.to_owned(),
                                line,
                                message: format!("unclosed placeholder {{{name}: write {{{{ for a brace"),
                            })
                        }
                        Some(ch) => name.push(ch),
                    }
                }
                let known = PLACEHOLDERS
                    .iter()
                    .find(|p| **p == name.trim())
                    .ok_or_else(|| TemplateError::Unknown {
                        path: path.to_owned(),
                        line,
                        name: name.clone(),
                    })?;
                if !literal.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut literal)));
                }
                out.push(Piece::Value(known));
            }
            '}' => {
                return Err(TemplateError::Malformed {
                    path: path.to_owned(),
                    line,
                    message: "a lone } (write }} for a brace)".into(),
                })
            }
            _ => literal.push(c),
        }
    }
    if !literal.is_empty() {
        out.push(Piece::Text(literal));
    }
    Ok(out)
}
