//! The sockets, bound before any actor starts: a busy port stops the node whole.
use std::net::SocketAddr;

use super::StartError;
use crate::config::Config;

/// Every port the node listens on, bound.
pub(super) struct Ports {
    pub client: std::net::TcpListener,
    pub metrics: Option<std::net::TcpListener>,
    pub cluster_socket: tokio::net::UdpSocket,
    pub peer_listener: std::net::TcpListener,
    /// The cluster address as bound (its port is the OS's pick when configured 0).
    pub cluster: SocketAddr,
}

pub(super) fn bind_ports(config: &Config) -> Result<Ports, StartError> {
    let client = bind(SocketAddr::new(config.host, config.port))?;
    let metrics = config
        .metrics_port
        .map(|p| bind(SocketAddr::new(config.host, p)))
        .transpose()?;
    let cluster_host = config.cluster_host();
    let (cluster_socket, peer_listener) =
        bind_cluster(SocketAddr::new(cluster_host, config.cluster_port))?;
    let cluster_port = cluster_socket
        .local_addr()
        .map_or(config.cluster_port, |a| a.port());
    Ok(Ports {
        client,
        metrics,
        cluster_socket,
        peer_listener,
        cluster: SocketAddr::new(cluster_host, cluster_port),
    })
}

/// A listening socket with SO_REUSEADDR (a restart right after a kill binds at once) and a
/// backlog that absorbs a connection storm while the rate limiter decides.
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| StartError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(2048).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

/// The cluster port, bound before any actor starts (a busy port stops the node whole): UDP
/// for membership and TCP, on the same number, for the node-to-node transport. With port 0
/// the OS picks the UDP port, and a few picks are tried until TCP is free on it too.
fn bind_cluster(
    addr: SocketAddr,
) -> Result<(tokio::net::UdpSocket, std::net::TcpListener), StartError> {
    let udp = |addr: SocketAddr| -> Result<tokio::net::UdpSocket, StartError> {
        let err = |source| StartError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        tokio::net::UdpSocket::from_std(socket).map_err(err)
    };
    if addr.port() != 0 {
        return Ok((udp(addr)?, bind(addr)?));
    }
    let mut last = None;
    for _ in 0..20 {
        let socket = udp(addr)?;
        let port = socket.local_addr().map_or(0, |a| a.port());
        match bind(SocketAddr::new(addr.ip(), port)) {
            Ok(listener) => return Ok((socket, listener)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| StartError::Config("no free cluster port".into())))
}

/// Where peers reach this node's cluster port: `--advertise-host` (an IP or a name resolved
/// now), else the bind address when it is specific, else the host name resolved.
pub(super) fn advertised_cluster_addr(
    config: &Config,
    port: u16,
) -> Result<SocketAddr, StartError> {
    use std::net::ToSocketAddrs;
    let host = match &config.advertise_host {
        Some(h) => h.clone(),
        None if !config.cluster_host().is_unspecified() => {
            return Ok(SocketAddr::new(config.cluster_host(), port))
        }
        None => hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .map_err(|e| StartError::Config(format!("cannot read the host name: {e}")))?,
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            StartError::Config(format!(
                "advertise host {host:?} does not resolve (set --advertise-host)"
            ))
        })
}
