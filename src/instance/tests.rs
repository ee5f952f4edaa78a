use super::*;

#[test]
fn a_listening_ipv4_line_gives_its_address_and_inode() {
    let line = "   1: 0100007F:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 424242 1 0000000000000000 100 0 0 10 0";
    assert_eq!(parse_listener(line), Some(("127.0.0.1:8443".parse().unwrap(), 424242)));
}

#[test]
fn connections_that_do_not_listen_are_left_out() {
    let established = "   2: 0100007F:20FB 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 5151 1 0000000000000000 20 4 30 10 -1";
    assert_eq!(parse_listener(established), None);
    assert_eq!(parse_listener("  sl  local_address rem_address   st"), None);
}

#[test]
fn ipv6_lines_are_read_word_by_word() {
    let loopback = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0";
    assert_eq!(parse_listener(loopback), Some(("[::1]:8080".parse().unwrap(), 777)));
    let mapped = "   0: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 778 1 0000000000000000 100 0 0 10 0";
    assert_eq!(parse_listener(mapped), Some(("127.0.0.1:8080".parse().unwrap(), 778)));
}

#[test]
fn wildcards_collide_with_every_host_of_the_port() {
    let any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:8443".parse().unwrap();
    assert!(overlaps(any, local));
    assert!(overlaps(local, any));
    assert!(overlaps(local, local));
    assert!(!overlaps(local, "127.0.0.2:8443".parse().unwrap()));
    assert!(!overlaps(local, "127.0.0.1:8444".parse().unwrap()));
}

#[test]
fn a_command_line_is_joined_with_spaces() {
    assert_eq!(
        command_line(b"fedgate\0serve\0--config\0a.toml\0"),
        "fedgate serve --config a.toml"
    );
}

#[test]
fn a_socket_of_another_process_on_a_bound_address_is_found() {
    let reuseport = |addr: SocketAddr| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(8).unwrap();
        std::net::TcpListener::from(s)
    };
    let ours = reuseport("127.0.0.1:0".parse().unwrap());
    let addr = ours.local_addr().unwrap();
    use std::os::fd::AsRawFd;
    ensure_alone("server.listen[0]", addr, &[ours.as_raw_fd()]).unwrap();
    // Another socket in the same port group, as a second fedgate that
    // passed its probe in the same instant would hold.
    let theirs = reuseport(addr);
    let err = ensure_alone("server.listen[0]", addr, &[ours.as_raw_fd()]).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("in use by pid {}", std::process::id())),
        "{err}"
    );
    ensure_alone("server.listen[0]", addr, &[ours.as_raw_fd(), theirs.as_raw_fd()]).unwrap();
}

#[test]
fn an_address_held_by_a_listener_is_refused_with_its_holder() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let err = ensure_free("server.listen[0]", addr).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "server.listen[0]: {addr} is already in use by pid {}",
            std::process::id()
        )),
        "{message}"
    );
    drop(held);
    ensure_free("server.listen[0]", addr).unwrap();
}
