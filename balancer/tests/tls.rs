//! TLS termination over real sockets: HTTP/2 and HTTP/1.1 by ALPN, SNI
//! certificate choice, and certificate hot reload. Certificates are made by
//! rcgen in each test and written next to the config file.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Backend, TestBalancer, text};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use usher_balancer::{Balancer, Options};

/// A self-signed certificate and its key, as PEM and DER.
struct TestCert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed(name: &str) -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    TestCert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes `certs/<file>.pem` and `certs/<file>.key` under `dir`.
fn write_cert(dir: &std::path::Path, file: &str, cert: &TestCert) {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join(format!("{file}.pem")), &cert.cert_pem).unwrap();
    std::fs::write(certs.join(format!("{file}.key")), &cert.key_pem).unwrap();
}

/// Starts a balancer with one TLS listener `public` in front of `backend`.
/// `certs` are `(file stem, certificate, serverNames)`; the first is the default.
/// Certificate paths in the config are relative to the config file.
async fn start_tls(
    backend: &Backend,
    certs: &[(&str, &TestCert, Option<&str>)],
    options: Options,
) -> TestBalancer {
    start_tls_with(backend, certs, "", options).await
}

/// Same, with extra listener YAML (indented 4 spaces), e.g. `limits`.
async fn start_tls_with(
    backend: &Backend,
    certs: &[(&str, &TestCert, Option<&str>)],
    listener_extra: &str,
    options: Options,
) -> TestBalancer {
    let dir = tempfile::tempdir().unwrap();
    let mut list = String::new();
    for (file, cert, names) in certs {
        write_cert(dir.path(), file, cert);
        list.push_str(&format!(
            "        - certFile: certs/{file}.pem\n          keyFile: certs/{file}.key\n"
        ));
        if let Some(names) = names {
            list.push_str(&format!("          serverNames: [{names}]\n"));
        }
    }
    let yaml = format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n{list}{listener_extra}routes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static:\n        - \"{}\"\n",
        backend.address()
    );
    let path = dir.path().join("balancer.yaml");
    std::fs::write(&path, yaml).unwrap();
    let balancer = Balancer::start(&path, options).await.unwrap();
    TestBalancer {
        balancer,
        dir,
        path,
    }
}

fn tls_addr(tb: &TestBalancer) -> SocketAddr {
    tb.balancer.listener_addr("public").unwrap()
}

/// A client config that trusts exactly `trusted`, offering `alpn`.
fn trusting(trusted: &[&TestCert], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in trusted {
        roots.add(c.der.clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Accepts any certificate (signatures on the handshake are still checked):
/// for looking at what the server presents for names no certificate covers.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn accepting_any() -> Arc<ClientConfig> {
    let p = provider();
    let mut config = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(p)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// TCP connect and TLS handshake with SNI `server_name`, within 10 s.
async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(config).connect(name, tcp).await
    })
    .await
    .expect("TLS connect timed out")
}

/// The leaf certificate the server presented.
fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("the server sent certificates")[0]
        .clone()
        .into_owned()
}

