//! Pino-shaped JSON log lines through slog, written by one background thread.
//!
//! Shape: `{"level":30,"time":<epoch ms>,"pid":..,"hostname":"..","msg":"..","nodeId":"..",
//! ...logger context, ...call keys}`, the numbers Pino's (trace 10 … fatal 60).
//!
//! Logging must never stall the node. Lines go through a bounded channel to a writer thread;
//! when the channel is full (a sink that stopped reading, a full disk) the line is dropped and
//! counted in `topgun_log_records_dropped_total`, and the caller goes on. Shutdown waits at most a
//! bounded time for the writer (see [`Logging::finish`]).
//!
//! On stdout the `PORT=<n>` line must be the first line, so the writer holds log lines back
//! until the node has printed it ([`Logging::port_line_printed`]).
use std::fs::OpenOptions;
use std::io::{self, LineWriter, Write};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use slog::{o, Drain, FnValue, Level, Logger, OwnedKVList, PushFnValue, Record};

use crate::config::{LogDest, LogLevel};

/// Pino's numeric level for a slog level.
pub fn pino_level(level: Level) -> u8 {
    match level {
        Level::Critical => 60,
        Level::Error => 50,
        Level::Warning => 40,
        Level::Info => 30,
        Level::Debug => 20,
        Level::Trace => 10,
    }
}

fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub use super::event::ErrField;

/// `"err" => err_kv("bind_failed", &e)` in a debug line; notable events take an [`ErrField`].
pub fn err_kv(kind: &'static str, message: impl std::fmt::Display) -> ErrField {
    ErrField::new(kind, message)
}

/// What the node keeps of its logging: the root logger, the drop counter for
/// `topgun_log_records_dropped_total`, the runtime level, and the writer thread's guard.
pub struct Logging {
    pub root: Logger,
    pub dropped: Arc<AtomicU64>,
    level: Arc<AtomicU8>,
    gate: Option<Arc<Gate>>,
    guard: Option<slog_async::AsyncGuard>,
}

impl Logging {
    /// Opens the destination and starts the writer thread. Fails only if a log file cannot be
    /// opened, which the caller reports as a start-up error.
    pub fn init(
        dest: &LogDest,
        level: LogLevel,
        buffer: usize,
        node_id: &str,
    ) -> io::Result<Logging> {
        let gate = matches!(dest, LogDest::Stdout).then(|| Arc::new(Gate::default()));
        let writer: Box<dyn Write + Send> = match dest {
            LogDest::Stdout => Box::new(GatedWriter {
                gate: gate.clone().expect("gate exists for stdout"),
                opened: false,
                inner: io::stdout(),
            }),
            LogDest::Stderr => Box::new(LineWriter::new(io::stderr())),
            LogDest::File(path) => Box::new(LineWriter::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
        };
        let pid = std::process::id();
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        // One add_key_value per key: several keys in one o!() come out in reverse order.
        let json = slog_json::Json::new(writer)
            .set_newlines(true)
            .add_key_value(o!("level" => FnValue(|r: &Record| pino_level(r.level()))))
            .add_key_value(o!("time" => FnValue(|_: &Record| epoch_millis())))
            .add_key_value(o!("pid" => pid))
            .add_key_value(o!("hostname" => host))
            .add_key_value(o!("msg" => PushFnValue(|r: &Record, s| s.emit(r.msg()))))
            .add_key_value(o!("nodeId" => node_id.to_owned()))
            .build()
            // A closed pipe or a full disk must not kill the writer thread (`fuse` would panic).
            .ignore_res();
        let (core, guard) = slog_async::AsyncCore::custom(json)
            .chan_size(buffer)
            .blocking(false)
            .thread_name("topgun-log".into())
            .build_with_guard();
        let dropped = Arc::new(AtomicU64::new(0));
        let level_cell = Arc::new(AtomicU8::new(level.pino_number()));
        let drain = LevelFilter {
            min: level_cell.clone(),
            inner: CountDrops {
                inner: core,
                dropped: dropped.clone(),
            },
        };
        Ok(Logging {
            root: Logger::root(drain, o!()),
            dropped,
            level: level_cell,
            gate,
            guard: Some(guard),
        })
    }

    /// A logger that discards everything, for unit tests of actors.
    pub fn discard() -> Logger {
        Logger::root(slog::Discard, o!())
    }

    /// Releases held-back stdout lines; call right after printing `PORT=<n>` (or on a start-up
    /// failure, so the lines explaining it are not lost).
    pub fn port_line_printed(&self) {
        if let Some(gate) = &self.gate {
            gate.open();
        }
    }

    pub fn level_handle(&self) -> LevelHandle {
        LevelHandle(self.level.clone())
    }

    /// Flushes what the writer can write within `timeout`, then returns whatever happened:
    /// a sink that stopped reading must not hold up the exit.
    pub fn finish(mut self, timeout: Duration) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("topgun-log-finish".into())
            .spawn(move || {
                drop(guard);
                let _ = tx.send(());
            });
        if spawned.is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
        // The root logger owns the channel's sender; dropping it would join the writer thread
        // again, unbounded. The process is about to exit, so leak it on purpose.
        std::mem::forget(self.root);
    }
}

