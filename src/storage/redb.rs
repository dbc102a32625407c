//! The `redb` backend: one database file `topgun.redb` in the data dir. Values are MessagePack
//! of the wire records (the same bytes a client would send), keyed by (map, key[, tag]).
//! redb commits with `Durability::Immediate` (fsync) and holds a file lock, so a second node
//! on the same data dir fails to open instead of corrupting it.
use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Backend, Mutation, OpenError, Recovered, StorageError};
use crate::protocol::types::{LwwRecord, OrMapRecord, Timestamp};

const LWW: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("lww");
const OR_RECORDS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("or_records");
const OR_REMOVED: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("or_removed");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const HLC_KEY: &str = "hlc";

pub const FILE_NAME: &str = "topgun.redb";

pub struct RedbBackend {
    db: Database,
    path: PathBuf,
    hlc: Option<Timestamp>,
    /// Debug builds only: commits from this index on fail (tests of the failure path).
    fail_from: Option<u64>,
    commits: u64,
}

impl RedbBackend {
    /// Opens (or creates) the database and reads everything back.
    pub fn open(dir: &Path) -> Result<(RedbBackend, Recovered), OpenError> {
        let path = dir.join(FILE_NAME);
        let shown = path.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| OpenError::Unusable {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                OpenError::Locked {
                    path: shown.clone(),
                }
            }
            // redb reports a file that is not a redb database as an I/O error of kind
            // InvalidData ("magic number mismatch"): that is corruption, not permissions.
            DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() != std::io::ErrorKind::InvalidData =>
            {
                OpenError::Unusable {
                    path: shown.clone(),
                    message: io.to_string(),
                }
            }
            other => OpenError::Corrupt {
                path: shown.clone(),
                message: other.to_string(),
            },
        })?;
        let recovered = read_all(&db).map_err(|message| OpenError::Corrupt {
            path: shown.clone(),
            message,
        })?;
        let fail_from = if cfg!(debug_assertions) {
            std::env::var("TOPGUN_FAULT_FAIL_COMMITS_FROM")
                .ok()
                .and_then(|v| v.parse().ok())
        } else {
            None
        };
        Ok((
            RedbBackend {
                db,
                path,
                hlc: recovered.hlc.clone(),
                fail_from,
                commits: 0,
            },
            recovered,
        ))
    }
}

