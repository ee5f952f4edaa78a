//! The proxy core through real sockets: listeners and protocols, streaming,
//! header hygiene, upstream failures, WebSocket, connection limits and
//! graceful shutdown.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::{self, empty, Generated, Proto};
use crate::support::upstream::{self, parse_echo};
use crate::support::{Client, Fedgate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_over_plain_and_tls_with_http1_and_http2() {
    let fg = Fedgate::builder().tls().route("/whoami", "builtin:whoami", "").start();
    let tls = fg.tls.expect("tls listener");
    let cert = fg.cert_path();
    assert!(
        cert.exists(),
        "self-signed certificate generated into the configured path"
    );
    assert!(!fg.events("no TLS certificate configured: generated a self-signed one for localhost; replace it with a real certificate for production").is_empty());

    for (mut client, want_version, want_scheme) in [
        (Client::plain(fg.plain, Proto::H1).await, "HTTP/1.1", "http"),
        (Client::plain(fg.plain, Proto::H2).await, "HTTP/2.0", "http"),
        (Client::tls(tls, &cert, Proto::H1).await, "HTTP/1.1", "https"),
        (Client::tls(tls, &cert, Proto::H2).await, "HTTP/2.0", "https"),
    ] {
        let (status, headers, body) = client.get("/whoami").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["http_version"], want_version);
        assert_eq!(v["scheme"], want_scheme);
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert_eq!(v["route"], "/whoami");
        assert_eq!(v["authenticated"], false);
        // A second request on the same connection: keep-alive works.
        let (status, _, _) = client.get("/whoami?format=html").await;
        assert_eq!(status, StatusCode::OK);
    }

    let mut client = Client::plain(fg.plain, Proto::H1).await;
    let req = Request::get("/whoami")
        .header("accept", "text/html")
        .body(empty())
        .unwrap();
    let resp = client.send(req).await.unwrap();
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let html = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&html).contains("<table>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_with_keep_alive_over_both_protocols_and_logs_each_request() {
    let up = upstream::echo().await;
    let fg = Fedgate::builder().tls().route("/", &up.url(), "").start();
    let tls = fg.tls.unwrap();
    let mut h2 = Client::tls(tls, &fg.cert_path(), Proto::H2).await;
    let mut h1 = Client::plain(fg.plain, Proto::H1).await;
    for i in 0..3 {
        for client in [&mut h1, &mut h2] {
            let (status, _, body) = client
                .get(&format!("/Microsoft-Server-ActiveSync?Cmd=Sync&i={i}"))
                .await;
            assert_eq!(status, StatusCode::OK);
            let echo = parse_echo(&body);
            assert_eq!(echo["uri"], format!("/Microsoft-Server-ActiveSync?Cmd=Sync&i={i}"));
            // HTTP/2 from the client, HTTP/1.1 to the upstream.
            assert_eq!(echo["version"], "HTTP/1.1");
        }
    }
    let access = fg.wait_log(Duration::from_secs(5), |v| {
        v["message"] == "request" && v["path"] == "/Microsoft-Server-ActiveSync" && v["version"] == "HTTP/2.0"
    });
    assert_eq!(access["status"], 200);
    assert_eq!(access["method"], "GET");
    assert_eq!(access["route"], "/");
    assert_eq!(access["upstream"], format!("{}/", up.url()));
    assert!(access["bytes"].as_u64().unwrap() > 0);
    assert!(access["duration_ms"].as_f64().is_some());
    assert_eq!(access["complete"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let up = upstream::echo().await;
    let fg = Fedgate::builder()
        .route("/", &up.url(), "identity_header = \"X-Remote-User\"")
        .start();
    let mut client = Client::plain(fg.plain, Proto::H1).await;
    let req = Request::get("/echo")
        .header(header::HOST, "mail.example.com")
        .header(header::CONNECTION, "keep-alive, X-Client-Hop")
        .header("x-client-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example.com")
        .header("forwarded", "for=6.6.6.6")
        .header("x-remote-user", "admin@corp.example.com")
        .header("x_remote_user", "admin@corp.example.com")
        .header("x-end-to-end", "kept")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(empty())
        .unwrap();
    let resp = client.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The upstream's own hop-by-hop headers do not reach the client.
    assert!(resp.headers().get("x-upstream-hop").is_none());
    assert!(resp.headers().get("keep-alive").is_none());
    assert_eq!(resp.headers()[header::VIA], "1.1 fedgate");
    let echo = parse_echo(&resp.into_body().collect().await.unwrap().to_bytes());
    let h = &echo["headers"];
    for gone in [
        "x-client-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "forwarded",
        "x-remote-user",
        "x_remote_user",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "mail.example.com");
    assert_eq!(h["host"][0], "mail.example.com");
    assert_eq!(h["via"][0], "1.1 fedgate");
    assert_eq!(h["x-end-to-end"][0], "kept");
    // A pass-through route (realm "none") leaves authentication to the upstream.
    assert_eq!(h["authorization"][0], "Basic dXNlcjpwYXNz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_of_a_trusted_proxy_are_believed() {
    let up = upstream::echo().await;
    let fg = Fedgate::builder()
        .server("trusted_proxies = [\"127.0.0.0/8\"]")
        .route("/", &up.url(), "preserve_host = false")
        .route("/whoami", "builtin:whoami", "")
        .start();
    let mut client = Client::plain(fg.plain, Proto::H1).await;
    let req = Request::get("/echo")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "mail.example.com")
        .body(empty())
        .unwrap();
    let resp = client.send(req).await.unwrap();
    let echo = parse_echo(&resp.into_body().collect().await.unwrap().to_bytes());
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "https");
    assert_eq!(h["x-forwarded-host"][0], "mail.example.com");
    assert_eq!(
        h["host"][0],
        up.addr.to_string(),
        "preserve_host = false sends the upstream's authority"
    );

    let req = Request::get("/whoami")
        .header("x-forwarded-for", "203.0.113.9")
        .body(empty())
        .unwrap();
    let body = client
        .send(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let who: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(who["client_ip"], "203.0.113.9");

    // Entries with a port, as some load balancers write them.
    for (xff, want) in [
        ("203.0.113.9:50312", "203.0.113.9"),
        ("[2001:db8::9]:50312", "2001:db8::9"),
        ("[2001:db8::9], 127.0.0.1:8443", "2001:db8::9"),
    ] {
        let req = Request::get("/whoami")
            .header("x-forwarded-for", xff)
            .body(empty())
            .unwrap();
        let body = client
            .send(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let who: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(who["client_ip"], want, "{xff}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_and_dead_upstream_is_502() {
    let dead = upstream::dead_addr().await;
    let fg = Fedgate::builder().route("/mail", &format!("http://{dead}"), "").start();
    let (status, _, body) = client::get(fg.plain, "/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!body.is_empty());
    let (status, headers, body) = client::get(fg.plain, "/mail/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert!(body.len() < 200, "short body");
    assert!(
        !String::from_utf8_lossy(&body).contains(&dead.to_string()),
        "no internals in the body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504() {
    let up = upstream::serve(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(empty())
    })
    .await;
    let fg = Fedgate::builder()
        .route("/", &up.url(), "upstream_timeout = \"500ms\"")
        .start();
    let started = Instant::now();
    let (status, _, _) = client::get(fg.plain, "/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_response_reaches_the_client_before_the_upstream_finishes() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let up = upstream::serve(move |_req| {
        let mut release = release_rx.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"first chunk\n")).await.ok();
                let _ = release.wait_for(|r| *r).await;
                tx.send(Bytes::from_static(b"second chunk\n")).await.ok();
            });
            Response::new(body)
        }
    })
    .await;
    let fg = Fedgate::builder().tls().route("/", &up.url(), "").start();
    for proto in [Proto::H1, Proto::H2] {
        release_tx.send_replace(false);
        let mut client = Client::tls(fg.tls.unwrap(), &fg.cert_path(), proto).await;
        let resp = client
            .send(Request::get("/stream").body(empty()).unwrap())
            .await
            .unwrap();
        let mut body = resp.into_body();
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("first chunk arrives while the upstream is still busy")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "first chunk\n");
        release_tx.send_replace(true);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "second chunk\n");
    }
}

