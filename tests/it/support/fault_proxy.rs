//! A TCP proxy that tests put between fedgate and a server they must not
//! disturb (the shared Samba DC, which other tests use at the same time):
//! it forwards bytes both ways until told to fail as a network or a server
//! would.
//!
//! - [`FaultProxy::cut`] closes every open connection and, until
//!   [`FaultProxy::restore`], closes each new one as soon as it is
//!   accepted: a server that went away, or a firewall resetting sessions.
//! - [`FaultProxy::stall`] keeps every connection open and accepts new
//!   ones, but forwards nothing until [`FaultProxy::restore`]: a server
//!   that hangs (bytes read meanwhile are held, then delivered in order).
//!
//! Plain threads and blocking sockets: one thread accepts, two per
//! connection copy bytes. The proxy listens on the target's own loopback
//! address (on a port the kernel picks), so a certificate that names the
//! server's address names the proxy's too and TLS passes through
//! unchanged. Dropping the proxy closes everything it holds.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Cut,
    Stall,
}

struct Shared {
    target: SocketAddr,
    mode: Mutex<Mode>,
    /// Woken when the mode changes, for copiers holding bytes in a stall.
    changed: Condvar,
    /// Both sockets of every open connection, by connection number, so
    /// that a cut can close them from outside their copiers.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next: AtomicU64,
    accepted: AtomicU64,
    stopping: AtomicBool,
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `target`'s IP address, on a free port, and forwards every
    /// connection to `target`.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(SocketAddr::new(target.ip(), 0))
            .unwrap_or_else(|e| panic!("fault proxy: bind {}:0: {e}", target.ip()));
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(Mode::Forward),
            changed: Condvar::new(),
            open: Mutex::default(),
            next: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || accept_loop(listener, accepting));
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every open connection (both sides) and refuses new ones
    /// (accepted, then closed at once) until [`FaultProxy::restore`].
    pub fn cut(&self) {
        self.set(Mode::Cut);
        let open: Vec<(TcpStream, TcpStream)> = self.shared.open.lock().unwrap().drain().map(|(_, c)| c).collect();
        for (client, server) in open {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// Keeps connections open but forwards no byte, either way, until
    /// [`FaultProxy::restore`]; new connections are accepted and held too.
    pub fn stall(&self) {
        self.set(Mode::Stall);
    }

    /// Forwards again: held bytes are delivered, new connections served.
    pub fn restore(&self) {
        self.set(Mode::Forward);
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.lock().unwrap().len()
    }

    /// Connections accepted since the start, cut ones included.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        self.shared.changed.notify_all();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the acceptor, which then sees `stopping`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if *shared.mode.lock().unwrap() == Mode::Cut {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
            // As the server itself would: nobody there, connection closed.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = shared.next.fetch_add(1, Ordering::SeqCst);
        let (Ok(c1), Ok(c2), Ok(s1), Ok(s2)) = (
            client.try_clone(),
            client.try_clone(),
            server.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        {
            let mut open = shared.open.lock().unwrap();
            // A cut between the check above and here must close this one too.
            if *shared.mode.lock().unwrap() == Mode::Cut {
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                continue;
            }
            open.insert(id, (client, server));
        }
        let up = Arc::clone(&shared);
        std::thread::spawn(move || copy(c1, s1, id, &up));
        let down = Arc::clone(&shared);
        std::thread::spawn(move || copy(s2, c2, id, &down));
    }
}

/// Copies `from` to `to` until either side ends or the connection is cut,
/// holding bytes while the proxy stalls; then closes both sides.
fn copy(mut from: TcpStream, mut to: TcpStream, id: u64, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut mode = shared.mode.lock().unwrap();
        while *mode == Mode::Stall && !shared.stopping.load(Ordering::SeqCst) {
            mode = shared.changed.wait(mode).unwrap();
        }
        let cut = *mode == Mode::Cut;
        drop(mode);
        if cut || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    shared.open.lock().unwrap().remove(&id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server on 127.0.0.1 that answers every connection.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(proxy: &FaultProxy) -> TcpStream {
        let conn = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn
    }

    fn echo(conn: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        conn.write_all(text).unwrap();
        let mut got = vec![0u8; text.len()];
        conn.read_exact(&mut got).expect("the echo");
        got
    }

    /// The connection is closed: a read, with nothing sent (an idle
    /// connection, as a persistent search mostly is), ends with EOF or a
    /// reset instead of timing out.
    fn closed(conn: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        match conn.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }

    fn wait_until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "{what}: not within 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn fault_proxy_forwards_cuts_and_restores() {
        let proxy = FaultProxy::start(echo_server());
        assert_eq!(proxy.addr().ip(), std::net::Ipv4Addr::LOCALHOST);
        let mut a = connect(&proxy);
        assert_eq!(echo(&mut a, b"hello"), b"hello");
        let mut b = connect(&proxy);
        assert_eq!(echo(&mut b, b"again"), b"again");
        wait_until("two open connections", || proxy.open_connections() == 2);

        proxy.cut();
        assert!(closed(&mut a), "an open connection survived the cut");
        assert!(closed(&mut b), "an open connection survived the cut");
        assert_eq!(proxy.open_connections(), 0);
        let before = proxy.accepted();
        let mut refused = connect(&proxy);
        assert!(closed(&mut refused), "a new connection was served while cut");
        assert_eq!(proxy.accepted(), before + 1);

        proxy.restore();
        let mut c = connect(&proxy);
        assert_eq!(echo(&mut c, b"back"), b"back");
    }

    #[test]
    fn fault_proxy_stall_holds_bytes_until_restore() {
        let proxy = FaultProxy::start(echo_server());
        let mut a = connect(&proxy);
        assert_eq!(echo(&mut a, b"before"), b"before");

        proxy.stall();
        a.write_all(b"held").unwrap();
        a.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 4];
        let silent = a.read(&mut buf);
        assert!(
            silent
                .as_ref()
                .is_err_and(|e| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "a stalled proxy forwarded: {silent:?}"
        );
        // New connections are accepted and held, not refused.
        let mut b = connect(&proxy);
        b.write_all(b"new").unwrap();
        wait_until("two open connections", || proxy.open_connections() == 2);

        proxy.restore();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        a.read_exact(&mut buf).expect("the held bytes after restore");
        assert_eq!(&buf, b"held");
        let mut got = [0u8; 3];
        b.read_exact(&mut got)
            .expect("the new connection's bytes after restore");
        assert_eq!(&got, b"new");
        assert_eq!(echo(&mut a, b"after"), b"after");
    }

    #[test]
    fn fault_proxy_closes_a_client_whose_server_is_gone() {
        let unused = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = unused.local_addr().unwrap();
        drop(unused);
        let proxy = FaultProxy::start(target);
        let mut conn = connect(&proxy);
        assert!(closed(&mut conn));
        assert_eq!(proxy.open_connections(), 0);
    }
}
