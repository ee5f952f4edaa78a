//! Client access policies: the `[[policy]]` tables as operators write them
//! ([`PolicyFile`]), checked into a [`PolicySet`], and the matcher that says
//! which rule decides a sign-in. Pure: no I/O, no clock; the sign-in path
//! ([`crate::auth`]) gathers the facts and acts on the verdict.
//!
//! Rules are evaluated in file order, the first that matches decides, and
//! a request no rule matches is allowed. A rule matches when every
//! condition it sets matches (an absent condition matches anything).
//! Conditions come in two kinds:
//! - about the request: route, source network, user agent, and the kind of
//!   credential (told by the secret's shape before anything is verified);
//! - about the user: directory groups (the synced `memberOf`) and MFA
//!   state, known only once the credential named a user.
//!
//! [`PolicySet::before_user`] decides from the request alone when it can
//! (the first rule whose request conditions match has no user conditions),
//! so a denied source is refused before any argon2 or directory bind;
//! [`PolicySet::decide`] decides with the user known.
//!
//! Not here: what a denial costs, how it is logged and answered (the
//! sign-in path), and reading the config file ([`crate::config`]).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::model::{CredentialKind, MfaState};

/// Longest user-agent pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// Most memory a compiled user-agent regular expression may take.
const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// Longest policy name (it is part of every sign-in record it decides).
const MAX_NAME_CHARS: usize = 64;
/// What a user-agent pattern starts with to be a regular expression rather
/// than a glob.
const REGEX_PREFIX: &str = "regex:";

/// One `[[policy]]` table as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub name: String,
    /// Shown instead of `name` after `policy_denied:`.
    pub reason: Option<String>,
    pub action: String,
    pub routes: Option<Vec<String>>,
    pub networks: Option<Vec<String>>,
    pub not_networks: Option<Vec<String>>,
    pub credentials: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub mfa_states: Option<Vec<String>>,
    pub user_agents: Option<Vec<String>>,
}

/// A `[[policy]]` table that cannot be used, tied to its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

fn invalid(index: usize, key: &str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        key: match key {
            "" => format!("policy[{index}]"),
            key => format!("policy[{index}].{key}"),
        },
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// The kind of credential a request presents, as policies name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Password,
    AppPassword,
    /// A browser signed in through the portal.
    Session,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Password => "password",
            Kind::AppPassword => "app_password",
            Kind::Session => "session",
        }
    }

    /// The policy kind of an audited credential kind; `None` for no
    /// credential at all (nothing to decide about).
    pub fn of(kind: CredentialKind) -> Option<Kind> {
        match kind {
            CredentialKind::Password => Some(Kind::Password),
            CredentialKind::AppPassword => Some(Kind::AppPassword),
            CredentialKind::PortalSession => Some(Kind::Session),
            CredentialKind::None => None,
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s.trim() {
            "password" => Ok(Kind::Password),
            "app_password" => Ok(Kind::AppPassword),
            "session" => Ok(Kind::Session),
            other => Err(format!(
                "expected password, app_password or session, got \"{}\"",
                crate::model::audit_text(other, 64)
            )),
        }
    }
}

/// A route as policies see it: its name and its path.
#[derive(Debug, Clone, Copy)]
pub struct RouteRef<'a> {
    pub name: &'a str,
    pub path: &'a str,
}

/// What is known about a sign-in before any secret is checked.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub route: RouteRef<'a>,
    /// The client address, resolved through `[server] trusted_proxies`.
    pub ip: IpAddr,
    pub user_agent: &'a str,
    pub kind: Kind,
}

/// What is known about the user once the credential named one.
#[derive(Debug, Clone, Copy)]
pub struct UserFacts<'a> {
    pub mfa_state: MfaState,
    /// DNs of the user's directory groups (empty for cloud-only users).
    pub groups: &'a [String],
}

/// How a route is named in a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RouteMatch {
    Name(String),
    /// A prefix of the route's path, lower-case.
    PathPrefix(String),
}

/// A user-agent pattern: a glob (`*` any run, `?` one character; ASCII
/// case folded) or a regular expression.
#[derive(Clone)]
enum AgentPattern {
    Glob(String),
    Regex(regex::Regex),
}

impl fmt::Debug for AgentPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentPattern::Glob(g) => write!(f, "{g:?}"),
            AgentPattern::Regex(r) => write!(f, "{:?}", format!("{REGEX_PREFIX}{}", r.as_str())),
        }
    }
}

