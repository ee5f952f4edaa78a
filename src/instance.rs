//! One fedgate per address: before `serve` binds its listeners (whose worker
//! sockets share a port through `SO_REUSEPORT`, which a second process with
//! the same user would silently join), each configured address is probed
//! with a socket that does not set `SO_REUSEPORT`. The kernel refuses that
//! bind while anybody listens on the address, so a second fedgate (with the
//! same store or another one) stops with the config key and, when `/proc`
//! shows it, the pid and command line of the holder.
//!
//! Two fedgates starting in the same instant may both pass the probe; so
//! once the listeners are bound, [`ensure_alone`] looks in `/proc` for any
//! other socket listening on each address and refuses to go on (both
//! refuse, then: failing closed beats sharing traffic).
//!
//! Nothing is left behind by a crash: the probe holds no lock file, only
//! the kernel's view of who listens, which dies with the process.
//!
//! Not here: binding the real listeners ([`crate::proxy::workers`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;

use socket2::{Domain, Protocol, Socket, Type};

/// An address somebody else already listens on.
#[derive(Debug, thiserror::Error)]
#[error(
    "{key}: {addr} is already in use by {holder}; another fedgate (or another program) serves this address: stop it, or change {key}"
)]
pub struct InUse {
    pub key: String,
    pub addr: SocketAddr,
    /// "pid 123 (fedgate serve --config ...)" or "another process".
    pub holder: String,
}

/// Refuses `addr` when another socket listens on it. Port 0 (a port chosen
/// at bind time) cannot collide and is not probed; errors other than
/// "address in use" are left to the real bind, which reports them.
pub fn ensure_free(key: &str, addr: SocketAddr) -> Result<(), InUse> {
    if addr.port() == 0 {
        return Ok(());
    }
    match probe(addr) {
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => Err(InUse {
            key: key.to_owned(),
            addr,
            holder: describe_holder(addr),
        }),
        _ => Ok(()),
    }
}

/// Refuses when a socket other than `ours` (descriptors of this process)
/// listens on `addr`, as `/proc` shows it; without a readable `/proc`
/// nothing can be told and nothing is refused.
pub fn ensure_alone(key: &str, addr: SocketAddr, ours: &[RawFd]) -> Result<(), InUse> {
    let mine: Vec<u64> = ours
        .iter()
        .filter_map(|fd| std::fs::metadata(format!("/proc/self/fd/{fd}")).ok())
        .map(|m| m.ino())
        .collect();
    let others: Vec<u64> = listening_inodes(addr)
        .into_iter()
        .filter(|inode| !mine.contains(inode))
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let holder = match holder_of(&others) {
        Some((pid, cmdline)) => describe(pid, &cmdline),
        None => "another process".to_owned(),
    };
    Err(InUse {
        key: key.to_owned(),
        addr,
        holder,
    })
}

fn probe(addr: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only lets the probe past connections in TIME_WAIT (a
    // fedgate that just stopped); it never shares a listening address.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

fn describe(pid: u32, cmdline: &str) -> String {
    if cmdline.is_empty() {
        format!("pid {pid}")
    } else {
        format!("pid {pid} ({cmdline})")
    }
}

fn describe_holder(addr: SocketAddr) -> String {
    match holder_of(&listening_inodes(addr)) {
        Some((pid, cmdline)) => describe(pid, &cmdline),
        None => "another process".to_owned(),
    }
}

/// The inodes of the sockets listening on (or over) `addr`.
fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(
                text.lines()
                    .skip(1)
                    .filter_map(parse_listener)
                    .filter_map(|(local, inode)| overlaps(local, addr).then_some(inode)),
            );
        }
    }
    inodes
}

/// The pid and command line of a process holding one of the sockets
/// `inodes`, found through `/proc` (only processes this user may inspect).
fn holder_of(inodes: &[u64]) -> Option<(u32, String)> {
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                return Some((pid, command_line(&cmdline)));
            }
        }
    }
    None
}

/// `/proc/PID/cmdline` (arguments separated by NUL) as one line.
fn command_line(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Two listening addresses collide when their ports are equal and their
/// hosts are equal or either is the wildcard of its family.
fn overlaps(listening: SocketAddr, wanted: SocketAddr) -> bool {
    listening.port() == wanted.port()
        && (listening.ip() == wanted.ip() || listening.ip().is_unspecified() || wanted.ip().is_unspecified())
}

/// One line of `/proc/net/tcp` or `/proc/net/tcp6`: the local address and
/// socket inode of a socket in the LISTEN state, else `None`.
fn parse_listener(line: &str) -> Option<(SocketAddr, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
    if fields.len() < 10 || fields[3] != "0A" {
        return None;
    }
    let (host, port) = fields[1].split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = parse_proc_ip(host)?;
    let inode = fields[9].parse().ok()?;
    Some((SocketAddr::new(ip, port), inode))
}

/// The kernel prints addresses as 32-bit words in host byte order.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
