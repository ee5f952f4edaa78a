//! Templates from the config with `{upn}` and `{login}` placeholders: search
//! filters (`user_filter`, `login_filter`) and the direct-bind name
//! (`bind_name`).
//!
//! A template is split into literal text and placeholders once, when the
//! config is read; rendering escapes each value for where it lands and never
//! re-reads the result, so a value that itself contains `{login}` or `)(`
//! stays a value. Filter values are escaped per RFC 4515 (ldap3's
//! `ldap_escape`), DN values per RFC 4514 (`dn_escape`).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Upn,
    Login,
}

impl Placeholder {
    fn name(self) -> &'static str {
        match self {
            Placeholder::Upn => "{upn}",
            Placeholder::Login => "{login}",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Placeholder),
}

/// How the values are escaped when rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escaping {
    /// RFC 4515 (search filter assertion values).
    Filter,
    /// RFC 4514 (attribute values inside a DN).
    Dn,
    /// None: a bind name such as `{upn}` or `CORP\{login}`, which the server
    /// takes as an opaque string.
    Verbatim,
}

/// A parsed template.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
    escaping: Escaping,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The values a template is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub upn: &'a str,
    pub login: &'a str,
}

impl Template {
    /// Parses a search filter template that must use `required`.
    pub fn filter(text: &str, required: Placeholder) -> Result<Template, String> {
        let template = Template::parse(text, Escaping::Filter)?;
        if !template.uses(required) {
            return Err(format!("must contain {} (the value being looked up)", required.name()));
        }
        template.check_filter()?;
        Ok(template)
    }

    /// Parses a filter without placeholders (`disabled_filter`).
    pub fn fixed_filter(text: &str) -> Result<Template, String> {
        let template = Template::parse(text, Escaping::Filter)?;
        if template.parts.iter().any(|p| matches!(p, Part::Value(_))) {
            return Err("takes no placeholders".into());
        }
        template.check_filter()?;
        Ok(template)
    }

    /// Parses a direct-bind name: a DN template (values escaped as DN
    /// values) when it contains `=`, else a name the server takes as it is
    /// (`{upn}`, `CORP\{login}`).
    pub fn bind_name(text: &str) -> Result<Template, String> {
        let escaping = if text.contains('=') {
            Escaping::Dn
        } else {
            Escaping::Verbatim
        };
        let template = Template::parse(text, escaping)?;
        if !template.uses(Placeholder::Upn) && !template.uses(Placeholder::Login) {
            return Err("must contain {upn} or {login}".into());
        }
        Ok(template)
    }