/// Changes the log level at run time (`PUT /debug/log-level`).
#[derive(Clone)]
pub struct LevelHandle(Arc<AtomicU8>);

impl LevelHandle {
    pub fn set(&self, level: LogLevel) {
        self.0.store(level.pino_number(), Ordering::Relaxed);
    }

    pub fn get(&self) -> LogLevel {
        LogLevel::from_pino_number(self.0.load(Ordering::Relaxed)).unwrap_or(LogLevel::Info)
    }
}

/// Filters before the channel, so a disabled line costs one atomic load.
struct LevelFilter<D> {
    min: Arc<AtomicU8>,
    inner: D,
}

impl<D: Drain<Ok = (), Err = slog::Never>> Drain for LevelFilter<D> {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        if pino_level(record.level()) >= self.min.load(Ordering::Relaxed) {
            self.inner.log(record, values)
        } else {
            Ok(())
        }
    }

    fn is_enabled(&self, level: Level) -> bool {
        pino_level(level) >= self.min.load(Ordering::Relaxed)
    }
}

/// slog-async's own drop counter is private; count every record the channel refused.
struct CountDrops {
    inner: slog_async::AsyncCore,
    dropped: Arc<AtomicU64>,
}

impl Drain for CountDrops {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        if self.inner.log(record, values).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Holds the writer thread until the `PORT=` line is out.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cond: Condvar,
}

impl Gate {
    fn open(&self) {
        if let Ok(mut open) = self.open.lock() {
            *open = true;
            self.cond.notify_all();
        }
    }

    fn wait(&self) {
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        while !*open {
            match self.cond.wait(open) {
                Ok(guard) => open = guard,
                Err(_) => return,
            }
        }
    }
}

struct GatedWriter {
    gate: Arc<Gate>,
    opened: bool,
    inner: io::Stdout,
}

impl Write for GatedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.opened {
            self.gate.wait();
            self.opened = true;
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pino_levels() {
        assert_eq!(pino_level(Level::Trace), 10);
        assert_eq!(pino_level(Level::Info), 30);
        assert_eq!(pino_level(Level::Critical), 60);
    }

    #[test]
    fn lines_are_pino_json_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let logging =
            Logging::init(&LogDest::File(path.clone()), LogLevel::Debug, 64, "node-1").unwrap();
        let child = logging.root.new(o!("actor" => "connection"));
        slog::info!(child, "client connected"; "clientId" => "c1", "err" => err_kv("x", "boom"));
        slog::trace!(child, "filtered out");
        logging.finish(Duration::from_secs(2));
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            lines[0].starts_with(r#"{"level":30,"time":"#),
            "{}",
            lines[0]
        );
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["msg"], "client connected");
        assert_eq!(v["nodeId"], "node-1");
        assert_eq!(v["actor"], "connection");
        assert_eq!(v["clientId"], "c1");
        assert_eq!(v["err"]["type"], "x");
        assert!(v["time"].as_u64().unwrap() > 1_600_000_000_000);
    }

    #[test]
    fn overflow_is_counted_not_blocking() {
        // A stdout gate that is never opened behaves like a sink nobody reads.
        let logging = Logging::init(&LogDest::Stdout, LogLevel::Info, 4, "n").unwrap();
        for i in 0..100 {
            slog::info!(logging.root, "line"; "i" => i);
        }
        let dropped = logging.dropped.load(Ordering::Relaxed);
        assert!(dropped >= 90, "dropped {dropped}");
        // Never opened: finish must still return within its bound.
        let t0 = std::time::Instant::now();
        logging.finish(Duration::from_millis(300));
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