fn read_all(db: &Database) -> Result<Recovered, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let txn = db.begin_read().map_err(|x| e(&x))?;
    let mut out = Recovered::default();
    match txn.open_table(LWW) {
        Ok(t) => {
            for row in t.iter().map_err(|x| e(&x))? {
                let (k, v) = row.map_err(|x| e(&x))?;
                let (map, key) = k.value();
                let record: LwwRecord = rmp_serde::from_slice(v.value())
                    .map_err(|x| format!("lww {map}/{key}: {x}"))?;
                out.lww.push((map.to_owned(), key.to_owned(), record));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(x) => return Err(e(&x)),
    }
    match txn.open_table(OR_RECORDS) {
        Ok(t) => {
            for row in t.iter().map_err(|x| e(&x))? {
                let (k, v) = row.map_err(|x| e(&x))?;
                let (map, key, _tag) = k.value();
                let record: OrMapRecord =
                    rmp_serde::from_slice(v.value()).map_err(|x| format!("or {map}/{key}: {x}"))?;
                out.or_records
                    .push((map.to_owned(), key.to_owned(), record));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(x) => return Err(e(&x)),
    }
    match txn.open_table(OR_REMOVED) {
        Ok(t) => {
            for row in t.iter().map_err(|x| e(&x))? {
                let (k, _) = row.map_err(|x| e(&x))?;
                let (map, key, tag) = k.value();
                out.or_removed
                    .push((map.to_owned(), key.to_owned(), tag.to_owned()));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(x) => return Err(e(&x)),
    }
    match txn.open_table(META) {
        Ok(t) => {
            if let Some(v) = t.get(HLC_KEY).map_err(|x| e(&x))? {
                out.hlc = Some(rmp_serde::from_slice(v.value()).map_err(|x| format!("hlc: {x}"))?);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(x) => return Err(e(&x)),
    }
    Ok(out)
}

fn to_bytes<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    rmp_serde::to_vec_named(v).map_err(|e| StorageError {
        op: "encode",
        message: e.to_string(),
    })
}

fn commit_error(e: impl std::fmt::Display) -> StorageError {
    StorageError {
        op: "commit",
        message: e.to_string(),
    }
}

impl Backend for RedbBackend {
    fn commit(
        &mut self,
        mutations: &[Mutation],
        hlc: Option<&Timestamp>,
    ) -> Result<(), StorageError> {
        self.commits += 1;
        if self.fail_from.is_some_and(|n| self.commits >= n) {
            return Err(commit_error(
                "injected failure (TOPGUN_FAULT_FAIL_COMMITS_FROM)",
            ));
        }
        let txn = self.db.begin_write().map_err(commit_error)?;
        {
            let mut lww = txn.open_table(LWW).map_err(commit_error)?;
            let mut or_records = txn.open_table(OR_RECORDS).map_err(commit_error)?;
            let mut or_removed = txn.open_table(OR_REMOVED).map_err(commit_error)?;
            for m in mutations {
                match m {
                    Mutation::Lww { map, key, record } => {
                        lww.insert((map.as_str(), key.as_str()), to_bytes(record)?.as_slice())
                            .map_err(commit_error)?;
                    }
                    Mutation::Purge { map, key } => {
                        lww.remove((map.as_str(), key.as_str()))
                            .map_err(commit_error)?;
                    }
                    Mutation::PurgeOr {
                        map,
                        key,
                        tags,
                        removed,
                    } => {
                        for tag in tags {
                            or_records
                                .remove((map.as_str(), key.as_str(), tag.as_str()))
                                .map_err(commit_error)?;
                        }
                        for tag in removed {
                            or_removed
                                .remove((map.as_str(), key.as_str(), tag.as_str()))
                                .map_err(commit_error)?;
                        }
                    }
                    Mutation::OrAdd { map, key, record } => {
                        or_records
                            .insert(
                                (map.as_str(), key.as_str(), record.tag.as_str()),
                                to_bytes(record)?.as_slice(),
                            )
                            .map_err(commit_error)?;
                    }
                    Mutation::OrRemove { map, key, tag } => {
                        or_records
                            .remove((map.as_str(), key.as_str(), tag.as_str()))
                            .map_err(commit_error)?;
                        or_removed
                            .insert((map.as_str(), key.as_str(), tag.as_str()), ())
                            .map_err(commit_error)?;
                    }
                }
            }
            if let Some(ts) = hlc {
                if self.hlc.as_ref().is_none_or(|h| ts > h) {
                    let mut meta = txn.open_table(META).map_err(commit_error)?;
                    meta.insert(HLC_KEY, to_bytes(ts)?.as_slice())
                        .map_err(commit_error)?;
                }
            }
        }
        txn.commit().map_err(commit_error)?;
        if let Some(ts) = hlc {
            if self.hlc.as_ref().is_none_or(|h| ts > h) {
                self.hlc = Some(ts.clone());
            }
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    fn name(&self) -> &'static str {
        "redb"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(millis: u64) -> Timestamp {
        Timestamp {
            millis,
            counter: 0,
            node_id: "n".into(),
        }
    }

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut b, rec) = RedbBackend::open(dir.path()).unwrap();
            assert_eq!(rec.records(), 0);
            let muts = vec![
                Mutation::Lww {
                    map: "m".into(),
                    key: "a".into(),
                    record: LwwRecord {
                        value: 1.into(),
                        timestamp: ts(5),
                        ttl_ms: None,
                    },
                },
                Mutation::Lww {
                    map: "m".into(),
                    key: "gone".into(),
                    record: LwwRecord {
                        value: rmpv::Value::Nil,
                        timestamp: ts(6),
                        ttl_ms: Some(9),
                    },
                },
                Mutation::OrAdd {
                    map: "o".into(),
                    key: "k".into(),
                    record: OrMapRecord {
                        value: "x".into(),
                        timestamp: ts(7),
                        tag: "t1".into(),
                        ttl_ms: None,
                    },
                },
                Mutation::OrRemove {
                    map: "o".into(),
                    key: "k".into(),
                    tag: "t0".into(),
                },
            ];
            b.commit(&muts, Some(&ts(7))).unwrap();
            b.commit(
                &[Mutation::Purge {
                    map: "m".into(),
                    key: "gone".into(),
                }],
                None,
            )
            .unwrap();
        }
        let (_, rec) = RedbBackend::open(dir.path()).unwrap();
        assert_eq!(rec.lww.len(), 1);
        assert_eq!(rec.lww[0].2.value, rmpv::Value::from(1));
        assert_eq!(rec.or_records.len(), 1);
        assert_eq!(rec.or_removed, vec![("o".into(), "k".into(), "t0".into())]);
        assert_eq!(rec.hlc, Some(ts(7)));
    }

    #[test]
    fn a_second_open_is_refused_and_garbage_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RedbBackend::open(dir.path()).unwrap();
        assert!(matches!(
            RedbBackend::open(dir.path()),
            Err(OpenError::Locked { .. })
        ));
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(FILE_NAME), vec![0x42u8; 8192]).unwrap();
        assert!(matches!(
            RedbBackend::open(other.path()),
            Err(OpenError::Corrupt { .. })
        ));
    }
}
