//! The canonical request under attack: path spellings that once walked past
//! an authenticating route, invalid hosts, upgrades that are not WebSocket,
//! request smuggling shapes and identity-header spellings, an HTTP/2
//! connection that never sends a request, a broken chunked body, and the
//! per-route opt-ins (`case_sensitive`, `allow_encoded_slashes`).
//!
//! Requests go over raw sockets (HTTP/1.1 bytes as written, HTTP/2 frames
//! built by hand) so nothing on the client side normalises them first.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::signin::SignIn;
use crate::support::client::{self, basic, full, Proto};
use crate::support::upstream::{self, parse_echo, Upstream};
use crate::support::{Client, Fedgate};

const ACTIVESYNC: &str = "/Microsoft-Server-ActiveSync";
const PASSWORD: &str = "Correct horse 7";

/// An upstream that answers 200 and remembers the target and headers of
/// every request it was sent.
async fn recording() -> (Upstream, Arc<Mutex<Vec<(String, http::HeaderMap)>>>) {
    let seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>> = Arc::default();
    let log = Arc::clone(&seen);
    let up = upstream::serve(move |req: Request<Incoming>| {
        let log = Arc::clone(&log);
        async move {
            log.lock().unwrap().push((req.uri().to_string(), req.headers().clone()));
            Response::new(full("pass-through\n"))
        }
    })
    .await;
    (up, seen)
}

