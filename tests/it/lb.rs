//! Two fedgate nodes on one PostgreSQL store behind haproxy, configured as
//! an operator would (round robin, health checks against `/readyz`,
//! replaying a GET that met a dead node on the other one): when one node
//! is killed mid-run, clients keep signing in, only requests caught on the
//! dead node may fail, and they fail as a server error, never as a refusal
//! or as someone else's answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::nodes::metric;
use crate::support::client::basic;
use crate::support::haproxy::{Haproxy, Stat};
use crate::support::postgres::Database;
use crate::support::Fedgate;

const ALICE: &str = "alice@contoso.example";
const BOB: &str = "bob@contoso.example";
/// Clients signing in at once, each on its own keep-alive connection to
/// the balancer, half of them as each user. At most one request per client
/// can be in flight on the node that dies, which bounds the failures.
const CLIENTS: usize = 8;
/// Bounds on each client, whatever happens to the rest of the test.
const REQUESTS_PER_CLIENT: usize = 20_000;
const CLIENT_TIME: Duration = Duration::from_secs(25);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Sign-ins through both nodes before one is killed.
const BEFORE_KILL: usize = 200;
/// Requests begun after haproxy took the dead node out, all of which must
/// sign in.
const AFTER_DOWN: usize = 300;
/// How long each stage may take on a loaded machine.
const STAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The balancer in front of `nodes`, listening on `listen`: what this test
/// holds an operator's set-up to.
fn balancer(listen: SocketAddr, nodes: &[(&str, &Fedgate)]) -> String {
    let servers: String = nodes
        .iter()
        .map(|(name, node)| {
            let admin = node.admin.expect("nodes have an admin listener");
            format!("    server {name} {} check port {}\n", node.plain, admin.port())
        })
        .collect();
    format!(
        r#"defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout check 2s
    # A request that meets a dead node (connection refused or reset, or
    # closed with no answer) is sent again, each time to another node.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend fedgate
    bind {listen}
    # fedgate trusts 127.0.0.1 to name the client (server.trusted_proxies),
    # so lockout counts per client and not per balancer.
    option forwardfor
    default_backend nodes

backend nodes
    balance roundrobin
    # Only GET and HEAD are sent again once a node may have read them; a
    # POST is retried only when it never reached a node.
    http-request disable-l7-retry unless METH_GET
    # Ready means the listeners are bound, the node is not draining and its
    # store is healthy (the admin listener's /readyz).
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server inter 100ms fall 2 rise 2
{servers}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_through_haproxy_survive_a_node_killed_mid_run() {
    let db = Database::new();
    let node = || db.node().server("trusted_proxies = [\"127.0.0.1\"]").start();
    let a = node();
    let b = node();
    let admin = a.admin();
    admin.allow_app_passwords(true);
    admin.add_user(ALICE, "enforced", None);
    admin.add_user(BOB, "enforced", None);
    let passwords = [
        (ALICE, admin.create_app_password(ALICE, "phone")),
        (BOB, admin.create_app_password(BOB, "phone")),
    ];
    let lb = Haproxy::start(|listen| balancer(listen, &[("a", &a), ("b", &b)])).await;
    // Checked and found ready, so that the down mark below comes from the
    // kill.
    lb.wait_until("both nodes pass their health checks", STAGE_TIMEOUT, |stats| {
        ["a", "b"]
            .iter()
            .all(|n| server(stats, n).get("check_status") == "L7OK")
    })
    .await;

    let run = Arc::new(Run::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (user, password) = passwords[i % passwords.len()].clone();
            tokio::spawn(client(lb.addr, user, password, Arc::clone(&run)))
        })
        .collect();

    run.wait("sign-ins through both nodes", &lb, |r| {
        r.signed_in[Phase::BothUp as usize].load(Ordering::Relaxed) >= BEFORE_KILL
    })
    .await;
    // Unless both nodes answered, killing one tests nothing.
    let stats = lb.stats().await;
    for name in ["a", "b"] {
        assert!(
            server(&stats, name).count("hrsp_2xx") > 0,
            "node {name} got no requests"
        );
    }
    run.phase.store(Phase::Killed as u8, Ordering::SeqCst);
    let killed = Instant::now();
    a.signal("KILL");
    lb.wait_until("node a marked down", STAGE_TIMEOUT, |stats| {
        server(stats, "a").get("status").starts_with("DOWN")
    })
    .await;
    let noticed = killed.elapsed();
    // Read before the phase changes, so that it counts none of the requests
    // that begin after.
    let served_by_b = metric(b.admin.unwrap(), "fedgate_requests_total").await;
    run.phase.store(Phase::MarkedDown as u8, Ordering::SeqCst);
    run.wait("requests after node a was marked down", &lb, |r| {
        r.done[Phase::MarkedDown as usize].load(Ordering::Relaxed) >= AFTER_DOWN
    })
    .await;
    run.stop.store(true, Ordering::SeqCst);
    let mut by_client = Vec::new();
    for c in clients {
        by_client.push(c.await.expect("client task"));
    }
    let stats = lb.stats().await;

    // Every answer to a request that ended before the kill, or began after
    // haproxy took the dead node out, is a sign-in; the others sign in or
    // fail as a server error, and a client has one request in flight at a
    // time, so at most one of its requests can have been on the node when
    // it died.
    let mut failures = Vec::new();
    for samples in &by_client {
        let mut failed = 0;
        for s in samples {
            match &s.outcome {
                Outcome::SignedIn => continue,
                Outcome::WrongAllow(_) => panic!("{}", s.outcome),
                Outcome::Status(status, _) if !status.is_server_error() => {
                    panic!("only server errors may happen, never {}", s.outcome)
                }
                Outcome::Status(..) | Outcome::Broken(_) => {}
            }
            assert!(
                s.ended != Phase::BothUp && s.started != Phase::MarkedDown,
                "{} (began {:?}, ended {:?}): only requests around the kill may fail;\n{}",
                s.outcome,
                s.started,
                s.ended,
                lb.output()
            );
            failed += 1;
            failures.push(s.outcome.to_string());
        }
        assert!(failed <= 1, "one client saw {failed} requests fail: {failures:#?}");
    }
    let after_down = by_client
        .iter()
        .flatten()
        .filter(|s| s.started == Phase::MarkedDown)
        .count();
    assert!(
        after_down >= AFTER_DOWN,
        "{after_down} requests after node a was marked down"
    );
    // They went to the node that is alive (each sign-in shows in its
    // request count; health checks go to the admin listener).
    let by_b = metric(b.admin.unwrap(), "fedgate_requests_total").await - served_by_b;
    assert!(
        by_b >= AFTER_DOWN as f64,
        "node b answered {by_b} requests after a was marked down"
    );
    // Requests the dead node had taken were sent again (retry-on), so in
    // practice none of them fails; the bound above is what a client may
    // rely on.
    let dead = server(&stats, "a");
    assert!(
        dead.count("wretr") >= dead.count("eresp"),
        "haproxy sent {} of the {} requests cut off on the dead node again: {failures:#?}",
        dead.count("wretr"),
        dead.count("eresp")
    );
    eprintln!(
        "{} requests; node a marked down {noticed:?} after the kill; {} failed {failures:?}; on node a \
         {} requests lost their connection unanswered, {} redispatched to b after {} retries in all",
        by_client.iter().map(Vec::len).sum::<usize>(),
        failures.len(),
        dead.count("eresp"),
        dead.count("wredis"),
        dead.count("wretr"),
    );
}

fn server<'s>(stats: &'s [Stat], name: &str) -> &'s Stat {
    stats
        .iter()
        .find(|s| s.get("pxname") == "nodes" && s.get("svname") == name)
        .unwrap_or_else(|| panic!("haproxy has no server nodes/{name}"))
}

