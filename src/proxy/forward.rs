//! Forwarding a request to an http:// or https:// upstream and its answer
//! back: header hygiene (hop-by-hop, forwarding headers, identity header),
//! pooled keep-alive upstream connections, timeouts, and Upgrade tunnels
//! (only for the protocols a route lists: WebSocket by default; `h2c` never).
//!
//! Bodies are handed over as streams; nothing here buffers one.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_util::task::TaskTracker;

use super::body::ProxyBody;
use super::canonical::{parse_authority, HostRefusal};
use super::error::ProxyError;
use super::ip_text::IpText;
use super::pool::{Pool, PoolError};
use crate::config::{RouteConfig, UpstreamDefaults};

/// What the proxy established about the client, after believing (or not)
/// the forwarding headers of a trusted proxy in front of it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub peer_trusted: bool,
    /// `ip` is a trusted proxy's own address: the forwarding chain ran out
    /// or held an entry that is not an address, so who the client is went
    /// unsaid. Such an address stands for many people at once.
    pub ip_is_proxy: bool,
    /// `https` or `http`, as the client reached the first proxy.
    pub proto: &'static str,
    /// The host the client asked for, as the first proxy saw it.
    pub host: Option<String>,
    /// The request's own canonical `host[:port]` (Host, `:authority` or
    /// the absolute-form authority), as fedgate saw it.
    pub authority: Option<String>,
}

impl ClientInfo {
    /// `host` is the request's own Host / authority, canonical. A trusted
    /// proxy's `X-Forwarded-Host` must be a valid `host[:port]` too: a
    /// request carrying an invalid one is refused rather than passed on.
    pub fn resolve(
        peer: IpAddr,
        headers: &HeaderMap,
        trusted: &[IpNet],
        tls: bool,
        host: Option<&str>,
    ) -> Result<ClientInfo, HostRefusal> {
        let own_proto = if tls { "https" } else { "http" };
        let peer = canonical_ip(peer);
        if !trusted.iter().any(|net| net.contains(&peer)) {
            return Ok(ClientInfo {
                ip: peer,
                peer_trusted: false,
                ip_is_proxy: false,
                proto: own_proto,
                host: host.map(str::to_owned),
                authority: host.map(str::to_owned),
            });
        }
        // Walk X-Forwarded-For from the right: the first address that is not
        // one of our trusted proxies is the client. Anything to its left was
        // written by the client itself and proves nothing.
        let mut ip = peer;
        let mut ip_is_proxy = true;
        'outer: for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
            let Ok(text) = value.to_str() else { break };
            for part in text.rsplit(',') {
                match forwarded_ip(part.trim()) {
                    Some(addr) => {
                        ip = canonical_ip(addr);
                        if !trusted.iter().any(|net| net.contains(&ip)) {
                            ip_is_proxy = false;
                            break 'outer;
                        }
                    }
                    None => break 'outer,
                }
            }
        }
        let proto = match first_value(headers, &X_FORWARDED_PROTO) {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(p) if p.eq_ignore_ascii_case("http") => "http",
            _ => own_proto,
        };
        let fwd_host = match first_value(headers, &X_FORWARDED_HOST) {
            Some(h) => Some(
                parse_authority(h)
                    .map_err(|_| HostRefusal::BadForwardedHost)?
                    .to_string(),
            ),
            None => None,
        };
        Ok(ClientInfo {
            ip,
            peer_trusted: true,
            ip_is_proxy,
            proto,
            host: fwd_host.or_else(|| host.map(str::to_owned)),
            authority: host.map(str::to_owned),
        })
    }
}

/// One `X-Forwarded-For` entry: `ip`, or as some load balancers write it
/// (Azure Application Gateway), `ip:port`, `[v6]` or `[v6]:port`. The port
/// is the client's and says nothing about who the client is.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let v6 = entry.strip_prefix('[')?.strip_suffix(']')?;
    v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn first_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)?
        .to_str()
        .ok()?
        .split(',')
        .next()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// RFC 9110 7.6.1: headers that describe one connection, never forwarded;