/// Writes `bytes` on a fresh connection and reads until the server closes
/// (or 5 s pass); returns what came back.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status of the first response in `text`, 0 if there is none.
fn status(text: &str) -> u16 {
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn get_raw(addr: SocketAddr, target: &str, host: &str) -> u16 {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    status(&raw(addr, req.as_bytes()).await)
}

/// Raw HTTP/2 with prior knowledge: each request's header fields are
/// written as HPACK literals, exactly as given.
pub(super) mod h2raw {
    use super::*;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
        assert!(name.len() < 127 && value.len() < 127);
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }

    /// HEADERS (END_STREAM | END_HEADERS) for a request with these fields,
    /// as HPACK literals without indexing.
    pub fn headers(stream: u32, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            literal(&mut block, name, value);
        }
        frame(1, 0x5, stream, &block)
    }

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub fn settings() -> Vec<u8> {
        frame(4, 0, 0, &[])
    }

    /// What became of stream 1.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Outcome {
        Status(u16),
        /// Any other status, still encoded.
        Other,
        Reset,
        Closed,
    }

    /// One GET with these fields on stream 1 of a fresh connection.
    pub async fn request(addr: SocketAddr, fields: &[(&str, &str)]) -> Outcome {
        let mut out = PREFACE.to_vec();
        out.extend(settings());
        out.extend(headers(1, fields));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&out).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut head = [0u8; 9];
            match tokio::time::timeout_at(deadline.into(), s.read_exact(&mut head)).await {
                Ok(Ok(_)) => {}
                _ => return Outcome::Closed,
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return Outcome::Closed;
            }
            match (head[3], stream) {
                (4, 0) if head[4] & 1 == 0 => {
                    let _ = s.write_all(&frame(4, 1, 0, &[])).await;
                }
                // HEADERS: hyper sends `:status` first, from the static
                // table when it is there (index 8 = 200 ... 14 = 500).
                (1, 1) => {
                    let first = payload.first().copied().unwrap_or(0);
                    return match first {
                        0x88 => Outcome::Status(200),
                        0x8c => Outcome::Status(400),
                        0x8d => Outcome::Status(404),
                        _ => Outcome::Other,
                    };
                }
                (3, 1) => return Outcome::Reset,
                (7, _) => return Outcome::Closed,
                _ => {}
            }
        }
    }

    pub fn get(authority: &str, path: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "GET".into()),
            (":scheme", "http".into()),
            (":path", path.into()),
            (":authority", authority.into()),
        ]
    }

    pub async fn send(addr: SocketAddr, fields: &[(&'static str, String)]) -> Outcome {
        let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(addr, &refs).await
    }
}

/// Every spelling of the protected path reaches the authenticating route
/// (401) or is refused (400); none reaches the pass-through route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_spellings_never_reach_the_pass_through_route() {
    let (protected, protected_seen) = recording().await;
    let (open, open_seen) = recording().await;
    let fg = Fedgate::builder()
        .cloud_route(ACTIVESYNC, &protected.url(), "")
        .route("/", &open.url(), "")
        .start();
    let suffixes = [
        ";jsessionid=x",
        ";/x",
        "%2Fx",
        "\\x",
        "%20",
        ".",
        "%00",
        "::$DATA",
        "%3Bx",
        "/..;/x",
        "%C0%AFx",
        "%80",
    ];
    let mut spellings: Vec<String> = [
        "/public/../Microsoft-Server-ActiveSync",
        "//Microsoft-Server-ActiveSync",
        "/./Microsoft-Server-ActiveSync",
        "/microsoft-server-activesync",
        "/MICROSOFT-SERVER-ACTIVESYNC/x",
        "/%4Dicrosoft-Server-ActiveSync",
        "/Microsoft%2DServer-ActiveSync",
        "/%2e/Microsoft-Server-ActiveSync",
        "/x/..%2FMicrosoft-Server-ActiveSync",
        "/Microsoft-Server-ActiveSync%2e",
        // Overlong UTF-8 for `..` and `/`, which a lenient decoder reads.
        "/x/%C0%AE%C0%AE/Microsoft-Server-ActiveSync",
        "/x%C0%AF%C0%AE%C0%AE%C0%AFMicrosoft-Server-ActiveSync",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    spellings.extend(suffixes.iter().map(|s| format!("{ACTIVESYNC}{s}")));
    for spelling in &spellings {
        let got = get_raw(fg.plain, spelling, "mail.example.com").await;
        assert!(got == 400 || got == 401, "{spelling}: {got}");
    }
    assert!(
        open_seen.lock().unwrap().is_empty(),
        "reached the pass-through route: {:?}",
        open_seen.lock().unwrap()
    );
    assert!(protected_seen.lock().unwrap().is_empty());

    // The same over HTTP/2.
    for spelling in &spellings {
        if spelling.contains('\\') || spelling.contains("%00") {
            continue; // not a valid :path at all
        }
        let got = h2raw::send(fg.plain, &h2raw::get("mail.example.com", spelling)).await;
        assert!(
            matches!(
                got,
                h2raw::Outcome::Status(400) | h2raw::Outcome::Other | h2raw::Outcome::Reset
            ),
            "{spelling} over HTTP/2: {got:?}"
        );
    }
    assert!(open_seen.lock().unwrap().is_empty(), "{:?}", open_seen.lock().unwrap());

    // What is not protected passes, and goes upstream in canonical form.
    assert_eq!(get_raw(fg.plain, "/a/./b/../%63?q=%2e", "mail.example.com").await, 200);
    assert_eq!(
        h2raw::send(fg.plain, &h2raw::get("mail.example.com", "/h2//x")).await,
        h2raw::Outcome::Status(200)
    );
    let seen = open_seen.lock().unwrap();
    let targets: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(targets, ["/a/c?q=%2e", "/h2/x"]);
}

const BAD_HOSTS: [&str; 9] = [
    "mail.example.com:abc",
    "mail.example.com:443:443",
    "user@mail.example.com",
    "mail.example.com@evil",
    "mail.example.com/",
    "mail.example.com\\",
    "mail.example.com, other",
    "mail.example.com:+443",
    "mail.example.com :443",
];

/// An invalid Host skips no host-scoped route: it is refused, as Host, as
/// an absolute-form authority and as HTTP/2 `:authority`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_hosts_are_refused() {
    let (protected, _) = recording().await;
    let (open, open_seen) = recording().await;
    let fg = Fedgate::builder()
        .cloud_route("/", &protected.url(), "host = \"mail.example.com\"")
        .route("/", &open.url(), "")
        .start();
    for host in BAD_HOSTS {
        assert_eq!(get_raw(fg.plain, "/x", host).await, 400, "Host: {host}");
        let absolute = format!("GET http://{host}/x HTTP/1.1\r\nHost: mail.example.com\r\nConnection: close\r\n\r\n");
        // Inside a target, `/` ends the authority: `http://mail.example.com//x`
        // is a valid request for the protected host.
        let got = status(&raw(fg.plain, absolute.as_bytes()).await);
        assert!(got == 400 || got == 401, "target http://{host}/x: {got}");
        let got = h2raw::send(fg.plain, &h2raw::get(host, "/x")).await;
        assert!(
            matches!(
                got,
                h2raw::Outcome::Status(400) | h2raw::Outcome::Reset | h2raw::Outcome::Closed
            ),
            ":authority {host}: {got:?}"
        );
    }
    let two = b"GET /x HTTP/1.1\r\nHost: other.example.com\r\nHost: mail.example.com\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&raw(fg.plain, two).await), 400, "two Host headers");
    let none = b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&raw(fg.plain, none).await), 400, "HTTP/1.1 without Host");
    let differ = b"GET http://other.example.com/x HTTP/1.1\r\nHost: mail.example.com\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&raw(fg.plain, differ).await), 400, "target and Host disagree");
    let mut both = h2raw::get("other.example.com", "/x");
    both.push(("host", "mail.example.com".into()));
    assert_eq!(
        h2raw::send(fg.plain, &both).await,
        h2raw::Outcome::Status(400),
        ":authority and host disagree"
    );
    assert!(open_seen.lock().unwrap().is_empty(), "{:?}", open_seen.lock().unwrap());

    // Valid spellings of the protected host reach its route (401); another
    // host passes, with its canonical value forwarded.
    for host in ["MAIL.example.com", "mail.example.com.", "mail.example.com:8080"] {
        assert_eq!(get_raw(fg.plain, "/x", host).await, 401, "Host: {host}");
    }
    assert_eq!(get_raw(fg.plain, "/x", "Other.Example.com.:8080").await, 200);
    let seen = open_seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1["host"], "other.example.com:8080");
    assert_eq!(seen[0].1["x-forwarded-host"], "other.example.com:8080");
}

