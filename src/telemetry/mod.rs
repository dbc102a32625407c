//! Telemetry: Pino-shaped logs, the metrics actor and the path every number takes to it.
pub mod debug;
pub mod event;
pub mod events;
pub mod histogram;
pub mod lag;
pub mod logging;
pub mod mailbox;
pub mod metrics;
pub mod report;
pub mod sampled;
pub mod summary;
pub mod throttle;