impl AgentPattern {
    fn matches(&self, agent: &str) -> bool {
        match self {
            AgentPattern::Glob(pattern) => glob_matches(pattern.as_bytes(), agent.as_bytes()),
            AgentPattern::Regex(re) => re.is_match(agent),
        }
    }
}

/// A group as a rule names it: a whole DN, or the value of a DN's first
/// RDN (`Sales` for `cn=Sales,ou=Groups,dc=corp`). Both compared with
/// ASCII case folded, as directories compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GroupMatch {
    Dn(String),
    Name(String),
}

impl GroupMatch {
    fn matches(&self, dn: &str) -> bool {
        match self {
            GroupMatch::Dn(want) => normalize_dn(dn) == *want,
            GroupMatch::Name(want) => first_rdn_value(dn).is_some_and(|v| v.eq_ignore_ascii_case(want)),
        }
    }
}

fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.trim().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

fn first_rdn_value(dn: &str) -> Option<&str> {
    let rdn = dn.split(',').next()?;
    rdn.split_once('=').map(|(_, v)| v.trim())
}

/// One checked rule.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Position in the file (`policy[N]`).
    pub index: usize,
    pub name: String,
    /// What follows `policy_denied:` in the sign-in log.
    pub reason: String,
    pub action: Action,
    routes: Option<Vec<RouteMatch>>,
    networks: Option<Vec<IpNet>>,
    not_networks: Option<Vec<IpNet>>,
    credentials: Option<Vec<Kind>>,
    groups: Option<Vec<GroupMatch>>,
    mfa_states: Option<Vec<MfaState>>,
    user_agents: Option<Vec<AgentPattern>>,
}

fn any<T>(set: &Option<Vec<T>>, f: impl Fn(&T) -> bool) -> bool {
    set.as_ref().is_none_or(|items| items.iter().any(f))
}

impl Policy {
    /// Whether the conditions on the request hold.
    pub fn matches_request(&self, r: &Request<'_>) -> bool {
        let ip = r.ip.to_canonical();
        any(&self.credentials, |k| *k == r.kind)
            && any(&self.routes, |m| match m {
                RouteMatch::Name(name) => name == r.route.name,
                RouteMatch::PathPrefix(prefix) => path_has_prefix(r.route.path, prefix),
            })
            && any(&self.networks, |n| n.contains(&ip))
            && self
                .not_networks
                .as_ref()
                .is_none_or(|nets| !nets.iter().any(|n| n.contains(&ip)))
            && any(&self.user_agents, |p| p.matches(r.user_agent))
    }

    /// Whether the conditions on the user hold.
    pub fn matches_user(&self, u: &UserFacts<'_>) -> bool {
        any(&self.mfa_states, |s| *s == u.mfa_state) && any(&self.groups, |g| u.groups.iter().any(|dn| g.matches(dn)))
    }

    /// Whether the rule has conditions on the user.
    pub fn needs_user(&self) -> bool {
        self.groups.is_some() || self.mfa_states.is_some()
    }

    /// Whether the rule matches every sign-in.
    pub fn matches_all(&self) -> bool {
        self.routes.is_none()
            && self.networks.is_none()
            && self.not_networks.is_none()
            && self.credentials.is_none()
            && self.groups.is_none()
            && self.mfa_states.is_none()
            && self.user_agents.is_none()
    }

