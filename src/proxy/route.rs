//! Route matching: optional host, then the longest path prefix, on the
//! canonical request ([`super::canonical`]).
//!
//! A prefix matches on a segment boundary: `/mail` matches `/mail`,
//! `/mail/`, `/mail/x` and `/mail?q`, but not `/mailbox`. A prefix ending in
//! `/` (including `/` itself) matches everything below it. Routes with a
//! host are preferred over host-less routes with the same or shorter path.
//! Paths match ASCII-case-insensitively unless the route says
//! `case_sensitive = true`: the upstreams fedgate guards (IIS, Exchange)
//! fold case, so `/microsoft-server-activesync` is the same resource.

use crate::config::RouteConfig;

#[derive(Debug)]
pub struct Router<T> {
    /// Sorted so the first match is the best one: host-specific routes first,
    /// then longer paths first.
    entries: Vec<(RouteKey, T)>,
}

#[derive(Debug)]
struct RouteKey {
    host: Option<String>,
    path: String,
    case_sensitive: bool,
}

impl<T> Router<T> {
    pub fn new(routes: impl IntoIterator<Item = (RouteConfig, T)>) -> Self
    where
        T: Sized,
    {
        let mut entries: Vec<(RouteKey, T)> = routes
            .into_iter()
            .map(|(r, v)| {
                (
                    RouteKey {
                        host: r.host,
                        path: r.path,
                        case_sensitive: r.case_sensitive,
                    },
                    v,
                )
            })
            .collect();
        entries.sort_by(|(a, _), (b, _)| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.path.len().cmp(&a.path.len()))
        });
        Router { entries }
    }

    /// `host` is the request's host without port, any case; `path` is the
    /// route key of a canonical path ([`super::canonical::CanonicalPath::route_key`]).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&T> {
        self.entries
            .iter()
            .find(|(key, _)| {
                host_matches(key.host.as_deref(), host) && path_matches(&key.path, path, key.case_sensitive)
            })
            .map(|(_, v)| v)
    }
}

fn host_matches(route_host: Option<&str>, host: Option<&str>) -> bool {
    match (route_host, host) {
        (None, _) => true,
        (Some(want), Some(got)) => want.eq_ignore_ascii_case(got.trim_end_matches('.')),
        (Some(_), None) => false,
    }
}

fn path_matches(prefix: &str, path: &str, case_sensitive: bool) -> bool {
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    let same = if case_sensitive {
        head == prefix
    } else {
        head.eq_ignore_ascii_case(prefix)
    };
    let rest = &path[prefix.len()..];
    same && (prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn router(routes: &[(&str, &str)]) -> Router<usize> {
        let mut text = String::from("[server]\nlisten_plain = [\"127.0.0.1:0\"]\n");
        for (host, path) in routes {
            text.push_str("[[route]]\n");
            if !host.is_empty() {
                text.push_str(&format!("host = \"{host}\"\n"));
            }
            text.push_str(&format!(
                "path = \"{path}\"\nupstream = \"http://127.0.0.1:1\"\nrealm = \"none\"\n"
            ));
        }
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        Router::new(config.routes.into_iter().map(|r| {
            let i = r.index;
            (r, i)
        }))
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let r = router(&[("", "/"), ("", "/mail"), ("", "/mail/sync")]);
        assert_eq!(r.find(None, "/mail/sync/x"), Some(&2));
        assert_eq!(r.find(None, "/mail/syncer"), Some(&1));
        assert_eq!(r.find(None, "/mail"), Some(&1));
        assert_eq!(r.find(None, "/mailbox"), Some(&0));
        assert_eq!(r.find(None, "/other"), Some(&0));
    }

    #[test]
    fn host_routes_are_preferred_and_case_insensitive() {
        let r = router(&[("", "/mail/deep"), ("mail.example.com", "/mail")]);
        assert_eq!(r.find(Some("MAIL.example.com"), "/mail/deep"), Some(&1));
        assert_eq!(r.find(Some("other.example.com"), "/mail/deep"), Some(&0));
        assert_eq!(r.find(Some("other.example.com"), "/mail"), None);
        assert_eq!(r.find(None, "/mail"), None);
    }

    #[test]
    fn paths_match_case_insensitively_unless_the_route_says_otherwise() {
        let mut text = String::from("[server]\nlisten_plain = [\"127.0.0.1:0\"]\n");
        text.push_str("[[route]]\npath = \"/Mail\"\nupstream = \"http://127.0.0.1:1\"\nrealm = \"none\"\n");
        text.push_str("[[route]]\npath = \"/Exact\"\nupstream = \"http://127.0.0.1:1\"\nrealm = \"none\"\ncase_sensitive = true\n");
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        let r = Router::new(config.routes.into_iter().map(|r| {
            let i = r.index;
            (r, i)
        }));
        assert_eq!(r.find(None, "/mail/x"), Some(&0));
        assert_eq!(r.find(None, "/MAIL"), Some(&0));
        assert_eq!(r.find(None, "/Exact/x"), Some(&1));
        assert_eq!(r.find(None, "/exact/x"), None);
        assert_eq!(r.find(None, "/Mai"), None);
    }
}
