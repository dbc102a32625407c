//! Keys and a key server made by the tests: a signing key of each algorithm (P-256 and Ed25519
//! generated with rcgen, RSA a committed throwaway key: rcgen's ring backend cannot generate
//! RSA), its public JWK, tokens signed with its `kid`, and a small HTTP(S) server whose key
//! set (or failure) the test changes while the node runs, counting the fetches.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The RSA key of the RS256 tests (2048 bits, `openssl genpkey`; see tests/fixtures/jwt).
pub const RSA_PRIVATE_PEM: &str = include_str!("../fixtures/jwt/rsa-private.pem");
pub const RSA_PUBLIC_PEM: &str = include_str!("../fixtures/jwt/rsa-public.pem");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A key that signs tokens, and its public half as a JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    pub fn hs256(kid: &str, secret: &[u8]) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret),
            jwk: json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": b64(secret)}),
        }
    }

    pub fn es256(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256");
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC key"),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": b64(&point[1..33]), "y": b64(&point[33..]),
            }),
        }
    }

    pub fn eddsa(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519");
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("Ed key"),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
                "x": b64(pair.public_key_raw()),
            }),
        }
    }

    pub fn rs256(kid: &str) -> SigningKey {
        let encoding = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("RSA key");
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("JWK"),
        )
        .expect("JWK to JSON");
        jwk["kid"] = kid.into();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding,
            jwk,
        }
    }

    /// A token for `sub` with this key's `kid`, valid for an hour.
    pub fn token(&self, sub: &str) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign(header, sub)
    }

    /// The same without a `kid` in the header.
    pub fn token_without_kid(&self, sub: &str) -> String {
        self.sign(Header::new(self.alg), sub)
    }

    /// A token naming `kid` (not necessarily this key's), signed with this key.
    pub fn token_as(&self, kid: &str, sub: &str) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.into());
        self.sign(header, sub)
    }

    fn sign(&self, header: Header, sub: &str) -> String {
        let exp = super::now_millis() / 1000 + 3600;
        jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": exp}), &self.encoding)
            .expect("sign token")
    }
}

/// A JWKS document of these keys.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Writes `text` to `path` whole (a rename, as a config management tool or a Kubernetes
/// volume update does), so the node never reads half a file.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// What the server answers.
#[derive(Clone)]
pub enum Answer {
    /// 200 with this body.
    Keys(String),
    /// This status, a short text body.
    Status(u16),
    /// Closes the connection without answering.
    Hangup,
}

/// A key server on 127.0.0.1 (HTTP, or HTTPS with a certificate the test made), one request
/// per connection, in a thread of its own; stopped on drop.
pub struct JwksServer {
    pub addr: SocketAddr,
    tls: bool,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JwksServer {
    pub fn start(answer: Answer) -> JwksServer {
        JwksServer::spawn(answer, None)
    }

    /// HTTPS with this certificate chain and key (PEM files).
    pub fn start_tls(answer: Answer, cert: &Path, key: &Path) -> JwksServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .expect("cert file")
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_file(key).expect("key file");
        // The node's provider (see src/cluster/tls.rs).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        JwksServer::spawn(answer, Some(Arc::new(config)))
    }

    fn spawn(answer: Answer, tls: Option<Arc<rustls::ServerConfig>>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let is_tls = tls.is_some();
        let thread = {
            let (answer, requests, stop) = (answer.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    // A client that connects and says nothing must not stop the server.
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let current = answer.lock().expect("answer").clone();
                    let _ = match &tls {
                        None => serve(stream, &current, &requests),
                        Some(config) => {
                            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                                continue;
                            };
                            let tls_stream = rustls::StreamOwned::new(conn, stream);
                            serve(tls_stream, &current, &requests)
                        }
                    };
                }
            })
        };
        JwksServer {
            addr,
            tls: is_tls,
            answer,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/.well-known/jwks.json", self.addr)
    }

    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().expect("answer") = answer;
    }

    /// Requests answered so far (a TLS connection that failed its handshake is not one).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests were answered.
    pub fn wait_requests(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.requests() < n {
            assert!(
                Instant::now() < deadline,
                "{} JWKS requests, want {n}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head and writes the answer.
fn serve<S: Read + Write>(
    mut stream: S,
    answer: &Answer,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 64 * 1024 {
            return Ok(());
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let (status, body) = match answer {
        Answer::Keys(body) => (200, body.clone()),
        Answer::Status(status) => (*status, "no keys here\n".to_owned()),
        Answer::Hangup => return Ok(()),
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}
