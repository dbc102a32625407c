//! Notable events, each declared once: a type with its fields, its level, its message and its
//! counter (vector's internal-events pattern). [`events!`] declares a module's events; emitting
//! one writes its log line and bumps its count together, so the two cannot drift.
//!
//! The counts are plain atomics beside each event's declaration, not registry handles: an event
//! may fire from any actor, thread or start step, before the metrics actor exists, and passing a
//! handle into every one of them would buy nothing. The metrics actor copies them into
//! `topgun_events_total{event,level}` when it is scraped (see [`EventInfo::count`]).
//!
//! `msg` is a fixed sentence; values go in keys; reasons are bounded codes. A line about a
//! failure carries `err: {type, message}` ([`ErrField`]), what Loki and Kibana queries filter on.
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use slog::{Key, Level, Logger, Record, Serializer};

/// What is known about an event without an instance of it.
pub struct EventInfo {
    /// Stable snake_case id: the `event` label and the `tag` of its log records.
    pub name: &'static str,
    pub level: Level,
    pub msg: &'static str,
    /// The log keys, in line order.
    pub keys: &'static [&'static str],
    /// Emits an instance with default fields: how a test walks every event.
    pub emit_sample: fn(&Logger),
    count: AtomicU64,
}

impl EventInfo {
    pub const fn new(
        name: &'static str,
        level: Level,
        msg: &'static str,
        keys: &'static [&'static str],
        emit_sample: fn(&Logger),
    ) -> EventInfo {
        EventInfo {
            name,
            level,
            msg,
            keys,
            emit_sample,
            count: AtomicU64::new(0),
        }
    }

    /// How often the event happened in this process (logged or not).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The `level` label: Pino's names, as an operator reads them in the log line.
    pub fn level_label(&self) -> &'static str {
        match self.level {
            Level::Critical => "fatal",
            Level::Error => "error",
            Level::Warning => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    pub fn has_err(&self) -> bool {
        self.keys.contains(&"err")
    }
}

/// A declared event; implemented by [`events!`] only.
pub trait Event: Sized {
    fn info() -> &'static EventInfo;

    /// Writes the line without counting; see [`Event::emit`].
    fn write_line(&self, log: &Logger);

    /// Counts the event and writes its line.
    fn emit(self, log: &Logger) {
        self.emit_if(log, true);
    }

    /// Counts the event; writes its line only if `write_line` (a throttled event whose line
    /// was written recently still counts every time it happens).
    fn emit_if(self, log: &Logger, write_line: bool) {
        Self::info().count.fetch_add(1, Ordering::Relaxed);
        if write_line {
            self.write_line(log);
        }
    }
}

/// The `err` field: `{type, message}`. `type` is a bounded code, the message is free text.
#[derive(Clone, Default, Serialize)]
pub struct ErrField {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Borrowed when it is fixed text: a flood of a throttled event allocates nothing.
    pub message: std::borrow::Cow<'static, str>,
}

impl ErrField {
    pub fn new(kind: &'static str, message: impl fmt::Display) -> ErrField {
        ErrField {
            kind,
            message: message.to_string().into(),
        }
    }

    /// An error whose message is fixed text.
    pub fn fixed(kind: &'static str, message: &'static str) -> ErrField {
        ErrField {
            kind,
            message: message.into(),
        }
    }
}

impl slog::Value for ErrField {
    fn serialize(&self, r: &Record<'_>, key: Key, serializer: &mut dyn Serializer) -> slog::Result {
        // A failure line is rare: cloning into slog's serde wrapper costs nothing that matters.
        slog::Value::serialize(&slog::Serde(self.clone()), r, key, serializer)
    }
}

/// A field written with its `Display` form (addresses, paths, hosts): borrowed, so an event
/// that is not logged formats nothing.
#[derive(Clone, Copy)]
pub struct Shown<'a>(pub &'a dyn fmt::Display);

impl Default for Shown<'_> {
    fn default() -> Self {
        Shown(&"")
    }
}

impl slog::Value for Shown<'_> {
    fn serialize(&self, _: &Record<'_>, key: Key, serializer: &mut dyn Serializer) -> slog::Result {
        serializer.emit_arguments(key, &format_args!("{}", self.0))
    }
}

/// Declares a module's events and `pub static EVENTS`, the list a test and the metrics actor
/// walk. Each event:
///
/// ```ignore
/// events! {
///     /// Doc.
///     Warning MemberDown<'a> = "member_down", "member down" {
///         peer: &'a str => "peer",
///         err: ErrField => "err",
///     }
/// }
/// ```
///
/// Field types must implement `slog::Value` and `Default` (the test emits a default instance of
/// every event).
#[macro_export]
macro_rules! events {
    ($(
        $(#[$meta:meta])*
        $level:ident $event:ident $(<$lt:lifetime>)? = $name:literal, $msg:literal {
            $($field:ident : $ty:ty => $key:literal),* $(,)?
        }
    )*) => {
        #[allow(clippy::enum_variant_names)]
        #[derive(Clone, Copy)]
        enum EventIndex { $($event,)* Count }

        /// Every event this module declares.
        pub static EVENTS: [$crate::telemetry::event::EventInfo; EventIndex::Count as usize] = [$(
            $crate::telemetry::event::EventInfo::new(
                $name, ::slog::Level::$level, $msg, &[$($key),*],
                |log| $crate::telemetry::event::Event::emit(<$event>::default(), log),
            ),
        )*];

        $(
            $(#[$meta])*
            #[derive(Default)]
            pub struct $event $(<$lt>)? { $(pub $field: $ty,)* }

            impl $(<$lt>)? $crate::telemetry::event::Event for $event $(<$lt>)? {
                fn info() -> &'static $crate::telemetry::event::EventInfo {
                    &EVENTS[EventIndex::$event as usize]
                }

                fn write_line(&self, log: &::slog::Logger) {
                    ::slog::log!(log, ::slog::Level::$level, $name, $msg; $($key => &self.$field),*);
                }
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::logging::Logging;

    mod sample {
        use super::super::{ErrField, Shown};
        crate::events! {
            /// Fires in tests.
            Warning SampleFailed<'a> = "sample_failed", "sample failed" {
                what: &'a str => "what",
                at: Shown<'a> => "at",
                err: ErrField => "err",
            }
            Info SampleDone = "sample_done", "sample done" {}
        }
    }

    #[test]
    fn emitting_counts_even_when_the_line_is_held_back() {
        let log = Logging::discard();
        let before = sample::EVENTS[0].count();
        sample::SampleFailed::default().emit(&log);
        sample::SampleFailed::default().emit_if(&log, false);
        assert_eq!(sample::EVENTS[0].count() - before, 2);
        assert_eq!(sample::EVENTS[1].count(), 0);
        sample::SampleDone {}.emit_if(&log, false);
        assert_eq!(sample::EVENTS[1].count(), 1);
    }

    #[test]
    fn info_describes_the_declaration() {
        let info = &sample::EVENTS[0];
        assert_eq!(info.name, "sample_failed");
        assert_eq!(info.msg, "sample failed");
        assert_eq!(info.level_label(), "warn");
        assert_eq!(info.keys, ["what", "at", "err"]);
        assert!(info.has_err());
        assert!(!sample::EVENTS[1].has_err());
    }
}