/// `CONNECT` is no forward proxy's, and `OPTIONS *` is answered by fedgate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_and_options_star_is_not_routed() {
    let (open, open_seen) = recording().await;
    let fg = Fedgate::builder().route("/", &open.url(), "").start();
    let connect = b"CONNECT mail.example.com:443 HTTP/1.1\r\nHost: mail.example.com:443\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&raw(fg.plain, connect).await), 400);
    let star = b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&raw(fg.plain, star).await), 200);
    assert!(open_seen.lock().unwrap().is_empty());
}

/// A raw upstream that answers every request head with 101 and then
/// records every byte it receives on every connection.
async fn switching_upstream() -> (SocketAddr, Arc<Mutex<Vec<u8>>>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bytes: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = Arc::clone(&bytes);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                let mut answered = false;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    head.extend_from_slice(&buf[..n]);
                    if !answered && head.windows(4).any(|w| w == b"\r\n\r\n") {
                        answered = true;
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
                            )
                            .await;
                    }
                }
            });
        }
    });
    (addr, bytes, task)
}

/// Reads one response head from `s` (5 s at most).
async fn read_head(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Only WebSocket is tunnelled: `h2c` or `foo/1` with an upstream that
/// switches anyway gets no tunnel, so later requests on the connection are
/// still requests (their `X-Remote-User` removed), never raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_are_tunnelled() {
    let (up, bytes, task) = switching_upstream().await;
    let fg = Fedgate::builder().route("/", &format!("http://{up}"), "").start();
    for (upgrade, extra) in [("h2c", "HTTP2-Settings: AAMAAABkAAQAAP__\r\n"), ("foo/1", "")] {
        bytes.lock().unwrap().clear();
        let mut s = TcpStream::connect(fg.plain).await.unwrap();
        let first = format!(
            "GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\n{extra}\r\n"
        );
        s.write_all(first.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert_eq!(status(&head), 502, "Upgrade: {upgrade}: {head}");
        s.write_all(b"GET /b HTTP/1.1\r\nHost: a\r\nX-Remote-User: mallory\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert_eq!(status(&head), 502, "second request on the connection: {head}");
        let seen = String::from_utf8_lossy(&bytes.lock().unwrap()).to_ascii_lowercase();
        assert!(!seen.contains("mallory"), "Upgrade: {upgrade}: the upstream saw {seen}");
        assert!(!seen.contains("upgrade: "), "Upgrade: {upgrade}: forwarded: {seen}");
        assert!(
            !seen.contains("http2-settings"),
            "Upgrade: {upgrade}: forwarded: {seen}"
        );
        assert!(seen.contains("get /b http/1.1"), "{seen}");
    }
    task.abort();
}

/// Request smuggling shapes that hyper already refuses or frames safely:
/// the request hidden in each body never reaches the upstream as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_never_smuggle() {
    let (open, open_seen) = recording().await;
    let fg = Fedgate::builder().route("/", &open.url(), "").start();
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let chunked_hidden = format!("0\r\n\r\n{hidden}");
    let n = chunked_hidden.len();
    let m = hidden.len();
    let shapes = [
        format!("POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_hidden}"),
        format!("POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{chunked_hidden}"),
        format!("POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: {m}\r\n\r\n{hidden}"),
        format!("POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: {m}\r\nContent-Length: {m}\r\n\r\n{hidden}"),
        format!("POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n{chunked_hidden}"),
        format!("POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n{chunked_hidden}"),
        format!("POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n{chunked_hidden}"),
        format!("POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\nContent-Length: {n}\r\n\r\n{chunked_hidden}"),
        format!("POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n{chunked_hidden}"),
        format!("POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: {m}\r\nX-Fold: a\r\n Transfer-Encoding: chunked\r\n\r\n{hidden}"),
        format!("POST /s HTTP/1.1\r\nHost: a\r\nX-A: 1\rContent-Length: 0\r\nContent-Length: {m}\r\n\r\n{hidden}"),
        format!("POST /s HTTP/1.1\nHost: a\nContent-Length: {m}\n\n{hidden}"),
        "GET /s HTTP/1.1\r\nHost: a\r\nX-A: 1\r\rGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
    ];
    for shape in &shapes {
        let mut bytes = shape.clone().into_bytes();
        // A last request closes the connection, so the read below ends.
        bytes.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let answer = raw(fg.plain, &bytes).await;
        assert!(status(&answer) != 0, "no answer to {shape:?}");
        let seen = open_seen.lock().unwrap();
        assert!(
            seen.iter().all(|(t, _)| !t.starts_with("/smuggled")),
            "{shape:?} smuggled a request: {:?}",
            seen.iter().map(|(t, _)| t).collect::<Vec<_>>()
        );
    }
}

/// However the client spells the identity header, over HTTP/1.1 or
/// HTTP/2, only fedgate's value reaches the upstream of a signed-in route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_header_spellings_never_reach_the_upstream() {
    const ALICE: &str = "alice@contoso.example";
    let up = upstream::echo().await;
    let fg = Fedgate::builder().cloud_route("/echo", &up.url(), "").start();
    fg.admin().add_user(ALICE, "disabled", Some(PASSWORD));
    SignIn::new(fg.plain, ALICE, PASSWORD)
        .path("/echo")
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    let spellings = [
        "X-Remote-User",
        "x-remote-user",
        "X_Remote_User",
        "X-REMOTE-USER",
        "x_remote-user",
    ];
    for proto in [Proto::H1, Proto::H2] {
        for name in spellings {
            let mut c = Client::plain(fg.plain, proto).await;
            let req = Request::get("/echo")
                .header("authorization", basic(ALICE, PASSWORD))
                .header(name, HeaderValue::from_static("mallory@contoso.example"))
                .body(client::empty())
                .unwrap();
            let resp = c.send(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            let echo = parse_echo(&body);
            assert_eq!(
                echo["headers"]["x-remote-user"],
                serde_json::json!([ALICE]),
                "{name} {proto:?}"
            );
            assert!(
                !body.windows(7).any(|w| w == b"mallory"),
                "{name} over {proto:?}: {echo}"
            );
        }
    }
    // Raw HTTP/1.1 with the underscore spelling, which hyper's client
    // would send as it is anyway.
    let answer = raw(
        fg.plain,
        format!(
            "GET /echo HTTP/1.1\r\nHost: a\r\nAuthorization: {}\r\nX_Remote_User: mallory\r\nConnection: close\r\n\r\n",
            basic(ALICE, PASSWORD).to_str().unwrap()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(!answer.contains("mallory"), "{answer}");
}

/// An HTTP/2 connection that sends the preface and settings but no request
/// is closed after `server.header_read_timeout`, like an HTTP/1.1 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_without_a_request_meet_the_header_timeout() {
    let fg = Fedgate::builder()
        .server("header_read_timeout = \"1s\"")
        .server("idle_timeout = \"60s\"")
        .route("/whoami", "builtin:whoami", "")
        .start();
    for with_settings in [true, false] {
        let mut s = TcpStream::connect(fg.plain).await.unwrap();
        let started = Instant::now();
        s.write_all(h2raw::PREFACE).await.unwrap();
        if with_settings {
            s.write_all(&h2raw::settings()).await.unwrap();
        }
        let mut buf = [0u8; 4096];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Err(_) => break None,
                Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
                Ok(Ok(_)) => continue,
            }
        };
        let took = closed.expect("an HTTP/2 connection without a request stays open");
        assert!(took >= Duration::from_millis(900), "closed too early: {took:?}");
        assert!(took < Duration::from_secs(5), "closed late: {took:?}");
    }
    // A connection that does send a request is not cut by the header clock.
    let mut c = Client::plain(fg.plain, Proto::H2).await;
    assert_eq!(c.get("/whoami").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(c.get("/whoami").await.0, StatusCode::OK);
}

/// A chunked upload that breaks is the client's fault: 400, not 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_400() {
    let up = upstream::echo().await;
    let fg = Fedgate::builder().route("/", &up.url(), "").start();
    let bad =
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n";
    let answer = raw(fg.plain, bad).await;
    assert_eq!(status(&answer), 400, "{answer}");
    let good = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(status(&raw(fg.plain, good).await), 200);
}

