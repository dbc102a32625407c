//! The cluster secret: the proofs of the peer handshake and the MACs of membership datagrams.
//! Plain functions, no I/O.
//!
//! HMAC-SHA256 from RustCrypto's `hmac` and `sha2` (in the tree already through jsonwebtoken;
//! their `verify_slice` compares in constant time). A node holds its current secret and, while
//! a rotation is rolled out, the previous one: it proves with each (one MAC per secret) and
//! accepts a MAC made with either, so nodes that know only the old secret and nodes that know
//! both understand each other throughout, and then the old one is dropped everywhere.
//!
//! Peer handshake (`peer.rs`), the secret never on the wire:
//! 1. the dialler's HELLO carries a fresh nonce `Nd`;
//! 2. the listener answers HELLO with its own fresh nonce `Nl` and
//!    `MAC(ACCEPT, Nd, Nl, listener id, dialler id)`;
//! 3. the dialler checks it and sends AUTH with `MAC(DIAL, Nl, Nd, dialler id, listener id)`,
//!    which the listener checks before it reads any other frame.
//!
//! Each side's proof covers the other's fresh nonce, so a recorded handshake replays nothing,
//! and the labels differ, so a proof cannot be reflected back to the node that made it.
//!
//! A sealed datagram is `"TA"`, the number of MACs `u8` (1 or 2), the MACs, then the datagram
//! as `membership.rs` encodes it; each MAC is `MAC(DATAGRAM, datagram)`.
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const MAC_LEN: usize = 32;
pub const NONCE_LEN: usize = 32;
/// The shortest secret accepted: HMAC keys shorter than this are guessable offline from one
/// recorded handshake.
pub const MIN_SECRET_LEN: usize = 16;

/// Labels that keep a MAC made for one purpose from being valid for another.
const ACCEPT: &[u8] = b"topgun-peer-accept";
const DIAL: &[u8] = b"topgun-peer-dial";
const DATAGRAM: &[u8] = b"topgun-membership";

const SEALED_MAGIC: [u8; 2] = *b"TA";
/// Bytes a seal adds to a datagram at most (two secrets during a rotation).
pub const MAX_SEAL_OVERHEAD: usize = SEALED_MAGIC.len() + 1 + 2 * MAC_LEN;

/// The secrets a node proves and checks with: the current one first, then the previous.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKeys {
    keys: Vec<Vec<u8>>,
}

impl fmt::Debug for ClusterKeys {
    /// Never prints a secret: the effective config is logged at start.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKeys({} secret(s))", self.keys.len())
    }
}

/// Why a datagram's seal was refused; `code()` is the log's `reason`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("datagram without a MAC: the sender has no cluster secret")]
    Missing,
    #[error("sealed datagram: the sender has a cluster secret and this node none")]
    Unexpected,
    #[error("MAC does not match any cluster secret of this node")]
    Mismatch,
    #[error("sealed datagram ends early")]
    Truncated,
}

impl SealError {
    pub fn code(&self) -> &'static str {
        "auth"
    }
}

/// A fresh random nonce (the thread's CSPRNG, seeded by the OS).
pub fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

impl ClusterKeys {
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Self {
        let mut keys = vec![current.to_vec()];
        if let Some(p) = previous.filter(|p| *p != current) {
            keys.push(p.to_vec());
        }
        ClusterKeys { keys }
    }

    fn keyed(key: &[u8], label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        // HMAC takes keys of any length; new_from_slice cannot fail for it.
        let mut mac = match HmacSha256::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts every key length"),
        };
        mac.update(label);
        for part in parts {
            // Length-prefixed, so that no two different lists of parts hash alike.
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn macs(&self, label: &[u8], parts: &[&[u8]]) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .map(|k| {
                Self::keyed(k, label, parts)
                    .finalize()
                    .into_bytes()
                    .to_vec()
            })
            .collect()
    }

    fn verifies<M: AsRef<[u8]>>(&self, label: &[u8], parts: &[&[u8]], macs: &[M]) -> bool {
        macs.iter().any(|m| {
            self.keys.iter().any(|k| {
                Self::keyed(k, label, parts)
                    .verify_slice(m.as_ref())
                    .is_ok()
            })
        })
    }

    /// The listener's proof (step 2).
    pub fn accept_proofs(
        &self,
        nd: &[u8],
        nl: &[u8],
        listener: &str,
        dialler: &str,
    ) -> Vec<Vec<u8>> {
        self.macs(ACCEPT, &[nd, nl, listener.as_bytes(), dialler.as_bytes()])
    }

    pub fn accept_verifies<M: AsRef<[u8]>>(
        &self,
        proofs: &[M],
        nd: &[u8],
        nl: &[u8],
        listener: &str,
        dialler: &str,
    ) -> bool {
        self.verifies(
            ACCEPT,
            &[nd, nl, listener.as_bytes(), dialler.as_bytes()],
            proofs,
        )
    }

    /// The dialler's proof (step 3).
    pub fn dial_proofs(&self, nl: &[u8], nd: &[u8], dialler: &str, listener: &str) -> Vec<Vec<u8>> {
        self.macs(DIAL, &[nl, nd, dialler.as_bytes(), listener.as_bytes()])
    }

    pub fn dial_verifies<M: AsRef<[u8]>>(
        &self,
        proofs: &[M],
        nl: &[u8],
        nd: &[u8],
        dialler: &str,
        listener: &str,
    ) -> bool {
        self.verifies(
            DIAL,
            &[nl, nd, dialler.as_bytes(), listener.as_bytes()],
            proofs,
        )
    }

