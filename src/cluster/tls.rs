//! Mutual TLS of the peer links (`--cluster-tls-cert`, `--cluster-tls-key`, `--cluster-tls-ca`):
//! each side presents its certificate and accepts the other's only when the cluster's CA signed
//! it. The UDP membership datagrams are not covered: the cluster secret authenticates those.
//!
//! Names are not checked, only the chain: a peer is dialled at whatever address membership
//! learned (an IP that changes with every pod), so a certificate naming it cannot be made in
//! advance. The CA therefore has to be the cluster's own: every certificate it signs is a member
//! (Elasticsearch's `verification_mode: certificate`, Consul without `verify_server_hostname`).
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::config::TlsFiles;

/// A PEM file that cannot serve: unreadable, or without what it should hold. Shared with the
/// client port's TLS, whose files are read the same way.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: std::path::PathBuf,
        expected: &'static str,
    },
}

/// Why the TLS files could not be used; the node does not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("cannot use the cluster TLS files: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot use the cluster CA: {0}")]
    Verifier(String),
}

impl TlsError {
    pub fn code(&self) -> &'static str {
        match self {
            TlsError::Pem(PemError::Read { .. }) => "cluster_tls_unreadable",
            TlsError::Pem(PemError::Empty { .. }) => "cluster_tls_empty",
            TlsError::Rustls(_) | TlsError::Verifier(_) => "cluster_tls_invalid",
        }
    }
}

/// Both ends of the handshake, built once from the files at start.
pub struct ClusterTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl ClusterTls {
    pub fn load(files: &TlsFiles) -> Result<ClusterTls, TlsError> {
        // rustls deprecates ring's provider for lacking post-quantum key exchange (X25519 and
        // the NIST curves remain). aws-lc-rs has it at the price of a C build of minutes per
        // clean build on 2 cores; for links inside the cluster's network, ring is the trade.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certs("certificate", &files.cert)?;
        let key = read_key(&files.key)?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs("CA", &files.ca)? {
            roots.add(ca)?;
        }
        let roots = Arc::new(roots);

        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), key.clone_key())?;

        let servers = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(servers)))
            .with_client_auth_cert(chain, key)?;

        Ok(ClusterTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server side of a connection a peer dialled.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await.map(TlsStream::Server)
    }

    /// The client side of a connection this node dialled.
    pub async fn connect(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        // The name is never checked (see the module's comment); the peer's address is the
        // honest one to send.
        let name = match stream.peer_addr() {
            Ok(addr) => ServerName::IpAddress(addr.ip().into()),
            Err(_) => ServerName::try_from("topgun-peer").map_err(std::io::Error::other)?,
        };
        self.connector
            .connect(name, stream)
            .await
            .map(TlsStream::Client)
    }
}

/// The certificates of a PEM file, in order (a chain: the end entity first).
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| PemError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::Empty {
            what,
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => PemError::Empty {
            what: "key",
            path: path.to_owned(),
            expected: "PRIVATE KEY",
        },
        source => PemError::Read {
            what: "key",
            path: path.to_owned(),
            source,
        },
    })
}

/// The WebPKI verification of the peer's chain against the cluster CA, without its names.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, after the chain, its validity period and its usage: a
        // name mismatch means every other check passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