/// The opt-ins: a case-sensitive route matches its own case only, and
/// encoded slashes pass on a route that allows them, nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_sensitive_and_encoded_slash_routes() {
    let (open, open_seen) = recording().await;
    let (files, files_seen) = recording().await;
    let fg = Fedgate::builder()
        .cloud_route("/Secret", &open.url(), "case_sensitive = true")
        .route(
            "/files",
            &files.url(),
            "allow_encoded_slashes = true\nallow_path_parameters = true",
        )
        .route("/", &open.url(), "")
        .start();
    assert_eq!(get_raw(fg.plain, "/Secret/x", "a").await, 401);
    assert_eq!(get_raw(fg.plain, "/secret/x", "a").await, 200);
    assert_eq!(get_raw(fg.plain, "/files/a%2fb;v=1", "a").await, 200);
    assert_eq!(get_raw(fg.plain, "/other/a%2Fb", "a").await, 400);
    assert_eq!(get_raw(fg.plain, "/other/a;v=1", "a").await, 400);
    assert_eq!(get_raw(fg.plain, "/files/..%2F..%2Fetc", "a").await, 400);
    let files_targets: Vec<String> = files_seen.lock().unwrap().iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(files_targets, ["/files/a%2Fb;v=1"]);
    let open_targets: Vec<String> = open_seen.lock().unwrap().iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(open_targets, ["/secret/x"]);
}