/// A response body fed from a channel: the upstream decides when each chunk goes.
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, client::TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, client::BoxError>(http_body::Frame::data(b)), rx))
    });
    (
        tx,
        http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(stream)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_and_download_stream_in_bounded_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let up = upstream::serve(|req: Request<Incoming>| async move {
        if req.uri().path() == "/download" {
            return Response::new(Generated::boxed(SIZE));
        }
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map(|d| d.len() as u64).unwrap_or(0);
        }
        Response::new(client::full(n.to_string()))
    })
    .await;
    let fg = Fedgate::builder().tls().route("/", &up.url(), "").start();
    let baseline = fg.peak_rss_kib();

    let mut client = Client::plain(fg.plain, Proto::H1).await;
    let req = Request::put("/upload").body(Generated::boxed(SIZE)).unwrap();
    let resp = client.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, SIZE.to_string());

    let mut client = Client::tls(fg.tls.unwrap(), &fg.cert_path(), Proto::H2).await;
    let resp = client
        .send(Request::get("/download").body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        n += frame.unwrap().data_ref().map(|d| d.len() as u64).unwrap_or(0);
    }
    assert_eq!(n, SIZE);

    let peak = fg.peak_rss_kib();
    eprintln!("fedgate peak RSS: {baseline} KiB at start, {peak} KiB after 2 x 200 MiB");
    assert!(
        peak < 100 * 1024,
        "peak resident memory {peak} KiB is not under 100 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_is_tunnelled() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    // The upstream: a WebSocket echo server on its own listener.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let fg = Fedgate::builder()
        .route("/ws", &format!("http://{ws_addr}"), "")
        .start();
    let stream = TcpStream::connect(fg.plain).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/ws/echo", fg.plain), stream)
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..5 {
        ws.send(Message::Text(format!("hello {i}"))).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::Text(format!("hello {i}")));
    }
    ws.send(Message::Binary(vec![0, 1, 2, 255])).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back, Message::Binary(vec![0, 1, 2, 255]));
    ws.close(None).await.unwrap();
    server.abort();
}

