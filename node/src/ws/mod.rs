//! WebSocket signalling, the no-I/O part: the messages and close reasons (`protocol.rs`) and one
//! connection's state with its timers and bounds (`core.rs`). The axum shell that drives it and
//! turns a participant into a Calls session is `api/ws.rs`; the protocol is documented in
//! `docs/websocket.md`.

pub mod core;
pub mod protocol;

pub use self::core::{Action, Core, Timers};
pub use protocol::{ClientMsg, CloseReason, ServerMsg};
