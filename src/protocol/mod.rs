//! Client wire protocol (see ../shared/spec/protocol.md): types and MessagePack codec.
//! Plain Rust, no actix: the connection actor calls into it.
pub mod types;
