//! The data plane: what a node does with data, whoever asks (a client connection, a peer).
//! The local write path ([`writes`]) and read path ([`reads`]), and the translation of wire
//! messages into shard operations and queries ([`ops`]), exist once here, as do the limits on
//! what clients may add ([`intake`], over [`budget`] and the map catalog). Callers reach it
//! through `cluster::plane::DataPlane`, which also holds the cluster state: this layer sits
//! below the cluster and never names it, and nothing here knows client connections.
pub mod budget;
pub mod intake;
pub mod ops;
pub mod reads;
pub mod slots;
pub mod sync;
pub mod writes;