/// A route path that is not canonical is a configuration error naming it.
#[test]
fn route_paths_must_be_canonical() {
    for (path, want) in [
        ("/a/../b", "write \"/b\""),
        ("/a//b", "write \"/a/b\""),
        ("/a;x", "\";\""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let text = Fedgate::builder()
            .route(path, "http://127.0.0.1:1", "")
            .config_text(dir.path());
        let config = dir.path().join("fedgate.toml");
        std::fs::write(&config, text).unwrap();
        let (code, _, err) = crate::support::fedgate::run_cli(&["check-config", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 2, "{path}: {err}");
        assert!(err.contains("route[0].path") && err.contains(want), "{path}: {err}");
    }
}

/// Signs `upn` in on the portal's form with `ret` as the return URL and
/// returns where the portal sends the browser next.
async fn portal_sign_in_location(addr: SocketAddr, upn: &str, ret: &str) -> String {
    let page = raw(
        addr,
        b"GET /portal/sign-in HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
    )
    .await;
    let cookies: Vec<&str> = page
        .lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .filter_map(|c| c.split(';').next())
        .collect();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf field");
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf", csrf)
        .append_pair("return", ret)
        .append_pair("upn", upn)
        .append_pair("password", PASSWORD)
        .finish();
    let post = format!(
        "POST /portal/sign-in HTTP/1.1\r\nHost: a\r\nCookie: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        cookies.join("; "),
        form.len()
    );
    let answer = raw(addr, post.as_bytes()).await;
    assert_eq!(status(&answer), 303, "{answer}");
    answer
        .lines()
        .find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: ")))
        .expect("a Location")
        .trim()
        .to_owned()
}

/// A portal return URL that is not canonical, or not under a
/// `browser = "mfa"` route, does not leave the sign-in routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_return_urls_must_be_canonical_and_under_an_mfa_route() {
    const ALICE: &str = "alice@contoso.example";
    let up = upstream::echo().await;
    let keys = tempfile::tempdir().unwrap();
    let fg = Fedgate::builder()
        .section(&format!(
            "[portal]\nenabled = true\npath = \"/portal\"\nsecret_key_file = \"{}\"\n",
            keys.path().join("portal.key").display()
        ))
        .route_in("cloud", "/app", &up.url(), "browser = \"mfa\"")
        .cloud_route("/basic", &up.url(), "")
        .route("/", &up.url(), "")
        .start();
    fg.admin().add_user(ALICE, "disabled", Some(PASSWORD));
    SignIn::new(fg.plain, ALICE, PASSWORD)
        .path("/basic")
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    for evil in [
        "/app/../other",
        "/app/./x/../../other",
        "/app/%2E%2E/other",
        "/app//../other",
        "//app/x",
        "/app;x/../other",
        "/app%2F..%2Fother",
        "/basic/x",
        "/other",
    ] {
        let to = portal_sign_in_location(fg.plain, ALICE, evil).await;
        assert_eq!(to, "/portal/security", "return={evil}");
    }
    let to = portal_sign_in_location(fg.plain, ALICE, "/APP/home?x=1").await;
    assert_eq!(to, "/APP/home?x=1", "a canonical return under the route");
}