    /// `datagram` with the seal in front.
    pub fn seal(&self, datagram: &[u8]) -> Vec<u8> {
        let macs = self.macs(DATAGRAM, &[datagram]);
        let mut out = Vec::with_capacity(3 + macs.len() * MAC_LEN + datagram.len());
        out.extend_from_slice(&SEALED_MAGIC);
        out.push(macs.len() as u8);
        for m in &macs {
            out.extend_from_slice(m);
        }
        out.extend_from_slice(datagram);
        out
    }
}

/// The datagram inside `data` once its seal is checked, before anything of it is decoded.
/// Without keys a sealed datagram is refused too: the two nodes do not share a secret.
pub fn open<'a>(keys: Option<&ClusterKeys>, data: &'a [u8]) -> Result<&'a [u8], SealError> {
    let sealed = data.starts_with(&SEALED_MAGIC);
    let Some(keys) = keys else {
        return if sealed {
            Err(SealError::Unexpected)
        } else {
            Ok(data)
        };
    };
    if !sealed {
        return Err(SealError::Missing);
    }
    let count = usize::from(*data.get(2).ok_or(SealError::Truncated)?);
    if count == 0 || count > 2 {
        return Err(SealError::Truncated);
    }
    let body_at = 3 + count * MAC_LEN;
    if data.len() < body_at {
        return Err(SealError::Truncated);
    }
    let (macs, datagram) = data[3..].split_at(count * MAC_LEN);
    let macs: Vec<&[u8]> = macs.chunks(MAC_LEN).collect();
    if keys.verifies(DATAGRAM, &[datagram], &macs) {
        Ok(datagram)
    } else {
        Err(SealError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &[u8] = b"old secret of the grid";
    const NEW: &[u8] = b"new secret of the grid";

    #[test]
    fn a_handshake_verifies_with_the_same_secret_only() {
        let a = ClusterKeys::new(NEW, None);
        let b = ClusterKeys::new(NEW, None);
        let stranger = ClusterKeys::new(b"some other secret!!", None);
        let (nd, nl) = (nonce(), nonce());
        let accept = b.accept_proofs(&nd, &nl, "b", "a");
        assert!(a.accept_verifies(&accept, &nd, &nl, "b", "a"));
        assert!(!stranger.accept_verifies(&accept, &nd, &nl, "b", "a"));
        let dial = a.dial_proofs(&nl, &nd, "a", "b");
        assert!(b.dial_verifies(&dial, &nl, &nd, "a", "b"));
        assert!(!stranger.dial_verifies(&dial, &nl, &nd, "a", "b"));
    }

    #[test]
    fn a_proof_is_bound_to_its_nonces_names_and_direction() {
        let k = ClusterKeys::new(NEW, None);
        let (nd, nl, other) = (nonce(), nonce(), nonce());
        let accept = k.accept_proofs(&nd, &nl, "b", "a");
        // Replayed against a fresh nonce, for other names, or reflected as the other step.
        assert!(!k.accept_verifies(&accept, &other, &nl, "b", "a"));
        assert!(!k.accept_verifies(&accept, &nd, &other, "b", "a"));
        assert!(!k.accept_verifies(&accept, &nd, &nl, "a", "b"));
        assert!(!k.dial_verifies(&accept, &nd, &nl, "b", "a"));
        // Moving bytes between names does not make the same MAC.
        assert!(!k.accept_verifies(&accept, &nd, &nl, "ba", ""));
    }

    #[test]
    fn during_a_rotation_old_and_both_understand_each_other() {
        let old = ClusterKeys::new(OLD, None);
        let both = ClusterKeys::new(NEW, Some(OLD));
        let new = ClusterKeys::new(NEW, None);
        let (nd, nl) = (nonce(), nonce());
        assert!(old.accept_verifies(&both.accept_proofs(&nd, &nl, "b", "a"), &nd, &nl, "b", "a"));
        assert!(both.accept_verifies(&old.accept_proofs(&nd, &nl, "b", "a"), &nd, &nl, "b", "a"));
        assert!(new.accept_verifies(&both.accept_proofs(&nd, &nl, "b", "a"), &nd, &nl, "b", "a"));
        assert!(!new.accept_verifies(&old.accept_proofs(&nd, &nl, "b", "a"), &nd, &nl, "b", "a"));
        let sealed = both.seal(b"TG datagram");
        assert_eq!(open(Some(&old), &sealed), Ok(&b"TG datagram"[..]));
        assert_eq!(open(Some(&new), &sealed), Ok(&b"TG datagram"[..]));
        assert_eq!(open(Some(&new), &old.seal(b"x")), Err(SealError::Mismatch));
    }

    #[test]
    fn datagrams_without_the_right_seal_are_refused_before_decoding() {
        let k = ClusterKeys::new(NEW, None);
        let sealed = k.seal(b"TG payload");
        assert_eq!(sealed.len(), b"TG payload".len() + 3 + MAC_LEN);
        assert_eq!(open(Some(&k), b"TG payload"), Err(SealError::Missing));
        assert_eq!(open(None, &sealed), Err(SealError::Unexpected));
        assert_eq!(open(None, b"TG payload"), Ok(&b"TG payload"[..]));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(open(Some(&k), &flipped), Err(SealError::Mismatch));
        for cut in 0..3 + MAC_LEN {
            assert!(open(Some(&k), &sealed[..cut]).is_err(), "cut at {cut}");
        }
        let mut three = sealed.clone();
        three[2] = 3;
        assert_eq!(open(Some(&k), &three), Err(SealError::Truncated));
    }

    #[test]
    fn the_secret_is_never_printed() {
        let k = ClusterKeys::new(NEW, Some(OLD));
        let shown = format!("{k:?}");
        assert!(!shown.contains("secret of the grid"), "{shown}");
    }
}
