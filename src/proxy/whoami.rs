//! The built-in upstream `builtin:whoami`: answers with what the proxy
//! established about the request (client address, route, and who signed in
//! with what), as JSON or as a small HTML page. Operators and users test
//! their set-up and credentials against it.

use http::{header, HeaderValue, Request, Response, StatusCode};
use serde::Serialize;

use super::body::{full, ProxyBody};

#[derive(Debug, Serialize)]
pub struct Whoami<'a> {
    pub authenticated: bool,
    pub user: Option<&'a str>,
    pub credential: &'a str,
    pub client_ip: String,
    pub peer: String,
    pub scheme: &'a str,
    pub tls: bool,
    pub http_version: String,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub route: &'a str,
    pub realm: &'a str,
}

/// Picks JSON unless the client prefers HTML (a browser), or `?format=`
/// says otherwise.
fn wants_html<B>(req: &Request<B>) -> bool {
    if let Some(q) = req.uri().query() {
        if q.split('&').any(|p| p == "format=json") {
            return false;
        }
        if q.split('&').any(|p| p == "format=html") {
            return true;
        }
    }
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

pub fn respond<B>(req: &Request<B>, who: &Whoami<'_>) -> Response<ProxyBody> {
    let (body, content_type) = if wants_html(req) {
        (html(who), "text/html; charset=utf-8")
    } else {
        // Invariant: Whoami holds only strings, bools and options of them,
        // which always serialize.
        let mut json = serde_json::to_string_pretty(who).unwrap_or_default();
        json.push('\n');
        (json, "application/json")
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

use crate::html::escape;

fn html(who: &Whoami<'_>) -> String {
    let rows = [
        ("Signed in", if who.authenticated { "yes" } else { "no" }.to_string()),
        ("User", who.user.unwrap_or("-").to_string()),
        ("Credential", who.credential.to_string()),
        ("Client address", who.client_ip.clone()),
        ("Connected from", who.peer.clone()),
        ("Scheme", who.scheme.to_string()),
        ("HTTP version", who.http_version.clone()),
        ("Host", who.host.unwrap_or("-").to_string()),
        ("Path", who.path.to_string()),
        ("Route", who.route.to_string()),
        ("Realm", who.realm.to_string()),
    ];
    let mut table = String::new();
    for (k, v) in rows {
        table.push_str(&format!(
            "<tr><th scope=\"row\">{}</th><td>{}</td></tr>\n",
            escape(k),
            escape(&v)
        ));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>fedgate: who am I</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2rem auto;max-width:40rem;padding:0 1rem}}\
         th{{text-align:left;padding:.3rem 1rem .3rem 0;color:#444}}td{{font-family:ui-monospace,monospace}}</style>\
         </head><body><h1>Who am I</h1><p>What fedgate established about this request.</p>\
         <table>\n{table}</table></body></html>\n"
    )
}
