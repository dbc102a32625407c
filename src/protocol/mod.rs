//! Client wire protocol (see ../shared/spec/protocol.md).