/// Where the run stands; each request notes the stage it began and ended
/// in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    BothUp = 0,
    /// Node a is being killed, or is dead but haproxy has not noticed.
    Killed = 1,
    MarkedDown = 2,
}

impl Phase {
    fn of(n: u8) -> Phase {
        match n {
            0 => Phase::BothUp,
            1 => Phase::Killed,
            _ => Phase::MarkedDown,
        }
    }
}

#[derive(Default)]
struct Run {
    phase: AtomicU8,
    stop: AtomicBool,
    /// Sign-ins and finished requests, by the phase they began in.
    signed_in: [AtomicUsize; 3],
    done: [AtomicUsize; 3],
}

impl Run {
    fn phase(&self) -> Phase {
        Phase::of(self.phase.load(Ordering::SeqCst))
    }

    /// Polls until `done` holds; panics after [`STAGE_TIMEOUT`].
    async fn wait(&self, what: &str, lb: &Haproxy, done: impl Fn(&Run) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < STAGE_TIMEOUT,
                "{what}: not reached within {STAGE_TIMEOUT:?} (signed in {:?}, done {:?}); haproxy:\n{}\n{}",
                self.signed_in,
                self.done,
                crate::support::haproxy::describe(&lb.stats().await),
                lb.output()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[derive(Debug)]
struct Sample {
    started: Phase,
    ended: Phase,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    SignedIn,
    /// A success that does not say the sender signed in with an app
    /// password: must never happen.
    WrongAllow(String),
    Status(StatusCode, String),
    /// The request was sent and its connection failed before a whole
    /// answer came back.
    Broken(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::SignedIn => write!(f, "signed in"),
            Outcome::WrongAllow(body) => write!(f, "allowed, but not as the sender: {body}"),
            Outcome::Status(status, body) => {
                let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
                write!(f, "{status}: {}", body.chars().take(120).collect::<String>())
            }
            Outcome::Broken(error) => write!(f, "connection failed: {error}"),
        }
    }
}

/// One client: sign-ins as `user` one after the other on a keep-alive
/// connection to the balancer, until told to stop or its own bounds are
/// reached.
async fn client(lb: SocketAddr, user: &'static str, password: String, run: Arc<Run>) -> Vec<Sample> {
    let authorization = basic(user, &password);
    let deadline = Instant::now() + CLIENT_TIME;
    let mut samples = Vec::new();
    let mut sender = connect(lb).await;
    while !run.stop.load(Ordering::SeqCst) && samples.len() < REQUESTS_PER_CLIENT && Instant::now() < deadline {
        // A connection the balancer closed after its last answer is
        // replaced before the next request: that costs no request.
        if sender.ready().await.is_err() {
            sender = connect(lb).await;
        }
        let request = Request::get("/whoami")
            .header(header::HOST, "fedgate.test")
            .header(header::AUTHORIZATION, authorization.clone())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let started = run.phase();
        let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut sender, request)).await {
            Ok(Ok((status, body))) => judge(status, &body, user),
            Ok(Err(e)) => Outcome::Broken(e),
            Err(_) => Outcome::Broken(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        let ended = run.phase();
        if matches!(outcome, Outcome::SignedIn) {
            run.signed_in[started as usize].fetch_add(1, Ordering::Relaxed);
        }
        run.done[started as usize].fetch_add(1, Ordering::Relaxed);
        samples.push(Sample {
            started,
            ended,
            outcome,
        });
    }
    samples
}

async fn connect(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect to haproxy");
    tcp.set_nodelay(true).unwrap();
    let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await.expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

async fn exchange(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}

fn judge(status: StatusCode, body: &[u8], user: &str) -> Outcome {
    let text = || String::from_utf8_lossy(body).into_owned();
    if !status.is_success() {
        return Outcome::Status(status, text());
    }
    let who: Value = serde_json::from_slice(body).unwrap_or_default();
    if who["authenticated"] == true && who["user"] == user && who["credential"] == "app_password" {
        Outcome::SignedIn
    } else {
        Outcome::WrongAllow(text())
    }
}