/// with `HTTP2-Settings`, which only means something to an `h2c` upgrade
/// (RFC 7540 3.2.1), and fedgate never tunnels one.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("http2-settings"),
];

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names. `Upgrade` is removed too; the caller re-adds it for a
/// tunnel it is setting up.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (comparing known names is cheap) finds the
    // few that go; most messages carry none but `Connection`.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if name == header::UPGRADE || HOP_BY_HOP.contains(name) {
            doomed.push(name.clone());
        }
    }
    if doomed.contains(&header::CONNECTION) {
        let named = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // The usual token, and a name already in the list.
            .filter(|token| !token.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect::<Vec<_>>();
        doomed.extend(named);
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request that the route
/// tunnels, if it is one. Anything else goes upstream as a plain request:
/// `Upgrade` and `Connection` are hop-by-hop and removed, and an upstream
/// that switches protocols anyway gets no tunnel.
fn upgrade_protocol(req: &Request<Incoming>, allowed: &[String]) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let mut values = req.headers().get_all(header::UPGRADE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    // One protocol, which the route lists (`websocket`, `websocket/13`):
    // a list (`h2c, websocket`) would let the upstream pick the one that
    // is not allowed.
    let text = value.to_str().ok()?.trim();
    let name = text.split('/').next().unwrap_or("");
    let allowed = !text.contains(',') && allowed.iter().any(|a| a.eq_ignore_ascii_case(name));
    allowed.then(|| value.clone())
}

/// Removes every client-sent copy of the identity header, including the
/// spellings with underscores that some upstream frameworks treat as the
/// same header (`X_Remote_User` for `X-Remote-User`).
pub fn strip_identity_header(headers: &mut HeaderMap, identity: &HeaderName) {
    let dash = |b: u8| if b == b'_' { b'-' } else { b };
    let wanted = identity.as_str().as_bytes();
    let same = |name: &HeaderName| {
        let name = name.as_str().as_bytes();
        name.len() == wanted.len() && name.iter().zip(wanted).all(|(a, b)| dash(*a) == dash(*b))
    };
    // Header names are few; collecting only happens when a client sent one.
    if !headers.keys().any(same) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|k| same(k)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Cookies that are fedgate's own: a portal session id must never reach an
/// upstream, which could replay it.
const OWN_COOKIES: [&str; 3] = ["fedgate_session", "__Host-fedgate_csrf", "fedgate_csrf"];

/// Removes fedgate's own cookies from `Cookie` headers, keeping the rest.
pub fn strip_own_cookies(headers: &mut HeaderMap) {
    let own = |pair: &str| {
        let name = pair.split('=').next().unwrap_or("").trim();
        OWN_COOKIES.contains(&name)
    };
    let carries_own = headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(';').any(own)));
    if !carries_own {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !own(pair))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

const VIA: &str = "1.1 fedgate";

fn append_via(headers: &mut HeaderMap) {
    let value = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(existing) => HeaderValue::from_str(&format!("{existing}, {VIA}")).ok(),
        None => Some(HeaderValue::from_static(VIA)),
    };
    if let Some(v) = value {
        headers.insert(header::VIA, v);
    }
}

/// One upstream: its base URL and a pool of kept-alive connections to it.
pub struct Upstream {
    pool: Arc<Pool>,
    authority: http::uri::Authority,
    base_path: String,
    timeout: Duration,
    tunnels: TaskTracker,
}

impl Upstream {
    pub fn new(
        route: &RouteConfig,
        uri: &Uri,
        defaults: &UpstreamDefaults,
        tunnels: TaskTracker,
    ) -> Result<Upstream, super::tls::TlsError> {
        let ca_key = format!("route[{}].upstream_ca_file", route.index);
        // Invariant: config validation only accepts upstream URLs with a
        // scheme and a host.
        let host = uri
            .host()
            .unwrap_or("localhost")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut config =
                super::tls::client_config(route.upstream_ca_file.as_deref().map(|p| (ca_key.as_str(), p)))?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone()).map_err(|_| {
                super::tls::TlsError::Generate(format!(
                    "route[{}].upstream: {host:?} is not a valid TLS server name",
                    route.index
                ))
            })?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let pool = Arc::new(Pool::new(
            host,
            port,
            tls,
            route.upstream_connect_timeout,
            defaults.pool_idle_timeout,
        ));
        // Invariant: config validation only accepts upstream URLs with a
        // scheme and a host, so both parts are present.
        let authority = uri
            .authority()
            .cloned()
            .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
        Ok(Upstream {
            pool,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
            timeout: route.upstream_timeout,
            tunnels,
        })
    }

    fn target(&self, original: &Uri) -> Result<Uri, ProxyError> {
        const INVALID: ProxyError = ProxyError::BadRequest("request target cannot be forwarded");
        let path_and_query = match (self.base_path.is_empty(), original.path_and_query()) {
            // The common case reuses the request's own (shared) bytes.
            (true, Some(pq)) => pq.clone(),
            (_, pq) => {
                let pq = pq.map(|pq| pq.as_str()).unwrap_or("/");
                http::uri::PathAndQuery::try_from(format!("{}{}", self.base_path, pq)).map_err(|_| INVALID)?
            }
        };
        // Origin form (`/path?query`), as HTTP/1.1 sends to an origin server;
        // the Host header names the site.
        Ok(Uri::from(path_and_query))
    }

    /// Sends `req` upstream and returns the upstream's response, ready for
    /// the client. `identity` is the authenticated user, if any.
    pub async fn forward(
        &self,
        route: &RouteConfig,
        mut req: Request<Incoming>,
        client: &ClientInfo,
        peer: IpAddr,
        identity: Option<&str>,
        forward_authorization: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upgrade = upgrade_protocol(&req, &route.upgrades);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

        let original_host = client.authority.as_deref();
        let uri = self.target(req.uri())?;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;

        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        strip_identity_header(headers, &route.identity_header);
        strip_own_cookies(headers);
        if !forward_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        set_forwarding_headers(headers, client, peer, original_host);
        match (route.preserve_host, original_host) {
            (true, Some(host)) => {
                if let Ok(v) = HeaderValue::from_str(host) {
                    headers.insert(header::HOST, v);
                }
            }
            _ => {
                if let Ok(v) = HeaderValue::from_str(self.authority.as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
        }
        if let Some(user) = identity {
            if let Ok(v) = HeaderValue::from_str(user) {
                headers.insert(route.identity_header.clone(), v);
            }
        }
        if let Some(proto) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }

        let mut resp = match tokio::time::timeout(self.timeout, self.pool.send(req)).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(err)) => return Err(classify(err)),
            Ok(Ok(resp)) => resp,
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let (Some(client_upgrade), Some(proto)) = (client_upgrade, upgrade) {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                self.tunnels.spawn(tunnel(client_upgrade, upstream_upgrade));
                let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
                if let Some(h) = out.headers_mut() {
                    for (k, v) in resp.headers() {
                        if k != header::CONNECTION && k != header::UPGRADE {
                            h.append(k, v.clone());
                        }
                    }
                    strip_hop_by_hop(h);
                    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    h.insert(header::UPGRADE, proto);
                    append_via(h);
                }
                return out
                    .body(super::body::empty())
                    .map_err(|_| ProxyError::BadGateway("invalid upgrade response"));
            }
            return Err(ProxyError::BadGateway(
                "upstream switched protocols without being asked",
            ));
        }

        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        append_via(&mut parts.headers);
        let body = body.map_err(|e| Box::new(e) as super::body::BoxError).boxed_unsync();
        Ok(Response::from_parts(parts, body))
    }
}

