//! The cluster: membership ([`actor::ClusterActor`] over foca, [`membership`]), the partition
//! table ([`table`]), the node-to-node transport ([`wire`], [`peer`]), write routing and
//! replication ([`replication`]), migration after a rebalance ([`migration`]) of partitions
//! exported in bounded pieces ([`export`]), catching up
//! from a peer that (re)connects ([`catchup`]), handing failed forwards off again
//! ([`handoff`]), the shared
//! view the rest of the node reads ([`state`]), and the [`plane::DataPlane`] that client
//! connections and peers both work through. Their failures are one [`error::ClusterError`].
//! `docs/cluster.md` is the operator's view.
pub mod actor;
pub mod antientropy;
pub mod catchup;
pub mod error;
pub mod events;
pub mod export;
pub mod gather;
pub mod handoff;
pub mod leaving;
pub mod links;
pub mod live;
pub mod membership;
pub mod migration;
pub mod peer;
pub mod peer_error;
pub mod plane;
pub mod release;
pub mod replication;
pub mod secret;
pub mod state;
pub mod table;
pub mod tls;
pub mod wire;

/// The URL clients should use: the advertised host (or the bind address when it is specific,
/// else the host name) and the bound port.
pub fn advertised_url(advertise_host: Option<&str>, bind: std::net::IpAddr, port: u16) -> String {
    let host = match advertise_host {
        Some(h) => h.to_owned(),
        None if !bind.is_unspecified() => bind.to_string(),
        None => hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into()),
    };
    format!("ws://{host}:{port}/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_url_names_a_reachable_host() {
        assert_eq!(
            advertised_url(None, "10.0.0.1".parse().unwrap(), 8080),
            "ws://10.0.0.1:8080/ws"
        );
        assert_eq!(
            advertised_url(Some("db.example"), "0.0.0.0".parse().unwrap(), 1),
            "ws://db.example:1/ws"
        );
    }
}