    /// The conditions as one line, in the file's spelling.
    pub fn describe(&self) -> String {
        fn list<T>(out: &mut Vec<String>, key: &str, items: &Option<Vec<T>>, f: impl Fn(&T) -> String) {
            if let Some(items) = items {
                let items: Vec<String> = items.iter().map(f).collect();
                out.push(format!("{key}=[{}]", items.join(", ")));
            }
        }
        let mut parts = Vec::new();
        list(&mut parts, "routes", &self.routes, |m| match m {
            RouteMatch::Name(n) => n.clone(),
            RouteMatch::PathPrefix(p) => p.clone(),
        });
        list(&mut parts, "networks", &self.networks, |n| n.to_string());
        list(&mut parts, "not_networks", &self.not_networks, |n| n.to_string());
        list(&mut parts, "credentials", &self.credentials, |k| k.as_str().to_owned());
        list(&mut parts, "groups", &self.groups, |g| match g {
            GroupMatch::Dn(d) | GroupMatch::Name(d) => d.clone(),
        });
        list(&mut parts, "mfa_states", &self.mfa_states, |s| s.as_str().to_owned());
        list(&mut parts, "user_agents", &self.user_agents, |p| format!("{p:?}"));
        if parts.is_empty() {
            "(every sign-in)".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// Path prefixes match on whole segments, ASCII case folded, as routes do.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let (p, q) = (path.as_bytes(), prefix.as_bytes());
    if p.len() < q.len() || !p[..q.len()].eq_ignore_ascii_case(q) {
        return false;
    }
    q.ends_with(b"/") || p.len() == q.len() || p[q.len()] == b'/'
}

/// Glob matching with `*` and `?`, ASCII case folded; linear in the
/// input (one backtrack point, the last `*`).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if *c == b'?' || c.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// What decided a sign-in.
#[derive(Debug, Clone, Copy)]
pub enum Verdict<'a> {
    /// No rule matched: allowed by default.
    Default,
    /// This rule matched.
    Rule(&'a Policy),
}

/// Two verdicts are the same when the same rule (by position) decided.
impl PartialEq for Verdict<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Verdict::Default, Verdict::Default) => true,
            (Verdict::Rule(a), Verdict::Rule(b)) => a.index == b.index && a.name == b.name,
            _ => false,
        }
    }
}

impl Eq for Verdict<'_> {}

impl<'a> Verdict<'a> {
    /// The rule that denies, if this verdict is a denial.
    pub fn denied(self) -> Option<&'a Policy> {
        match self {
            Verdict::Rule(p) if p.action == Action::Deny => Some(p),
            _ => None,
        }
    }
}

/// The checked `[[policy]]` tables, in file order.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    rules: Vec<Policy>,
}

impl PolicySet {
    /// Checks the tables: every value parsed, every route name known, no
    /// rule that could never match because an earlier one matches all.
    pub fn build(files: &[PolicyFile], route_names: &[&str]) -> Result<PolicySet, PolicyError> {
        let mut rules: Vec<Policy> = Vec::with_capacity(files.len());
        for (index, f) in files.iter().enumerate() {
            let rule = policy(index, f, route_names)?;
            if let Some(earlier) = rules.iter().find(|r| r.name == rule.name) {
                return Err(invalid(
                    index,
                    "name",
                    format!("\"{}\" is also the name of policy[{}]", rule.name, earlier.index),
                ));
            }
            if let Some(all) = rules.iter().find(|r| r.matches_all()) {
                return Err(invalid(
                    index,
                    "",
                    format!(
                        "never reached: policy[{}] (\"{}\") matches every sign-in; move it last or give it conditions",
                        all.index, all.name
                    ),
                ));
            }
            rules.push(rule);
        }
        Ok(PolicySet { rules })
    }

    pub fn rules(&self) -> &[Policy] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The verdict from the request alone, when no rule that could decide
    /// first depends on the user; `None` when the user must be known.
    pub fn before_user(&self, r: &Request<'_>) -> Option<Verdict<'_>> {
        for rule in &self.rules {
            if rule.matches_request(r) {
                return match rule.needs_user() {
                    true => None,
                    false => Some(Verdict::Rule(rule)),
                };
            }
        }
        Some(Verdict::Default)
    }

    /// The verdict with the user known.
    pub fn decide(&self, r: &Request<'_>, u: &UserFacts<'_>) -> Verdict<'_> {
        self.rules
            .iter()
            .find(|rule| rule.matches_request(r) && rule.matches_user(u))
            .map_or(Verdict::Default, Verdict::Rule)
    }

    /// Each rule, in order, and whether it matched (`None`: not asked,
    /// because an earlier rule decided): what `fedgate policy test` prints.
    pub fn explain(&self, r: &Request<'_>, u: &UserFacts<'_>) -> Vec<(&Policy, Option<Explained>)> {
        let mut decided = false;
        self.rules
            .iter()
            .map(|rule| {
                if decided {
                    return (rule, None);
                }
                let why = if !rule.matches_request(r) {
                    Explained::RequestDiffers
                } else if !rule.matches_user(u) {
                    Explained::UserDiffers
                } else {
                    decided = true;
                    Explained::Matched
                };
                (rule, Some(why))
            })
            .collect()
    }
}