fn set_forwarding_headers(headers: &mut HeaderMap, client: &ClientInfo, peer: IpAddr, host: Option<&str>) {
    let peer = canonical_ip(peer);
    let xff = if client.peer_trusted {
        let prior: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            None
        } else {
            Some(format!("{}, {peer}", prior.join(", ")))
        }
    } else {
        None
    };
    let fwd_host = if client.peer_trusted {
        client.host.as_deref().or(host)
    } else {
        host
    };
    if !client.peer_trusted {
        // An untrusted client's own forwarding claims are dropped, not passed on.
        headers.remove(header::FORWARDED);
    }
    headers.remove(&X_FORWARDED_HOST);
    headers.remove(&X_REAL_IP);
    // `insert` replaces every copy the client sent.
    let peer_text = IpText::new(peer);
    if let Ok(v) = HeaderValue::from_str(xff.as_deref().unwrap_or(peer_text.as_str())) {
        headers.insert(X_FORWARDED_FOR, v);
    } else {
        headers.remove(&X_FORWARDED_FOR);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    if let Some(v) = fwd_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(X_FORWARDED_HOST, v);
    }
    append_via(headers);
}

fn classify(err: PoolError) -> ProxyError {
    if err.is_client_body() {
        // The client's own upload broke (a malformed chunk, a reset): its
        // fault, not the upstream's.
        tracing::info!(error = %err, "client request body broken");
        ProxyError::BadRequest("client request body broken")
    } else if err.is_timeout() {
        tracing::warn!(error = %err, "upstream connection timed out");
        ProxyError::UpstreamTimeout
    } else if err.is_connect() {
        tracing::warn!(error = %err, "upstream connection failed");
        ProxyError::UpstreamUnavailable
    } else {
        tracing::warn!(error = %err, "upstream request failed");
        ProxyError::BadGateway("upstream closed the connection or sent an invalid response")
    }
}

