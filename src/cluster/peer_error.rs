//! Why a peer connection was refused, failed or was cut: the `reason` label of
//! `topgun_cluster_peer_errors_total`, the `err.type` of its log line and the prefix of a
//! `REFUSED` frame's reason. One enum, so a reason cannot be counted under a label that does
//! not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerError {
    /// No proof of the cluster secret (or a wrong one).
    Auth,
    /// The TLS handshake of a link failed.
    Tls,
    /// The peer stopped reading; its link was cut past `--cluster-link-buffer-bytes`.
    Backlog,
    /// Another protocol version.
    Version,
    /// A member with another `--placement`.
    Placement,
    BadFrame,
    BadHello,
    /// A second process with this node's id.
    NodeIdClash,
    /// A dial that did not connect.
    Connect,
    /// An established link that broke.
    Lost,
    /// No answer, no handshake, or a frame stalled, for the cluster timeout.
    Timeout,
    /// A connection over the cluster port's caps, closed at once.
    Capacity,
    /// The listener failed to accept (e.g. out of descriptors).
    Accept,
}

impl PeerError {
    pub const ALL: [PeerError; 13] = [
        PeerError::Auth,
        PeerError::Tls,
        PeerError::Backlog,
        PeerError::Version,
        PeerError::Placement,
        PeerError::BadFrame,
        PeerError::BadHello,
        PeerError::NodeIdClash,
        PeerError::Connect,
        PeerError::Lost,
        PeerError::Timeout,
        PeerError::Capacity,
        PeerError::Accept,
    ];

    pub fn code(self) -> &'static str {
        match self {
            PeerError::Auth => "auth",
            PeerError::Tls => "tls",
            PeerError::Backlog => "backlog",
            PeerError::Version => "version",
            PeerError::Placement => "placement",
            PeerError::BadFrame => "bad_frame",
            PeerError::BadHello => "bad_hello",
            PeerError::NodeIdClash => "node_id_clash",
            PeerError::Connect => "connect",
            PeerError::Lost => "lost",
            PeerError::Timeout => "timeout",
            PeerError::Capacity => "capacity",
            PeerError::Accept => "accept",
        }
    }

    /// The label values, for the metrics registry to export each at zero from the start.
    pub fn codes() -> [&'static str; 13] {
        PeerError::ALL.map(PeerError::code)
    }

    /// Its position in [`PeerError::ALL`]: the index of its counter.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_code_and_counter() {
        let codes = PeerError::codes();
        let mut unique = codes.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        for (i, e) in PeerError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert!(e
                .code()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }
}