/// Why a rule did or did not match, for `fedgate policy test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explained {
    Matched,
    /// Route, network, user agent or credential kind differ.
    RequestDiffers,
    /// Groups or MFA state differ.
    UserDiffers,
}

fn non_empty<'a>(index: usize, key: &str, list: &'a Option<Vec<String>>) -> Result<Option<&'a [String]>, PolicyError> {
    match list {
        None => Ok(None),
        Some(items) if items.is_empty() => Err(invalid(
            index,
            key,
            "an empty list matches nothing: remove the key to match anything",
        )),
        Some(items) => Ok(Some(items)),
    }
}

fn each<T>(
    index: usize,
    key: &str,
    list: &Option<Vec<String>>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<Vec<T>>, PolicyError> {
    let Some(items) = non_empty(index, key, list)? else {
        return Ok(None);
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse(item).map_err(|m| invalid(index, &format!("{key}[{i}]"), m)))
        .collect::<Result<Vec<T>, _>>()
        .map(Some)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn policy(index: usize, f: &PolicyFile, route_names: &[&str]) -> Result<Policy, PolicyError> {
    let name = f.name.trim().to_owned();
    if !valid_name(&name) {
        return Err(invalid(
            index,
            "name",
            format!("expected 1 to {MAX_NAME_CHARS} letters, digits, '-', '_' or '.', got \"{name}\""),
        ));
    }
    let reason = match f.reason.as_deref().map(str::trim) {
        None => name.clone(),
        Some(r) if valid_name(r) => r.to_owned(),
        Some(r) => {
            return Err(invalid(
                index,
                "reason",
                format!("expected 1 to {MAX_NAME_CHARS} letters, digits, '-', '_' or '.', got \"{r}\""),
            ))
        }
    };
    let action = match f.action.trim() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        other => {
            return Err(invalid(
                index,
                "action",
                format!("expected allow or deny, got \"{other}\""),
            ))
        }
    };
    let routes = each(index, "routes", &f.routes, |r| {
        let r = r.trim();
        if r.starts_with('/') {
            Ok(RouteMatch::PathPrefix(r.to_ascii_lowercase()))
        } else if route_names.contains(&r) {
            Ok(RouteMatch::Name(r.to_owned()))
        } else {
            Err(format!(
                "no [[route]] is named \"{r}\" (known: {}); a path prefix starts with '/'",
                route_names.join(", ")
            ))
        }
    })?;
    let cidr = |s: &str| -> Result<IpNet, String> {
        let s = s.trim();
        s.parse::<IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("expected a CIDR such as \"10.0.0.0/8\" or an IP address, got \"{s}\""))
    };
    let networks = each(index, "networks", &f.networks, cidr)?;
    let not_networks = each(index, "not_networks", &f.not_networks, cidr)?;
    let credentials = each(index, "credentials", &f.credentials, |k| k.parse::<Kind>())?;
    let groups = each(index, "groups", &f.groups, |g| {
        let g = g.trim();
        match g {
            "" => Err("expected a group DN or name, got \"\"".to_owned()),
            g if g.contains('=') => Ok(GroupMatch::Dn(normalize_dn(g))),
            g => Ok(GroupMatch::Name(g.to_owned())),
        }
    })?;
    let mfa_states = each(index, "mfa_states", &f.mfa_states, |s| {
        s.parse::<MfaState>().map_err(|e| e.to_string())
    })?;
    let user_agents = each(index, "user_agents", &f.user_agents, agent_pattern)?;
    Ok(Policy {
        index,
        name,
        reason,
        action,
        routes,
        networks,
        not_networks,
        credentials,
        groups,
        mfa_states,
        user_agents,
    })
}

fn agent_pattern(s: &str) -> Result<AgentPattern, String> {
    if s.len() > MAX_PATTERN_BYTES {
        return Err(format!("longer than {MAX_PATTERN_BYTES} bytes"));
    }
    match s.strip_prefix(REGEX_PREFIX) {
        None if s.is_empty() => Err("expected a glob such as \"*Outlook*\", got \"\"".to_owned()),
        None => Ok(AgentPattern::Glob(s.to_owned())),
        Some(re) => regex::RegexBuilder::new(re)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(AgentPattern::Regex)
            .map_err(|e| format!("not a usable regular expression: {e}")),
    }
}

#[cfg(test)]
mod tests;
