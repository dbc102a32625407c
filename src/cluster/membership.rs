//! Membership as plain data for foca (SWIM): the node identity, the datagram codec, the
//! foca configuration, and what foca's notifications mean ([`classify`], [`back_from_split`]).
//! No actix and no I/O here; `actor.rs` owns the socket and the timers.
//!
//! Wire format of one datagram (big-endian), version [`WIRE_VERSION`]:
//! `"TG"`, version `u8`, then foca's header: source identity, source incarnation `u16`,
//! destination identity, message tag `u8` and its fields; then foca's own member updates, each
//! an identity, incarnation `u16` and state `u8` (0 alive, 1 suspect, 2 down).
//! An identity is `len u8`, node id (UTF-8), address family `u8` (4 or 6), the IP, port `u16`,
//! generation `u64`, then `len u8` and the client WebSocket URL (UTF-8) the member advertises.
//! The member's node-to-node transport (`peer.rs`) listens on TCP at the same IP and port.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Identity, Member, Message, OwnedNotification, State};

/// Magic bytes opening every cluster datagram: anything else on the port is garbage.
const MAGIC: [u8; 2] = *b"TG";
/// Version of the membership datagram format; a peer speaking another one is refused.
pub const WIRE_VERSION: u8 = 2;
/// Longest node id carried on the wire (`len` is one byte).
const MAX_ID_LEN: usize = 255;

/// Who a member is: its node id, where peers reach it, which run of it this is, and where its
/// clients connect (for `PARTITION_MAP`).
/// `generation` is the start time in ms, so a node restarted on the same address joins as a
/// newer incarnation and wins the address over its dead predecessor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    pub node_id: String,
    pub addr: SocketAddr,
    pub generation: u64,
    pub ws_url: String,
}

impl NodeIdentity {
    /// A placeholder for a seed we only know by address: foca accepts an announce addressed to
    /// any identity with the receiver's address.
    pub fn seed(addr: SocketAddr) -> Self {
        NodeIdentity {
            node_id: String::new(),
            addr,
            generation: 0,
            ws_url: String::new(),
        }
    }
}

impl Identity for NodeIdentity {
    type Addr = SocketAddr;

    /// Declared down by the others while alive: come back as a newer generation.
    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Why a datagram could not be read. `code()` is the log's `reason`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("datagram ends early")]
    Truncated,
    #[error("not a TopGun cluster datagram")]
    BadMagic,
    #[error("cluster protocol version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("unknown message tag {0}")]
    BadTag(u8),
    #[error("unknown address family {0}")]
    BadFamily(u8),
    #[error("unknown member state {0}")]
    BadState(u8),
    #[error("node id is not UTF-8")]
    BadNodeId,
}

impl DecodeError {
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::Version(_) => "version",
            DecodeError::BadTag(_) => "bad_tag",
            DecodeError::BadFamily(_) => "bad_family",
            DecodeError::BadState(_) => "bad_state",
            DecodeError::BadNodeId => "bad_node_id",
        }
    }
}

/// Encoding cannot fail for identities this node builds (ids are validated at start), but a
/// too-long id is reported rather than truncated.
#[derive(Debug, thiserror::Error)]
#[error("node id or client URL longer than {MAX_ID_LEN} bytes")]
pub struct EncodeError;

/// foca's codec for [`NodeIdentity`]: small, hand-written, every read bounds-checked.
#[derive(Debug, Default, Clone, Copy)]
pub struct WireCodec;

fn need(buf: &impl Buf, n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated)
    } else {
        Ok(())
    }
}

fn get_u8(buf: &mut impl Buf) -> Result<u8, DecodeError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

fn get_u16(buf: &mut impl Buf) -> Result<u16, DecodeError> {
    need(buf, 2)?;
    Ok(buf.get_u16())
}

fn get_u64(buf: &mut impl Buf) -> Result<u64, DecodeError> {
    need(buf, 8)?;
    Ok(buf.get_u64())
}

fn put_identity(id: &NodeIdentity, buf: &mut impl BufMut) -> Result<(), EncodeError> {
    let bytes = id.node_id.as_bytes();
    let len = u8::try_from(bytes.len()).map_err(|_| EncodeError)?;
    buf.put_u8(len);
    buf.put_slice(bytes);
    match id.addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16(id.addr.port());
    buf.put_u64(id.generation);
    let url = id.ws_url.as_bytes();
    buf.put_u8(u8::try_from(url.len()).map_err(|_| EncodeError)?);
    buf.put_slice(url);
    Ok(())
}