/// Reads until the peer closes; returns how long that took, or None if it
/// stayed open past `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_after_the_header_timeout() {
    let fg = Fedgate::builder()
        .server("header_read_timeout = \"1s\"")
        .server("idle_timeout = \"30s\"")
        .route("/whoami", "builtin:whoami", "")
        .start();

    // A client that trickles its request head, one header line at a time.
    let mut slow = TcpStream::connect(fg.plain).await.unwrap();
    slow.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let trickle = async {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).await.is_err() {
                break;
            }
        }
    };
    let started = Instant::now();
    trickle.await;
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "connection still open after {:?}",
        started.elapsed()
    );

    // A connection that sends nothing at all is closed too.
    let mut silent = TcpStream::connect(fg.plain).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("silent connection closed");
    assert!(took >= Duration::from_millis(900), "closed too early: {took:?}");

    // A kept-alive connection is not cut by the header clock while idle
    // between requests (idle_timeout is 30 s here)...
    let mut client = TcpStream::connect(fg.plain).await.unwrap();
    client
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = client.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "kept-alive connection was closed early"
    );

    // ...and an oversized head is refused.
    let mut big = TcpStream::connect(fg.plain).await.unwrap();
    let huge = format!(
        "GET /whoami HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let _ = big.write_all(huge.as_bytes()).await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut resp)).await;
    assert!(!resp.starts_with(b"HTTP/1.1 200"), "oversized head was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let fg = Fedgate::builder()
        .server("header_read_timeout = \"5s\"")
        .server("idle_timeout = \"1s\"")
        .route("/whoami", "builtin:whoami", "")
        .start();
    let mut client = TcpStream::connect(fg.plain).await.unwrap();
    client
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let took = closed_within(&mut client, Duration::from_secs(10))
        .await
        .expect("idle connection closed");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{took:?}\n{}",
        fg.raw_logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_outlives_the_idle_and_header_clocks() {
    let up = upstream::serve(|_req| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Response::new(client::full("pong"))
    })
    .await;
    let fg = Fedgate::builder()
        .server("header_read_timeout = \"1s\"")
        .server("idle_timeout = \"1s\"")
        .route("/", &up.url(), "")
        .start();
    let (status, _, body) = client::get(fg.plain, "/Microsoft-Server-ActiveSync?Cmd=Ping").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_in_flight_requests() {
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<()>();
    let up = upstream::serve(move |_req| {
        let _ = arrived.send(());
        async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Response::new(client::full("finished"))
        }
    })
    .await;
    let mut fg = Fedgate::builder()
        .admin()
        .server("shutdown_grace = \"10s\"")
        .route("/", &up.url(), "")
        .start();
    let addr = fg.plain;
    let in_flight = tokio::spawn(async move { client::get(addr, "/slow").await });
    tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .expect("the request reached the upstream");
    fg.signal("TERM");
    fg.wait_log(Duration::from_secs(5), |v| v["message"] == "draining");
    // No new connections once draining.
    let refused = tokio::time::timeout(Duration::from_secs(2), async {
        match TcpStream::connect(addr).await {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
                let mut buf = [0u8; 64];
                matches!(s.read(&mut buf).await, Ok(0) | Err(_))
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(refused, "a new connection was served while draining");
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "finished");
    let exit = tokio::task::spawn_blocking(move || {
        let status = fg.wait_exit(Duration::from_secs(10));
        (status, fg)
    })
    .await
    .unwrap();
    assert!(exit.0.expect("fedgate exited").success(), "{}", exit.1.raw_logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_the_drain() {
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<()>();
    let up = upstream::serve(move |_req| {
        let _ = arrived.send(());
        async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Response::new(empty())
        }
    })
    .await;
    let mut fg = Fedgate::builder()
        .server("shutdown_grace = \"1s\"")
        .route("/", &up.url(), "")
        .start();
    let addr = fg.plain;
    let _held = tokio::spawn(async move { client::get(addr, "/held").await });
    tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .expect("the request reached the upstream");
    let started = Instant::now();
    fg.signal("INT");
    let status = tokio::task::spawn_blocking(move || fg.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("fedgate exited within the grace period");
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_reports_health_readiness_and_metrics() {
    let fg = Fedgate::builder()
        .admin()
        .route("/whoami", "builtin:whoami", "")
        .start();
    let admin = fg.admin.unwrap();
    client::get(fg.plain, "/whoami").await;
    let (status, _, body) = client::get(admin, "/healthz").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
    let (status, _, _) = client::get(admin, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = client::get(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("fedgate_requests_total{route=\"/whoami\",status=\"2xx\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_extra_clients_back() {
    let fg = Fedgate::builder()
        .server("max_connections = 2")
        .server("idle_timeout = \"30s\"")
        .route("/whoami", "builtin:whoami", "")
        .start();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::plain(fg.plain, Proto::H1).await;
        assert_eq!(c.get("/whoami").await.0, StatusCode::OK);
        held.push(c);
    }
    // The third connection is not served while the first two are open...
    let addr = fg.plain;
    let third = tokio::spawn(async move { client::get(addr, "/whoami").await.0 });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "third connection served beyond max_connections");
    // ...and is served once one of them closes.
    held.pop();
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_base_path_prefixes_the_request_path() {
    let up = upstream::echo().await;
    let fg = Fedgate::builder()
        .route("/mail", &format!("{}/backend/", up.url()), "")
        .route("/", &up.url(), "")
        .start();
    let (_, _, body) = client::get(fg.plain, "/mail/inbox?page=2").await;
    assert_eq!(parse_echo(&body)["uri"], "/backend/mail/inbox?page=2");
    let (_, _, body) = client::get(fg.plain, "/other?x=1").await;
    assert_eq!(parse_echo(&body)["uri"], "/other?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_against_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (up, ca) = upstream::serve_tls(dir.path(), |req: Request<Incoming>| async move {
        Response::new(client::full(format!("tls upstream saw {}", req.uri())))
    })
    .await;
    let url = format!("https://localhost:{}", up.addr.port());
    let fg = Fedgate::builder()
        .route("/trusted", &url, &format!("upstream_ca_file = \"{}\"", ca.display()))
        .route("/untrusted", &url, "")
        .start();
    for i in 0..3 {
        let (status, _, body) = client::get(fg.plain, &format!("/trusted/{i}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("tls upstream saw /trusted/{i}"));
    }
    // Without the CA file the self-signed upstream is not trusted.
    let (status, _, _) = client::get(fg.plain, "/untrusted").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_closed_by_the_upstream_are_not_reused() {
    let up = upstream::serve(|_req| async {
        Response::builder()
            .header("connection", "close")
            .body(client::full("bye"))
            .unwrap()
    })
    .await;
    let fg = Fedgate::builder().route("/", &up.url(), "").start();
    let mut client = Client::plain(fg.plain, Proto::H1).await;
    for _ in 0..10 {
        let (status, _, body) = client.get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "bye");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = upstream::serve(|req: Request<Incoming>| async move {
        // A body with a length, an empty one, and a chunked one.
        match req.uri().path() {
            "/empty" => Response::new(empty()),
            "/chunked" => {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    tx.send(Bytes::from_static(b"a")).await.ok();
                    tx.send(Bytes::from_static(b"b")).await.ok();
                });
                Response::new(body)
            }
            _ => Response::new(client::full("ok")),
        }
    })
    .await;
    let fg = Fedgate::builder().route("/", &up.url(), "").start();
    let mut client = Client::plain(fg.plain, Proto::H1).await;
    for i in 0..30 {
        let path = ["/sized", "/empty", "/chunked"][i % 3];
        let (status, _, _) = client.get(path).await;
        assert_eq!(status, StatusCode::OK);
    }
    let opened = up.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        opened <= 2,
        "30 requests on one client connection opened {opened} upstream connections"
    );
}
