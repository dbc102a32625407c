//! The node id: configured, or kept in the data dir.
use std::io::Write;
use std::path::Path;

use super::StartError;
use crate::config::{Config, StorageBackend};

/// The node id: the configured one, or the one kept in the data dir (written on first start).
/// With the memory backend nothing is written and an unset id is generated per run.
/// With the durable backend the data dir is checked (created, writable) even when the id is
/// configured: an unusable data dir must stop the node at start, not at its first write.
pub fn resolve_node_id(config: &Config) -> Result<String, StartError> {
    if config.storage_backend == StorageBackend::Memory {
        return Ok(config.node_id.clone().unwrap_or_else(generate_node_id));
    }
    let dir = &config.data_dir;
    let data_dir_error = |message: String| StartError::DataDir {
        path: dir.clone(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| data_dir_error(e.to_string()))?;
    let probe = dir.join(".write-probe");
    write_atomically(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| data_dir_error(format!("not writable: {e}")))?;
    if let Some(id) = &config.node_id {
        return Ok(id.clone());
    }
    let path = dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_owned();
            crate::config::validate_node_id(&id).map_err(|m| {
                data_dir_error(format!("{} holds a bad node id: {m}", path.display()))
            })?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = generate_node_id();
            write_atomically(&path, id.as_bytes()).map_err(|e| data_dir_error(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(data_dir_error(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn generate_node_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("node-{}", &uuid[..12])
}

/// Write-then-rename, so a crash mid-write never leaves a half-written id behind.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