/// Copies bytes both ways between the upgraded client and upstream
/// connections until either side closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(bytes_up = up, bytes_down = down, "tunnel closed"),
        Err(err) => tracing::debug!(error = %err, "tunnel ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop, close"),
        );
        h.insert("close", HeaderValue::from_static("named by Connection"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn own_cookies_never_reach_the_upstream() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; fedgate_session=secret; b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("fedgate_csrf=x"));
        strip_own_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, HeaderValue::from_static("fedgate_session=secret"));
        strip_own_cookies(&mut only);
        assert!(!only.contains_key(header::COOKIE));
    }

    #[test]
    fn identity_header_variants_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", HeaderValue::from_static("mallory"));
        h.insert("x_remote_user", HeaderValue::from_static("mallory"));
        h.insert("x-remote-user-extra", HeaderValue::from_static("keep"));
        strip_identity_header(&mut h, &HeaderName::from_static("x-remote-user"));
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-remote-user-extra"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 192.0.2.7, 10.1.1.1"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let untrusted = ClientInfo::resolve("198.51.100.1".parse().unwrap(), &h, &trusted, false, Some("a")).unwrap();
        assert_eq!(untrusted.ip.to_string(), "198.51.100.1");
        assert_eq!(untrusted.proto, "http");
        let via_lb = ClientInfo::resolve("10.0.0.5".parse().unwrap(), &h, &trusted, false, Some("a")).unwrap();
        assert_eq!(via_lb.ip.to_string(), "192.0.2.7");
        assert_eq!(via_lb.proto, "https");
    }

    #[test]
    fn forwarded_for_entries_may_carry_a_port() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        for (entry, client) in [
            ("192.0.2.7", "192.0.2.7"),
            ("192.0.2.7:50312", "192.0.2.7"),
            ("2001:db8::7", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("[2001:db8::7]:50312", "2001:db8::7"),
            ("[::ffff:192.0.2.7]:443", "192.0.2.7"),
            ("6.6.6.6, 192.0.2.7:1, 10.1.1.1:2", "192.0.2.7"),
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_str(entry).unwrap());
            let info = ClientInfo::resolve(lb, &h, &trusted, false, Some("a")).unwrap();
            assert_eq!(info.ip.to_string(), client, "{entry}");
            assert!(!info.ip_is_proxy, "{entry}");
        }
    }

    #[test]
    fn a_client_left_unsaid_is_marked_as_the_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let mut h = HeaderMap::new();
        let info = ClientInfo::resolve(lb, &h, &trusted, false, Some("a")).unwrap();
        assert!(info.ip_is_proxy, "no X-Forwarded-For");
        assert_eq!(info.ip, lb);
        for (entry, ip) in [
            ("10.1.1.1, 10.2.2.2", "10.1.1.1"),
            ("192.0.2.7, garbage, 10.2.2.2", "10.2.2.2"),
            ("192.0.2.7:99999", "10.0.0.5"),
            ("[192.0.2.7]:1", "10.0.0.5"),
            ("", "10.0.0.5"),
        ] {
            h.insert("x-forwarded-for", HeaderValue::from_str(entry).unwrap());
            let info = ClientInfo::resolve(lb, &h, &trusted, false, Some("a")).unwrap();
            assert_eq!(info.ip.to_string(), ip, "{entry}");
            assert!(info.ip_is_proxy, "{entry}");
        }
        let peer: IpAddr = "198.51.100.1".parse().unwrap();
        let info = ClientInfo::resolve(peer, &h, &trusted, false, Some("a")).unwrap();
        assert!(!info.ip_is_proxy, "an untrusted peer is the client");
    }

    #[test]
    fn outgoing_forwarding_headers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.2.3.4"));
        let peer: IpAddr = "198.51.100.1".parse().unwrap();
        let info = ClientInfo::resolve(peer, &h, &trusted, true, Some("mail.example.com")).unwrap();
        set_forwarding_headers(&mut h, &info, peer, Some("mail.example.com"));
        assert_eq!(h["x-forwarded-for"], "198.51.100.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "mail.example.com");
        assert!(!h.contains_key(header::FORWARDED));
        assert_eq!(h[header::VIA], "1.1 fedgate");

        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let info = ClientInfo::resolve(lb, &h, &trusted, false, Some("mail.example.com")).unwrap();
        set_forwarding_headers(&mut h, &info, lb, Some("mail.example.com"));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.5");
    }

    #[test]
    fn a_trusted_proxys_forwarded_host_must_be_valid() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", HeaderValue::from_static("Mail.Example.com.:443"));
        let info = ClientInfo::resolve(lb, &h, &trusted, true, Some("a")).unwrap();
        assert_eq!(info.host.as_deref(), Some("mail.example.com:443"));
        for bad in ["mail.example.com@evil", "a:443:443", "a/b", "user@a"] {
            h.insert("x-forwarded-host", HeaderValue::from_static(bad));
            assert!(ClientInfo::resolve(lb, &h, &trusted, true, Some("a")).is_err(), "{bad}");
        }
    }
}