    fn parse(text: &str, escaping: Escaping) -> Result<Template, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open..];
            let placeholder = [Placeholder::Upn, Placeholder::Login]
                .into_iter()
                .find(|p| after.starts_with(p.name()))
                .ok_or_else(|| {
                    let shown: String = after.chars().take(12).collect();
                    format!("unknown placeholder at \"{shown}\": only {{upn}} and {{login}} are known")
                })?;
            parts.push(Part::Value(placeholder));
            rest = &after[placeholder.name().len()..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template {
            source: text.to_owned(),
            parts,
            escaping,
        })
    }

    fn check_filter(&self) -> Result<(), String> {
        let sample = self.render(Values {
            upn: "user@example.com",
            login: "user",
        });
        if !sample.starts_with('(') || !sample.ends_with(')') {
            return Err(format!(
                "\"{}\" is not an LDAP filter: it must be in parentheses",
                self.source
            ));
        }
        ldap3::parse_filter(&sample)
            .map(|_| ())
            .map_err(|()| format!("\"{}\" is not a valid LDAP filter (RFC 4515)", self.source))
    }

    /// Whether this is a DN template (values escaped as DN values).
    pub fn is_dn(&self) -> bool {
        self.escaping == Escaping::Dn
    }

    pub fn uses(&self, placeholder: Placeholder) -> bool {
        self.parts.contains(&Part::Value(placeholder))
    }

    pub fn render(&self, values: Values<'_>) -> String {
        let mut out = String::with_capacity(self.source.len() + values.upn.len());
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value(p) => {
                    let value = match p {
                        Placeholder::Upn => values.upn,
                        Placeholder::Login => values.login,
                    };
                    match self.escaping {
                        Escaping::Filter => out.push_str(&ldap3::ldap_escape(value)),
                        Escaping::Dn => out.push_str(&ldap3::dn_escape(value)),
                        Escaping::Verbatim => out.push_str(value),
                    }
                }
            }
        }
        out
    }

    /// The filter with every placeholder matching any value: `(mail={upn})`
    /// becomes the presence filter `(mail=*)`. Used to list every user.
    pub fn render_any(&self) -> String {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value(_) => out.push('*'),
            }
        }
        out
    }

    /// `(&A B)`: both filters must match.
    pub fn and(first: &str, second: &str) -> String {
        format!("(&{first}{second})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(upn: &'a str, login: &'a str) -> Values<'a> {
        Values { upn, login }
    }

    #[test]
    fn filter_values_are_escaped_per_rfc_4515() {
        let t = Template::filter("(&(objectClass=inetOrgPerson)(mail={upn}))", Placeholder::Upn).unwrap();
        assert_eq!(
            t.render(values("a@b.c", "")),
            "(&(objectClass=inetOrgPerson)(mail=a@b.c))"
        );
        assert_eq!(
            t.render(values("*)(uid=*", "")),
            "(&(objectClass=inetOrgPerson)(mail=\\2a\\29\\28uid=\\2a))"
        );
        assert_eq!(
            t.render(values("a\\b\0", "")),
            "(&(objectClass=inetOrgPerson)(mail=a\\5cb\\00))"
        );
        // A value holding a placeholder's name is not expanded again.
        assert_eq!(
            t.render(values("{upn}", "")),
            "(&(objectClass=inetOrgPerson)(mail={upn}))"
        );
        for hostile in ["*", ")(uid=*", "\\", "\0", "x)(|(objectClass=*"] {
            let rendered = t.render(values(hostile, ""));
            assert!(ldap3::parse_filter(&rendered).is_ok(), "{rendered}");
        }
    }

    /// The one equality assertion a rendered `(attr=value)` parses to, if
    /// that is what it is: `(attribute, value)`.
    fn equality(tag: &ldap3::asn1::Tag) -> Option<(Vec<u8>, Vec<u8>)> {
        use ldap3::asn1::{OctetString, Sequence, Tag, TagClass};
        match tag {
            Tag::Sequence(Sequence {
                class: TagClass::Context,
                id: 3,
                inner,
            }) => match inner.as_slice() {
                [Tag::OctetString(OctetString { inner: attr, .. }), Tag::OctetString(OctetString { inner: value, .. })] => {
                    Some((attr.clone(), value.clone()))
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn parsed(rendered: &str) -> Result<ldap3::asn1::Tag, proptest::test_runner::TestCaseError> {
        ldap3::parse_filter(rendered)
            .map_err(|()| proptest::test_runner::TestCaseError::fail(format!("does not parse: {rendered}")))
    }

    proptest::proptest! {
        /// Whatever a client sends as a name, the escaped filter is one
        /// equality assertion whose value is exactly the name: no wildcard,
        /// no extra clause, nothing lost.
        #[test]
        fn every_escaped_value_parses_back_to_one_equality(value in r"\PC*|[()*\\\x00a-z=&|!~<>:]{0,24}") {
            let t = Template::filter("(uid={login})", Placeholder::Login).unwrap();
            let tag = parsed(&t.render(values("", &value)))?;
            proptest::prop_assert_eq!(equality(&tag), Some((b"uid".to_vec(), value.as_bytes().to_vec())));

            // Inside a conjunction, the value is still one assertion of its own.
            let t = Template::filter("(&(objectClass=inetOrgPerson)(mail={upn}))", Placeholder::Upn).unwrap();
            let ldap3::asn1::Tag::Sequence(and) = parsed(&t.render(values(&value, "")))? else {
                return Err(proptest::test_runner::TestCaseError::fail("not a conjunction"));
            };
            proptest::prop_assert_eq!(and.id, 0);
            proptest::prop_assert_eq!(and.inner.len(), 2);
            proptest::prop_assert_eq!(equality(&and.inner[1]), Some((b"mail".to_vec(), value.as_bytes().to_vec())));
        }
    }

    #[test]
    fn any_value_turns_placeholders_into_presence() {
        let t = Template::filter("(&(objectClass=inetOrgPerson)(mail={upn}))", Placeholder::Upn).unwrap();
        assert_eq!(t.render_any(), "(&(objectClass=inetOrgPerson)(mail=*))");
        assert!(ldap3::parse_filter(t.render_any()).is_ok());
    }

    #[test]
    fn filters_are_checked_when_read() {
        assert!(Template::filter("(uid={login})", Placeholder::Login).is_ok());
        let missing = Template::filter("(uid=alice)", Placeholder::Login).unwrap_err();
        assert!(missing.contains("{login}"), "{missing}");
        let unknown = Template::filter("(uid={user})", Placeholder::Login).unwrap_err();
        assert!(unknown.contains("unknown placeholder"), "{unknown}");
        assert!(Template::filter("uid={login}", Placeholder::Login)
            .unwrap_err()
            .contains("parentheses"));
        assert!(Template::filter("(&(uid={login})", Placeholder::Login)
            .unwrap_err()
            .contains("not a valid LDAP filter"));
        assert!(Template::fixed_filter("(pwdAccountLockedTime=*)").is_ok());
        assert!(Template::fixed_filter("(uid={login})").is_err());
    }

    #[test]
    fn bind_names_escape_dn_values_only_in_dns() {
        let dn = Template::bind_name("uid={login},ou=people,dc=example,dc=com").unwrap();
        assert_eq!(
            dn.render(values("", "a,b=c+")),
            "uid=a\\2cb\\3dc\\2b,ou=people,dc=example,dc=com"
        );
        let upn = Template::bind_name("{upn}").unwrap();
        assert_eq!(
            upn.render(values("alice@corp.example.com", "alice")),
            "alice@corp.example.com"
        );
        let down_level = Template::bind_name("CORP\\{login}").unwrap();
        assert_eq!(down_level.render(values("", "alice")), "CORP\\alice");
        assert!(Template::bind_name("cn=fixed").is_err());
    }
}
