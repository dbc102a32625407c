//! The binary's commands besides running a node: `check-config` and `healthcheck` (what an
//! operator runs before a deploy, and what a distroless image runs instead of curl).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::{Checked, Source};

/// `topgun-node check-config [FLAGS]`: every setting as the node would use it, with where it
/// came from. The caller turns an error into exit 2.
pub fn render_check(checked: &Checked) -> String {
    let mut out = String::new();
    out.push_str(&match &checked.file {
        Some(path) => format!("# configuration: valid (file {})\n", path.display()),
        None => "# configuration: valid (no file)\n".to_owned(),
    });
    let width = checked
        .config
        .effective()
        .iter()
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0);
    let mut line = |key: &str, value: &str, source: Option<&Source>| {
        let source = source.map_or_else(|| "default".to_owned(), Source::to_string);
        out.push_str(&format!("{key:<width$} = {value:<24} # {source}\n"));
    };
    if let Some(path) = &checked.file {
        line(
            "config",
            &path.display().to_string(),
            checked.sources.get("config"),
        );
    }
    if let Some(path) = &checked.cluster_secret_file {
        line(
            "cluster_secret_file",
            &path.display().to_string(),
            checked.sources.get("cluster_secret_file"),
        );
    }
    for (key, value) in checked.config.effective() {
        line(key, &value, checked.sources.get(key));
    }
    out
}

/// `topgun-node healthcheck [URL]`: GET the URL (default: `/health` of this machine's node,
/// on the metrics port when `TOPGUN_METRICS_PORT` is set, else on `PORT` or 8080). Plain HTTP
/// only: with TLS on the client port, point it at the metrics port. `Ok` on a 200.
pub fn healthcheck(url: Option<&str>) -> Result<(), String> {
    let url = match url {
        Some(u) => u.to_owned(),
        None => {
            let port = std::env::var("TOPGUN_METRICS_PORT")
                .or_else(|_| std::env::var("PORT"))
                .unwrap_or_else(|_| "8080".to_owned());
            format!("http://127.0.0.1:{port}/health")
        }
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs (use the metrics port with TLS)"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let timeout = Duration::from_secs(2);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{url}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| format!("{url}: {e}"))?;
    let status = String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_default();
    if status == "200" {
        Ok(())
    } else {
        Err(format!("{url}: status {status:?}"))
    }
}
