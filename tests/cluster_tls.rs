//! Mutual TLS of the peer links with real node processes and certificates made here: nodes
//! whose certificates the cluster CA signed form one grid over TLS, the cluster port refuses
//! plain TCP and TLS clients without a certificate of that CA, and a node whose certificate
//! another CA signed never gets a link, with the refusal counted and logged on both sides.
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::*;
use common::tls::TestCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA that signs node certificates into a directory of PEM files.
struct Ca(TestCa);

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        Ca(TestCa::new(dir, name))
    }

    fn ca_file(&self) -> PathBuf {
        self.0.ca_file()
    }

    /// A certificate for `node` (named after it, not after its address: names are not
    /// checked) usable by both ends of a link; its cert and key files.
    fn sign(&self, node: &str) -> (PathBuf, PathBuf) {
        let (cert_file, key_file) = (
            self.0.dir.join(format!("{node}.pem")),
            self.0.dir.join(format!("{node}-key.pem")),
        );
        self.0.sign_into(&[node], &cert_file, &key_file);
        (cert_file, key_file)
    }

    /// The flags of a node with a certificate of this CA, trusting `trusted`'s.
    fn flags(&self, node: &str, trusted: &Ca) -> Vec<String> {
        let (cert, key) = self.sign(node);
        vec![
            "--cluster-tls-cert".into(),
            cert.display().to_string(),
            "--cluster-tls-key".into(),
            key.display().to_string(),
            "--cluster-tls-ca".into(),
            trusted.ca_file().display().to_string(),
        ]
    }
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn counter(m: &Member, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.node.scrape().value_or_zero(name, labels)
}

