//! Route matching: optional host, then the longest path prefix.
//!
//! A prefix matches on a segment boundary: `/mail` matches `/mail`,
//! `/mail/`, `/mail/x` and `/mail?q`, but not `/mailbox`. A prefix ending in
//! `/` (including `/` itself) matches everything below it. Routes with a
//! host are preferred over host-less routes with the same or shorter path.

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

    /// `host` is the request's host without port, any case.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&T> {
        self.entries
            .iter()
            .find(|(key, _)| host_matches(key.host.as_deref(), host) && path_matches(&key.path, path))
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

fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// Strips the port from a Host header value or URI authority, keeping IPv6
/// brackets off: `Mail.Example.com:443` -> `Mail.Example.com`, `[::1]:80` -> `::1`.
pub fn host_without_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
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
    fn ports_are_stripped_from_hosts() {
        assert_eq!(host_without_port("Mail.Example.com:443"), "Mail.Example.com");
        assert_eq!(host_without_port("[::1]:8443"), "::1");
        assert_eq!(host_without_port("[::1]"), "::1");
        assert_eq!(host_without_port("example.com"), "example.com");
    }
}