fn get_identity(buf: &mut impl Buf) -> Result<NodeIdentity, DecodeError> {
    let len = usize::from(get_u8(buf)?);
    need(buf, len)?;
    let mut raw = vec![0; len];
    buf.copy_to_slice(&mut raw);
    let node_id = String::from_utf8(raw).map_err(|_| DecodeError::BadNodeId)?;
    let ip = match get_u8(buf)? {
        4 => {
            need(buf, 4)?;
            let mut o = [0; 4];
            buf.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            need(buf, 16)?;
            let mut o = [0; 16];
            buf.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        other => return Err(DecodeError::BadFamily(other)),
    };
    let port = get_u16(buf)?;
    let generation = get_u64(buf)?;
    let len = usize::from(get_u8(buf)?);
    need(buf, len)?;
    let mut raw = vec![0; len];
    buf.copy_to_slice(&mut raw);
    let ws_url = String::from_utf8(raw).map_err(|_| DecodeError::BadNodeId)?;
    Ok(NodeIdentity {
        node_id,
        addr: SocketAddr::new(ip, port),
        generation,
        ws_url,
    })
}

impl Codec<NodeIdentity> for WireCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        buf.put_slice(&MAGIC);
        buf.put_u8(WIRE_VERSION);
        put_identity(&header.src, &mut buf)?;
        buf.put_u16(header.src_incarnation);
        put_identity(&header.dst, &mut buf)?;
        let (tag, peer, probe) = match &header.message {
            Message::Ping(n) => (0, None, Some(*n)),
            Message::Ack(n) => (1, None, Some(*n)),
            Message::PingReq {
                target,
                probe_number,
            } => (2, Some(target), Some(*probe_number)),
            Message::IndirectPing {
                origin,
                probe_number,
            } => (3, Some(origin), Some(*probe_number)),
            Message::IndirectAck {
                target,
                probe_number,
            } => (4, Some(target), Some(*probe_number)),
            Message::ForwardedAck {
                origin,
                probe_number,
            } => (5, Some(origin), Some(*probe_number)),
            Message::Announce => (6, None, None),
            Message::Feed => (7, None, None),
            Message::Gossip => (8, None, None),
            Message::Broadcast => (9, None, None),
            Message::TurnUndead => (10, None, None),
        };
        buf.put_u8(tag);
        if let Some(peer) = peer {
            put_identity(peer, &mut buf)?;
        }
        if let Some(n) = probe {
            buf.put_u8(n);
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeIdentity>, CodecError> {
        need(&buf, 3)?;
        let mut magic = [0; 2];
        buf.copy_to_slice(&mut magic);
        if magic != MAGIC {
            return Err(DecodeError::BadMagic.into());
        }
        let version = buf.get_u8();
        if version != WIRE_VERSION {
            return Err(DecodeError::Version(version).into());
        }
        let src = get_identity(&mut buf)?;
        let src_incarnation = get_u16(&mut buf)?;
        let dst = get_identity(&mut buf)?;
        let message = match get_u8(&mut buf)? {
            0 => Message::Ping(get_u8(&mut buf)?),
            1 => Message::Ack(get_u8(&mut buf)?),
            2 => Message::PingReq {
                target: get_identity(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            3 => Message::IndirectPing {
                origin: get_identity(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            4 => Message::IndirectAck {
                target: get_identity(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            5 => Message::ForwardedAck {
                origin: get_identity(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            6 => Message::Announce,
            7 => Message::Feed,
            8 => Message::Gossip,
            9 => Message::Broadcast,
            10 => Message::TurnUndead,
            other => return Err(DecodeError::BadTag(other).into()),
        };
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        put_identity(member.id(), &mut buf)?;
        buf.put_u16(member.incarnation());
        buf.put_u8(match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<NodeIdentity>, CodecError> {
        let id = get_identity(&mut buf)?;
        let incarnation = get_u16(&mut buf)?;
        let state = match get_u8(&mut buf)? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            other => return Err(DecodeError::BadState(other).into()),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

/// The codec's error: foca wraps it in `Error::Encode`/`Error::Decode`.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// The bounded `reason` of a datagram foca refused.
pub fn refusal_code(e: &foca::Error) -> &'static str {
    match e {
        foca::Error::Decode(inner) => match inner.downcast_ref::<CodecError>() {
            Some(CodecError::Decode(d)) => d.code(),
            _ => "decode",
        },
        foca::Error::DataTooBig => "too_big",
        foca::Error::MalformedPacket => "malformed",
        foca::Error::DataFromOurselves => "from_ourselves",
        foca::Error::IndirectForOurselves => "indirect_for_ourselves",
        _ => "refused",
    }
}

/// foca's settings from one knob, the probe period (`--cluster-probe-ms`): a member that
/// stops answering is suspected after a probe or two and declared down about three periods
/// later; gossip spreads news every fifth of a period; a node alone re-announces itself to
/// the members it knows so partitions heal.
pub fn foca_config(probe: Duration) -> foca::Config {
    let probe = probe.max(Duration::from_millis(50));
    let mut c = foca::Config::simple();
    c.probe_period = probe;
    c.probe_rtt = probe / 3;
    c.suspect_to_down_after = probe * 3;
    // Forget dead members (and their identities) after a while; a restart comes back as a new
    // generation anyway.
    c.remove_down_after = Some((probe * 30).max(Duration::from_secs(15)));
    c.max_transmissions = NonZeroU8::new(10).unwrap_or(NonZeroU8::MIN);
    c.notify_down_members = true;
    // 1,400 bytes on the wire at most, the cluster secret's seal included.
    c.max_packet_size =
        NonZeroUsize::new(1400 - super::secret::MAX_SEAL_OVERHEAD).unwrap_or(NonZeroUsize::MIN);
    let three = NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN);
    c.periodic_gossip = Some(foca::PeriodicParams {
        frequency: (probe / 5).max(Duration::from_millis(20)),
        num_members: three,
    });
    c.periodic_announce = Some(foca::PeriodicParams {
        frequency: probe * 10,
        num_members: NonZeroUsize::MIN,
    });
    // How soon the two sides of a healed split find each other again.
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: probe * 3,
        num_members: NonZeroUsize::MIN,
    });
    c
}

/// The datagram without the member updates in it that declare a member down; `None` when it
/// has none (or cannot be read: foca reports that).
///
/// Used for a short while after a rejoin: a node that was cut off with others may still hold
/// the other side as down and tell the fresh node so, which would make the fresh node, and
/// through its gossip the other side, hold live members down (down is final in SWIM: they
/// would have to rejoin too). A fresh node that learns only who is alive probes the rest itself.
pub fn without_down_claims(data: &[u8]) -> Option<Vec<u8>> {
    let mut codec = WireCodec;
    let mut rest = data;
    let header = codec.decode_header(&mut rest).ok()?;
    if matches!(header.message, Message::Broadcast | Message::Announce) || rest.remaining() < 2 {
        return None;
    }
    let count = rest.get_u16();
    let mut members = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        members.push(codec.decode_member(&mut rest).ok()?);
    }
    if !members.iter().any(|m| m.state() == State::Down) {
        return None;
    }
    members.retain(|m| m.state() != State::Down);
    let mut out = Vec::with_capacity(data.len());
    codec.encode_header(&header, &mut out).ok()?;
    out.put_u16(u16::try_from(members.len()).ok()?);
    for m in &members {
        codec.encode_member(m, &mut out).ok()?;
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// A member back with a generation at least this much newer restarted (its generation is its
/// start time in ms); a smaller step is foca's renewal after it was declared down while alive.
pub const RESTART_GENERATION_GAP: u64 = 1000;

/// What a membership notification means to this node.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// A member is up. `clash`: it announces this node's own id (a second process with it).
    Joined {
        member: NodeIdentity,
        clash: bool,
    },
    /// Declared down by the failure detector: foca suspected it first.
    Down(NodeIdentity),
    /// Down without being suspected first: it announced that it leaves (SIGTERM).
    Left(NodeIdentity),
    /// A member is known under a new identity (foca's rename: renewed, or restarted on its
    /// address).
    Renamed {
        old: NodeIdentity,
        new: NodeIdentity,
    },
    /// The others declared this node down; foca renewed its identity to this one.
    Rejoined(NodeIdentity),
    Active,
    Idle,
    Defunct,
    /// Nothing this node acts on.
    Other,
}

/// What `n` means, given this node's id and the state it last saw each member in: a member
/// that goes down while it was suspected failed, one that goes down alive said it leaves (a
/// leave is gossiped as down at once, without suspicion).
pub fn classify(
    n: OwnedNotification<NodeIdentity>,
    me: &str,
    last_state: impl Fn(&NodeIdentity) -> Option<State>,
) -> Change {
    match n {
        OwnedNotification::MemberUp(member) => Change::Joined {
            clash: member.node_id == me,
            member,
        },
        OwnedNotification::MemberDown(id) if last_state(&id) == Some(State::Suspect) => {
            Change::Down(id)
        }
        OwnedNotification::MemberDown(id) => Change::Left(id),
        OwnedNotification::Rename(old, new) => Change::Renamed { old, new },
        OwnedNotification::Rejoin(id) => Change::Rejoined(id),
        OwnedNotification::Active => Change::Active,
        OwnedNotification::Idle => Change::Idle,
        OwnedNotification::Defunct => Change::Defunct,
        #[allow(unreachable_patterns)]
        _ => Change::Other,
    }
}

/// A member this node saw declared down at `down_generation` is back at `generation`: whether
/// it was cut off or paused (foca renews an identity by one), so its side took writes this
/// side never saw, rather than restarted (a restart's generation is its start time).
pub fn back_from_split(down_generation: u64, generation: u64) -> bool {
    generation.saturating_sub(down_generation) < RESTART_GENERATION_GAP
}

/// Whether this node believes a member it holds down when that member tells it that it is the
/// one down (foca's `TurnUndead`, which makes a node rejoin as a new generation).
///
/// After a split heals both sides tell each other so, and with foca's default every node would
/// rejoin, also those that were never cut off from the majority; their data links would then
/// be torn down and rebuilt for nothing. A node whose side (itself and the members it sees
/// alive) is a strict majority of the members it knows keeps its generation: the other side
/// rejoins, with a fresh view. Ties and minorities rejoin, as foca would.
pub fn heeds_down_verdict(alive_with_self: usize, known_with_self: usize) -> bool {
    alive_with_self * 2 <= known_with_self
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, port: u16, generation: u64) -> NodeIdentity {
        NodeIdentity {
            node_id: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            generation,
            ws_url: format!("ws://127.0.0.1:{port}/ws"),
        }
    }

    #[test]
    fn header_and_member_round_trip() {
        let mut codec = WireCodec;
        let header = Header {
            src: id("a", 1, 10),
            src_incarnation: 3,
            dst: id("b", 2, 20),
            message: Message::PingReq {
                target: id("c", 3, 30),
                probe_number: 7,
            },
        };
        let mut buf = Vec::new();
        codec.encode_header(&header, &mut buf).unwrap();
        let back = codec.decode_header(&buf[..]).unwrap();
        assert_eq!(back, header);

        let member = Member::new(id("n-é", 9, u64::MAX), 5, State::Suspect);
        let mut buf = Vec::new();
        codec.encode_member(&member, &mut buf).unwrap();
        assert_eq!(codec.decode_member(&buf[..]).unwrap(), member);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut codec = WireCodec;
        let header = Header {
            src: id("a", 1, 10),
            src_incarnation: 3,
            dst: id("b", 2, 20),
            message: Message::Ping(1),
        };
        let mut good = Vec::new();
        codec.encode_header(&header, &mut good).unwrap();
        for cut in 0..good.len() {
            assert!(codec.decode_header(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut other_version = good.clone();
        other_version[2] = 99;
        assert!(matches!(
            codec.decode_header(&other_version[..]),
            Err(CodecError::Decode(DecodeError::Version(99)))
        ));
        assert!(matches!(
            codec.decode_header(&b"hello world"[..]),
            Err(CodecError::Decode(DecodeError::BadMagic))
        ));
    }

    #[test]
    fn a_newer_generation_wins_the_address() {
        let old = id("a", 1, 10);
        let new = old.renew().unwrap();
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert_eq!(new.addr(), old.addr());
    }

    #[test]
    fn down_claims_are_stripped_and_the_rest_kept() {
        let mut codec = WireCodec;
        let header = Header {
            src: id("a", 1, 10),
            src_incarnation: 3,
            dst: id("b", 2, 20),
            message: Message::Gossip,
        };
        let alive = Member::new(id("c", 3, 30), 1, State::Alive);
        let down = Member::new(id("d", 4, 40), 2, State::Down);
        let suspect = Member::new(id("e", 5, 50), 0, State::Suspect);
        let mut data = Vec::new();
        codec.encode_header(&header, &mut data).unwrap();
        data.put_u16(3);
        for m in [&alive, &down, &suspect] {
            codec.encode_member(m, &mut data).unwrap();
        }
        let clean = without_down_claims(&data).expect("one claim to strip");
        let mut rest = &clean[..];
        assert_eq!(codec.decode_header(&mut rest).unwrap(), header);
        assert_eq!(rest.get_u16(), 2);
        assert_eq!(codec.decode_member(&mut rest).unwrap(), alive);
        assert_eq!(codec.decode_member(&mut rest).unwrap(), suspect);
        assert!(rest.is_empty());
        // Nothing to strip, or not readable: foca gets the datagram as it came.
        assert_eq!(without_down_claims(&clean), None);
        assert_eq!(without_down_claims(b"garbage"), None);
    }

    #[test]
    fn only_a_side_without_a_majority_believes_it_is_down() {
        // A alone against B and C: A rejoins, B and C (two of three) do not.
        assert!(heeds_down_verdict(1, 3));
        assert!(!heeds_down_verdict(2, 3));
        // Two against two, and a pair: both sides rejoin.
        assert!(heeds_down_verdict(2, 4));
        assert!(heeds_down_verdict(1, 2));
        // Three of five keep their generation.
        assert!(!heeds_down_verdict(3, 5));
    }

    #[test]
    fn a_member_down_after_suspicion_failed_and_one_down_while_alive_left() {
        let b = id("b", 2, 20);
        let suspected = |_: &NodeIdentity| Some(State::Suspect);
        let alive = |_: &NodeIdentity| Some(State::Alive);
        let unknown = |_: &NodeIdentity| None;
        assert_eq!(
            classify(OwnedNotification::MemberDown(b.clone()), "a", suspected),
            Change::Down(b.clone())
        );
        assert_eq!(
            classify(OwnedNotification::MemberDown(b.clone()), "a", alive),
            Change::Left(b.clone())
        );
        // Not seen before (e.g. the view was rebuilt by a rejoin): no suspicion seen, a leave.
        assert_eq!(
            classify(OwnedNotification::MemberDown(b.clone()), "a", unknown),
            Change::Left(b)
        );
    }

    #[test]
    fn a_member_up_with_this_nodes_id_is_a_clash() {
        let classify_up =
            |member: NodeIdentity| classify(OwnedNotification::MemberUp(member), "a", |_| None);
        assert_eq!(
            classify_up(id("b", 2, 20)),
            Change::Joined {
                member: id("b", 2, 20),
                clash: false
            }
        );
        assert_eq!(
            classify_up(id("a", 9, 90)),
            Change::Joined {
                member: id("a", 9, 90),
                clash: true
            }
        );
    }

    #[test]
    fn the_other_notifications_map_one_to_one() {
        let none = |_: &NodeIdentity| None;
        let (old, new) = (id("b", 2, 20), id("b", 2, 21));
        assert_eq!(
            classify(
                OwnedNotification::Rename(old.clone(), new.clone()),
                "a",
                none
            ),
            Change::Renamed { old, new }
        );
        assert_eq!(
            classify(OwnedNotification::Rejoin(id("a", 1, 11)), "a", none),
            Change::Rejoined(id("a", 1, 11))
        );
        assert_eq!(
            classify(OwnedNotification::Active, "a", none),
            Change::Active
        );
        assert_eq!(classify(OwnedNotification::Idle, "a", none), Change::Idle);
        assert_eq!(
            classify(OwnedNotification::Defunct, "a", none),
            Change::Defunct
        );
    }

    #[test]
    fn a_member_back_with_the_next_generation_healed_a_split_and_a_restart_did_not() {
        assert!(back_from_split(1_000_000, 1_000_001), "foca's renewal");
        assert!(back_from_split(
            1_000_000,
            1_000_000 + RESTART_GENERATION_GAP - 1
        ));
        assert!(!back_from_split(
            1_000_000,
            1_000_000 + RESTART_GENERATION_GAP
        ));
        // A restart 30 s later: its start time in ms.
        assert!(!back_from_split(1_000_000, 1_030_000));
        // An older generation (a stale notification) counts as the same run.
        assert!(back_from_split(1_000_000, 999_999));
    }

    #[test]
    fn config_is_accepted_by_foca() {
        let rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let mut foca = foca::Foca::new(
            id("a", 1, 1),
            foca_config(Duration::from_millis(200)),
            rng,
            WireCodec,
        );
        assert!(foca
            .set_config(foca_config(Duration::from_millis(200)))
            .is_ok());
        assert_eq!(foca.num_members(), 0);
    }
}