/// A TLS client of the cluster port presenting `identity` (cert and key files), or none; it
/// trusts `ca`. `Ok` when the handshake completed and the node did not close the connection
/// right after it (a TLS 1.3 server checks the client's certificate after the client thinks
/// the handshake is done, and says so with an alert on the first read).
async fn tls_handshake(
    port: u16,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<(), String> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA pem")).expect("CA cert");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("cert file")
                    .map(|c| c.expect("cert pem"))
                    .collect(),
                PrivateKeyDer::from_pem_file(key).expect("key file"),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The node's certificate names its node id, not the address: the client checks the name
    // it was given, so give it that one.
    let name = ServerName::try_from("node-a").expect("name");
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    // Anything at all: an accepted client is then waited on for its HELLO frame, a refused one
    // gets an alert.
    let _ = tls.write_all(&[0, 0, 0, 0]).await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(1_500), tls.read(&mut buf)).await {
        Err(_) => Ok(()),
        Ok(Ok(0)) => Err("closed after the handshake".into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("after the handshake: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_certificates_of_the_cluster_ca_form_a_grid_over_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let stranger = Ca::new(dir.path(), "stranger");
    // With the cluster secret too, as an operator runs it: its handshake goes inside the TLS.
    let flags = |node: &str| {
        let mut f = ca.flags(node, &ca);
        f.extend(["--cluster-secret".into(), "the grid's shared secret".into()]);
        f
    };
    let a = start("node-a", None, 0, &as_strs(&flags("node-a")));
    let b = start(
        "node-b",
        Some(a.cluster_port),
        0,
        &as_strs(&flags("node-b")),
    );
    wait_settled(&[&a, &b], Duration::from_secs(20));
    for m in [&a, &b] {
        assert_eq!(
            lines_with(
                m,
                "cluster links use mutual TLS: peers need a certificate of the cluster CA"
            )
            .len(),
            1,
            "{}: start line of the cluster TLS",
            m.id
        );
    }

    // Keys of every partition: forwards to the owner, replicas and gathered reads cross the links.
    let want = write_keys(&a, "m", "k", 40).await;
    wait_keys(&b, "m", &want, Duration::from_secs(10)).await;
    assert_eq!(
        counter(&a, "topgun_cluster_peer_errors_total", &[("reason", "tls")]),
        0.0,
        "no TLS failure between members"
    );

    // The cluster port speaks TLS and wants the client's certificate of the cluster CA.
    let (cert, key) = ca.sign("a-client");
    tls_handshake(a.cluster_port, &ca.ca_file(), Some((&cert, &key)))
        .await
        .expect("a certificate of the cluster CA is accepted");
    let no_cert = tls_handshake(a.cluster_port, &ca.ca_file(), None).await;
    assert!(
        no_cert.is_err(),
        "a TLS client without a certificate got in"
    );
    let (cert, key) = stranger.sign("intruder");
    let wrong = tls_handshake(a.cluster_port, &ca.ca_file(), Some((&cert, &key))).await;
    assert!(wrong.is_err(), "a certificate of another CA got in");
    eprintln!("refused: no certificate: {no_cert:?}; another CA's: {wrong:?}");

    // Plain TCP, a HELLO-sized frame: the TLS server reads it as a broken ClientHello.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", a.cluster_port))
        .await
        .expect("connect");
    let _ = plain.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await;
    assert!(
        !matches!(read, Ok(Ok(n)) if n > 0 && buf[0] == 0),
        "a plain-text peer got a frame back: {read:?}"
    );

    wait_for(
        "node-a counts the three refused handshakes as tls",
        Duration::from_secs(10),
        || match counter(&a, "topgun_cluster_peer_errors_total", &[("reason", "tls")]) {
            n if n >= 3.0 => Ok(()),
            n => Err(format!("{n}")),
        },
    );
    // Once a minute per address: the three came from 127.0.0.1.
    let refused = lines_with(&a, "peer refused: its TLS handshake failed");
    assert_eq!(refused.len(), 1, "refusal lines: {refused:#?}");
    assert_eq!(refused[0]["err"]["type"], "tls");
    assert_eq!(refused[0]["level"], 40);
    // The members' own links were never touched.
    wait_keys(&a, "m", &want, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_another_ca_signed_gets_no_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let other = Ca::new(dir.path(), "other");
    let a = start("node-a", None, 0, &as_strs(&ca.flags("node-a", &ca)));
    // Its certificate and its trust both come from the other CA: each side refuses the other.
    let c = start(
        "node-c",
        Some(a.cluster_port),
        0,
        &as_strs(&other.flags("node-c", &other)),
    );
    // Membership (UDP) is the cluster secret's to guard, not TLS's: node-c is seen as a member,
    // and every link between the two fails its handshake.
    wait_members(&[&a, &c], 2, Duration::from_secs(20));
    for (m, msg) in [
        (&a, "peer refused: its TLS handshake failed"),
        (&c, "peer link refused: the TLS handshake failed"),
    ] {
        let line = wait_line(m, msg, "err.type tls", |l| l["err"]["type"] == "tls");
        eprintln!("{}: {line}", m.id);
    }
    // Dialled again and again, refused every time, logged once a minute.
    for m in [&a, &c] {
        wait_for(
            &format!("{}: two tls refusals", m.id),
            Duration::from_secs(10),
            || match counter(m, "topgun_cluster_peer_errors_total", &[("reason", "tls")]) {
                n if n >= 2.0 => Ok(()),
                n => Err(n.to_string()),
            },
        );
        assert_eq!(
            counter(m, "topgun_cluster_peer_links", &[]),
            0.0,
            "{}",
            m.id
        );
    }
    assert_eq!(
        lines_with(&c, "peer link refused: the TLS handshake failed").len(),
        1,
        "node-c logs the refused link once a minute"
    );
    assert!(
        counter(
            &c,
            "topgun_events_total",
            &[("event", "peer_dial_tls_failed"), ("level", "warn")]
        ) >= 2.0,
        "the event counts every refusal, logged or not"
    );
    // An operator sees it on /ready: the member without a link, by name.
    wait_for(
        "node-a's /ready names node-c as missing a link",
        Duration::from_secs(10),
        || match common::http_get(a.node.http_addr(), "/ready") {
            Ok((200, body)) if body.contains("degraded") && body.contains("node-c") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}