/// An HTTP/1.1 connection over `tls`.
async fn http1(tls: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn body_text(resp: http::Response<Incoming>) -> String {
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body timed out")
        .unwrap();
    String::from_utf8_lossy(&body.to_bytes()).into_owned()
}

/// GET `path` with `Host: host` on an HTTP/1.1 connection; status and body.
async fn get1(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> (StatusCode, String) {
    sender.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("request timed out")
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_11);
    let status = resp.status();
    (status, body_text(resp).await)
}

/// A backend that describes what it was sent.
async fn describing_backend() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        text(
            200,
            format!(
                "path={} proto={} host={}",
                req.uri().path(),
                h("x-forwarded-proto"),
                h("x-forwarded-host")
            ),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http11_are_negotiated_by_alpn_on_one_tls_listener() {
    let backend = describing_backend().await;
    let lms = self_signed("lms.example.edu");
    let tb = start_tls(
        &backend,
        &[("lms", &lms, None)],
        Options {
            watch_interval: None,
            ..Default::default()
        },
    )
    .await;
    let addr = tls_addr(&tb);

    // HTTP/2: ALPN h2, then hyper's HTTP/2 client on the TLS stream.
    let tls = connect(addr, trusting(&[&lms], &[b"h2"]), "lms.example.edu")
        .await
        .expect("TLS handshake (h2)");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::get(format!("https://lms.example.edu/course/view.php?id={i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), h2.send_request(req))
            .await
            .expect("h2 request timed out")
            .unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().contains_key("x-request-id"));
        assert_eq!(
            body_text(resp).await,
            "path=/course/view.php proto=https host=lms.example.edu"
        );
    }

    // HTTP/1.1 on the same listener when the client offers only http/1.1.
    let tls = connect(addr, trusting(&[&lms], &[b"http/1.1"]), "lms.example.edu")
        .await
        .expect("TLS handshake (http/1.1)");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = http1(tls).await;
    for _ in 0..2 {
        let (status, body) = get1(&mut h1, "lms.example.edu", "/mod/quiz/attempt.php").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "path=/mod/quiz/attempt.php proto=https host=lms.example.edu"
        );
    }

    // Offered both, the server prefers h2.
    let tls = connect(
        addr,
        trusting(&[&lms], &[b"http/1.1", b"h2"]),
        "lms.example.edu",
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    assert_eq!(backend.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_unknown_names_get_the_first() {
    let backend = describing_backend().await;
    let lms = self_signed("lms.example.edu");
    let other = self_signed("other.example.edu");
    // The first certificate takes its names from the certificate itself.
    let tb = start_tls(
        &backend,
        &[
            ("lms", &lms, None),
            ("other", &other, Some("other.example.edu")),
        ],
        Options {
            watch_interval: None,
            ..Default::default()
        },
    )
    .await;
    let addr = tls_addr(&tb);

    // Each name verifies against its own certificate only.
    for (cert, name) in [(&lms, "lms.example.edu"), (&other, "other.example.edu")] {
        let tls = connect(addr, trusting(&[cert], &[b"http/1.1"]), name)
            .await
            .unwrap_or_else(|e| panic!("{name} verifies: {e:?}"));
        assert_eq!(presented(&tls), cert.der);
        let mut h1 = http1(tls).await;
        assert_eq!(
            get1(&mut h1, name, "/").await,
            (StatusCode::OK, format!("path=/ proto=https host={name}"))
        );
    }

    // SNI matching ignores case.
    let tls = connect(
        addr,
        trusting(&[&other], &[b"http/1.1"]),
        "OTHER.Example.EDU",
    )
    .await
    .expect("case-insensitive SNI");
    assert_eq!(presented(&tls), other.der);

    // A client that only trusts `other` must not accept what is served for lms.
    let err = connect(addr, trusting(&[&other], &[b"http/1.1"]), "lms.example.edu")
        .await
        .expect_err("the lms certificate is not signed by `other`");
    assert!(
        err.to_string().contains("certificate"),
        "unexpected handshake error: {err}"
    );

    // Unknown names get the first (default) certificate.
    for unknown in ["unknown.example.edu", "example.org"] {
        let tls = connect(addr, accepting_any(), unknown)
            .await
            .unwrap_or_else(|e| panic!("handshake for {unknown}: {e}"));
        assert_eq!(
            presented(&tls),
            lms.der,
            "{unknown} should get the default certificate"
        );
    }
    // So do clients that send no SNI at all (connecting by IP address).
    let tls = connect(addr, accepting_any(), "127.0.0.1").await.unwrap();
    assert_eq!(presented(&tls), lms.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_swapped_on_reload_without_dropping_connections() {
    let backend = describing_backend().await;
    let old = self_signed("lms.example.edu");
    let tb = start_tls(
        &backend,
        &[("lms", &old, None)],
        Options {
            watch_interval: None,
            ..Default::default()
        },
    )
    .await;
    let addr = tls_addr(&tb);

    let tls = connect(addr, trusting(&[&old], &[b"http/1.1"]), "lms.example.edu")
        .await
        .unwrap();
    assert_eq!(presented(&tls), old.der);
    let mut established = http1(tls).await;
    assert_eq!(
        get1(&mut established, "lms.example.edu", "/before").await.0,
        StatusCode::OK
    );

    // Renewal: new key and certificate in the same files.
    let new = self_signed("lms.example.edu");
    assert_ne!(new.der, old.der);
    write_cert(tb.dir.path(), "lms", &new);
    tb.balancer
        .reload()
        .expect("reload with the renewed certificate");

    // New handshakes get the new certificate (and verify against it)...
    let tls = connect(addr, trusting(&[&new], &[b"http/1.1"]), "lms.example.edu")
        .await
        .expect("handshake with the renewed certificate");
    assert_eq!(presented(&tls), new.der);
    let mut fresh = http1(tls).await;
    assert_eq!(
        get1(&mut fresh, "lms.example.edu", "/after").await,
        (
            StatusCode::OK,
            "path=/after proto=https host=lms.example.edu".to_string()
        )
    );
    assert!(
        connect(addr, trusting(&[&old], &[b"http/1.1"]), "lms.example.edu")
            .await
            .is_err(),
        "the old certificate is still served"
    );

    // ...while the connection made before the reload keeps working.
    assert_eq!(
        get1(&mut established, "lms.example.edu", "/still-open")
            .await
            .0,
        StatusCode::OK
    );

    // A broken renewal (key from another certificate) is rejected and the
    // current certificate stays in service.
    let stray = self_signed("lms.example.edu");
    std::fs::write(tb.dir.path().join("certs/lms.key"), &stray.key_pem).unwrap();
    assert!(
        tb.balancer.reload().is_err(),
        "a certificate with a mismatched key must be rejected"
    );
    let tls = connect(addr, trusting(&[&new], &[b"http/1.1"]), "lms.example.edu")
        .await
        .expect("still serving the renewed certificate");
    assert_eq!(presented(&tls), new.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_watched_and_reloaded() {
    let backend = describing_backend().await;
    let old = self_signed("lms.example.edu");
    let tb = start_tls(
        &backend,
        &[("lms", &old, None)],
        Options {
            watch_interval: Some(Duration::from_millis(100)),
            ..Default::default()
        },
    )
    .await;
    let addr = tls_addr(&tb);
    let tls = connect(addr, accepting_any(), "lms.example.edu")
        .await
        .unwrap();
    assert_eq!(presented(&tls), old.der);

    // Only the certificate files change, not the config file.
    let new = self_signed("lms.example.edu");
    write_cert(tb.dir.path(), "lms", &new);
    let swapped = common::eventually(Duration::from_secs(10), || async {
        let tls = connect(addr, accepting_any(), "lms.example.edu")
            .await
            .unwrap();
        presented(&tls) == new.der
    })
    .await;
    assert!(
        swapped.is_some(),
        "the renewed certificate was not picked up by the file watcher"
    );

    let tls = connect(addr, trusting(&[&new], &[b"h2"]), "lms.example.edu")
        .await
        .expect("handshake with the renewed certificate");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

/// Whether the peer closes `stream` (EOF or reset) within `limit`; whatever it
/// sends before that is discarded.
async fn closed_within(mut stream: impl tokio::io::AsyncRead + Unpin, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_clients_are_closed_after_header_read_timeout() {
    let backend = describing_backend().await;
    let lms = self_signed("lms.example.edu");
    let limits = "    limits:\n      headerReadTimeout: 300ms\n";
    let tb = start_tls_with(
        &backend,
        &[("lms", &lms, None)],
        limits,
        Options {
            watch_interval: None,
            ..Default::default()
        },
    )
    .await;
    let addr = tls_addr(&tb);

    // Never starts the handshake.
    let no_handshake = async {
        closed_within(
            TcpStream::connect(addr).await.unwrap(),
            Duration::from_secs(3),
        )
        .await
    };
    // Completes the handshake (offering h2 and http/1.1), then never sends a request.
    let no_request = async {
        let tls = connect(
            addr,
            trusting(&[&lms], &[b"h2", b"http/1.1"]),
            "lms.example.edu",
        )
        .await
        .unwrap();
        closed_within(tls, Duration::from_secs(3)).await
    };
    let (no_handshake, no_request) = tokio::join!(no_handshake, no_request);
    assert!(
        no_handshake,
        "a client that never starts the TLS handshake was kept open for 3 s (headerReadTimeout is 300ms)"
    );
    assert!(
        no_request,
        "a TLS client that sends no request was kept open for 3 s (headerReadTimeout is 300ms)"
    );

    // A prompt client is served.
    let tls = connect(addr, trusting(&[&lms], &[b"http/1.1"]), "lms.example.edu")
        .await
        .unwrap();
    let mut h1 = http1(tls).await;
    assert_eq!(
        get1(&mut h1, "lms.example.edu", "/").await.0,
        StatusCode::OK
    );
}

/// After ALPN chose `h2`, the connection speaks HTTP/2 only: a bad preface
/// ends it at the HTTP/2 level (GOAWAY(PROTOCOL_ERROR) or a close, what
/// h2spec 3.5/2 accepts), never with an HTTP/1.1 answer.
#[tokio::test]
async fn a_bad_preface_after_alpn_h2_gets_no_http1_answer() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::named("b").await;
    let cert = self_signed("lms.example.edu");
    let tb = start_tls(&backend, &[("lms", &cert, None)], Options::default()).await;
    let mut tls = connect(
        tls_addr(&tb),
        trusting(&[&cert], &[b"h2"]),
        "lms.example.edu",
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: lms.example.edu\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open after a bad preface"
    );
    assert!(
        !out.starts_with(b"HTTP/1.1"),
        "answered in HTTP/1: {:?}",
        String::from_utf8_lossy(&out)
    );
    // What came back is HTTP/2 frames (3-byte length, type, flags, stream
    // id), and a GOAWAY among them carries PROTOCOL_ERROR (1).
    let mut i = 0;
    while i + 9 <= out.len() {
        let len =
            (usize::from(out[i]) << 16) | (usize::from(out[i + 1]) << 8) | usize::from(out[i + 2]);
        let kind = out[i + 3];
        assert!(kind <= 9, "not an HTTP/2 frame type: {kind} in {out:?}");
        if kind == 7 {
            let code = &out[i + 9 + 4..i + 9 + 8];
            assert_eq!(u32::from_be_bytes(code.try_into().unwrap()), 1);
        }
        i += 9 + len;
    }
    assert_eq!(i, out.len(), "trailing bytes that are not a frame: {out:?}");
}
