//! TLS end to end: the HTTPS listener driven by curl (HTTP/1.1 and HTTP/2) and by a rustls
//! client that holds a connection across a certificate renewal; HTTPS to a uvicorn backend
//! serving TLS itself, with and without a client certificate. Certificates come from a CA the
//! test makes (`common::pki`).

use crate::common;

use common::pki::Pki;
use common::{config_for, free_port, Backend, Gateway, CATCH_ALL};
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What curl saw.
struct Seen {
    status: u16,
    version: String,
    headers: String,
    body: String,
    exit: i32,
}

/// `curl` to `url` resolving every name to 127.0.0.1, trusting `ca`.
fn curl(url: &str, ca: &Path, extra: &[&str]) -> Seen {
    let dir = tempfile::tempdir().unwrap();
    let (h, b) = (dir.path().join("h"), dir.path().join("b"));
    let host_port = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let (host, port) = host_port.rsplit_once(':').unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1"), "-D"])
        .arg(&h)
        .arg("-o")
        .arg(&b)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let w = String::from_utf8_lossy(&out.stdout).to_string();
    let mut parts = w.split_whitespace();
    Seen {
        status: parts.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        version: parts.next().unwrap_or("").to_string(),
        headers: std::fs::read_to_string(&h).unwrap_or_default().to_ascii_lowercase(),
        body: std::fs::read_to_string(&b).unwrap_or_default(),
        exit: out.status.code().unwrap_or(-1),
    }
}

fn tls_table(port: u16, certs: &[(&Path, &Path)]) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(c, k)| format!("{{ cert = \"{}\", key = \"{}\" }}", c.display(), k.display()))
        .collect();
    format!("[server.tls]\nlisten = \"127.0.0.1:{port}\"\ncertificates = [{}]\n", list.join(", "))
}

/// A gateway with `server_extra` in `[server]`, then `tls` (a `[server.tls]` table), then `body`.
/// Returns once the HTTPS listener accepts too: the harness waits only for the plain one, and
/// pingora starts its services in no fixed order.
fn start(body: &str, server_extra: &str, tls: &str) -> Gateway {
    let gw = Gateway::start_file(|port, admin| format!("{}{server_extra}\n{tls}\n{body}", common::server_table(port, admin)), &[]);
    if let Some(addr) = tls.split("listen = \"").nth(1).and_then(|r| r.split('"').next()) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the HTTPS listener {addr} never accepted:\n{}", common::tail(&gw.log(), 20));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    gw
}

fn echoed(body: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["headers"].as_array()?.iter().find(|h| h[0] == name).map(|h| h[1].as_str().unwrap_or("").to_string())
}

#[test]
fn https_serves_http1_and_h2_picks_certificates_by_sni_and_redirects_plain_http() {
    let backend = Backend::start();
    let pki = Pki::new("listener");
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test", "*.b.test"]);
    let tls_port = free_port();
    let tls = tls_table(tls_port, &[(&a.cert, &a.key), (&b.cert, &b.key)]);
    let routes = format!("{CATCH_ALL}hsts = {{ max_age = \"1d\", include_subdomains = true }}\n");
    let gw = start(&config_for(&backend.addr(), &routes), "redirect_to_https = true", &tls);

    for (version, flag) in [("1.1", "--http1.1"), ("2", "--http2")] {
        let seen = curl(&format!("https://a.test:{tls_port}/debug/echo"), &pki.ca(), &[flag]);
        assert_eq!((seen.status, seen.version.as_str()), (200, version), "exit {} headers {}", seen.exit, seen.headers);
        assert!(seen.headers.contains("strict-transport-security: max-age=86400; includesubdomains"), "{}", seen.headers);
        assert_eq!(echoed(&seen.body, "x-forwarded-proto").as_deref(), Some("https"), "{}", seen.body);
        assert!(seen.headers.contains("x-request-id:"), "{}", seen.headers);
    }
    // the certificate follows the name: b.test and a one-label wildcard verify against b's;
    // a name no certificate has gets the first, which curl then refuses
    assert_eq!(curl(&format!("https://b.test:{tls_port}/healthz"), &pki.ca(), &[]).status, 200);
    assert_eq!(curl(&format!("https://x.b.test:{tls_port}/healthz"), &pki.ca(), &[]).status, 200);
    let wrong = curl(&format!("https://c.test:{tls_port}/healthz"), &pki.ca(), &[]);
    assert_eq!(wrong.status, 0, "a certificate for c.test was served");
    assert_eq!(wrong.exit, 60, "curl's certificate verification failure");

    // plain HTTP: a 308 to the same target over HTTPS, no HSTS (RFC 6797 8.1), nothing forwarded
    let before = backend_hits(&backend, "/items/1");
    let plain = curl(&format!("http://plain.test:{}/items/1?x=1", gw.port), &pki.ca(), &[]);
    assert_eq!(plain.status, 308);
    assert!(plain.headers.contains(&format!("location: https://plain.test:{tls_port}/items/1?x=1")), "{}", plain.headers);
    assert!(!plain.headers.contains("strict-transport-security"), "{}", plain.headers);
    assert_eq!(backend_hits(&backend, "/items/1"), before);
    // an ACME HTTP-01 challenge is served over plain HTTP (the backend answers it)
    let acme = curl(&format!("http://plain.test:{}/.well-known/acme-challenge/token", gw.port), &pki.ca(), &[]);
    assert_eq!(acme.status, 404, "{}", acme.headers);
    assert!(!acme.headers.contains("location:"));
}

fn backend_hits(backend: &Backend, path: &str) -> u64 {
    tokio::runtime::Runtime::new().unwrap().block_on(backend.hits(path))
}

/// A rustls client trusting `ca`, as a long-lived HTTP/1.1 connection.
async fn connect(port: u16, name: &str, ca: &Path) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    connector.connect(name.to_string().try_into().unwrap(), tcp).await.unwrap()
}

fn served_cert(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One keep-alive GET on `s`; the status.
async fn get(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, path: &str) -> u16 {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return head.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_sighup_while_open_connections_keep_theirs() {
    let backend = Backend::start();
    let pki = Pki::new("renewal");
    let first = pki.issue("a", &["a.test"]);
    let tls_port = free_port();
    let gw = start(&config_for(&backend.addr(), CATCH_ALL), "", &tls_table(tls_port, &[(&first.cert, &first.key)]));

    // each certificate is logged at load with the days it has left (rcgen's default validity
    // runs to 4096, so no warning)
    assert!(gw.log().contains("TLS certificate loaded") && gw.log().contains("days_left"), "{}", common::tail(&gw.log(), 5));
    let mut held = connect(tls_port, "a.test", &pki.ca()).await;
    assert_eq!(get(&mut held, "/healthz").await, 200);
    assert_eq!(served_cert(&held), first.der);

    // renewal in place (what cert-manager or certbot do), then SIGHUP
    let renewed = pki.issue("a", &["a.test"]);
    assert_ne!(renewed.der, first.der);
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = connect(tls_port, "a.test", &pki.ca()).await;
        if served_cert(&fresh) == renewed.der {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not served; log:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the connection opened before the reload was not dropped: same session, still serving
    assert_eq!(get(&mut held, "/healthz").await, 200);
    assert_eq!(served_cert(&held), first.der);

    // a renewal caught half-written (a key that is not PEM) is refused: the certificate in
    // force stays, and the log says which file
    std::fs::write(&renewed.key, "not a key").unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("config reload failed") {
        assert!(Instant::now() < deadline, "no reload failure logged:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.log().contains("a.key"), "{}", common::tail(&gw.log(), 5));
    let mut after = connect(tls_port, "a.test", &pki.ca()).await;
    assert_eq!(served_cert(&after), renewed.der);
    assert_eq!(get(&mut after, "/healthz").await, 200);
}

#[test]
fn a_certificate_that_cannot_be_read_stops_check_and_start_with_its_file() {
    let pki = Pki::new("bad");
    let good = pki.issue("good", &["a.test"]);
    let other = pki.issue("other", &["b.test"]);
    let missing = pki.dir.path().join("missing.pem");
    for (cert, key, needle) in [
        (missing.as_path(), good.key.as_path(), "missing.pem"),
        (good.cert.as_path(), other.key.as_path(), "does not belong"),
    ] {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n{}\n{}",
            free_port(),
            tls_table(free_port(), &[(cert, key)]),
            config_for("127.0.0.1:9", CATCH_ALL)
        );
        let out = common::check_config(&text);
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{said}");
        assert!(said.contains(needle), "{said}");
    }
}

#[test]
fn https_upstreams_verify_the_backend_and_present_a_client_certificate() {
    let pki = Pki::new("upstream");
    let server = pki.issue("backend", &["backend.test"]);
    let client = pki.issue("gateway", &["gateway.test"]);
    let (cert, key, ca) = (server.cert.display().to_string(), server.key.display().to_string(), pki.ca().display().to_string());
    // uvicorn serving TLS itself, and requiring a client certificate from our CA
    let backend =
        Backend::start_on(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), &[("BACKEND_TLS_CERT", &cert), ("BACKEND_TLS_KEY", &key), ("BACKEND_TLS_CLIENT_CA", &ca)]);
    let port = backend.port;
    let body = format!(
        "[upstreams.good]\nservers = [\"https://127.0.0.1:{port}\"]\ntls = {{ ca_file = \"{ca}\", sni = \"backend.test\", cert = \"{}\", key = \"{}\" }}\n\n\
         [upstreams.checked]\nservers = [\"https://127.0.0.1:{port}\"]\ntls = {{ ca_file = \"{ca}\", sni = \"backend.test\", cert = \"{}\", key = \"{}\" }}\n\
         health_check = {{ path = \"/healthz\", interval = \"200ms\" }}\n\n\
         [upstreams.anonymous]\nservers = [\"https://127.0.0.1:{port}\"]\ntls = {{ ca_file = \"{ca}\", sni = \"backend.test\" }}\n\n\
         [upstreams.untrusted]\nservers = [\"https://127.0.0.1:{port}\"]\ntls = {{ sni = \"backend.test\", cert = \"{}\", key = \"{}\" }}\n\n\
         [[routes]]\nname = \"good\"\nmatch = {{ path = \"/debug/echo\" }}\nupstream = \"good\"\n\n\
         [[routes]]\nname = \"checked\"\nmatch = {{ path = \"/openapi.json\" }}\nupstream = \"checked\"\n\n\
         [[routes]]\nname = \"anonymous\"\nmatch = {{ path = \"/healthz\" }}\nupstream = \"anonymous\"\n\n\
         [[routes]]\nname = \"untrusted\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"untrusted\"\n",
        client.cert.display(),
        client.key.display(),
        client.cert.display(),
        client.key.display(),
        client.cert.display(),
        client.key.display()
    );
    let gw = Gateway::start(&body);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        // uvicorn was not waited for: poll through the gateway until it serves
        let ok = loop {
            let r = http.get(gw.url("/debug/echo")).send().await.unwrap();
            if r.status() == 200 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(ok.status(), 200, "log:\n{}", common::tail(&gw.log(), 10));
        let echo: serde_json::Value = ok.json().await.unwrap();
        assert_eq!(echo["path"], "/debug/echo");
        // health checks verify the backend and present the upstream's client certificate too:
        // the checked upstream becomes ready only on a passed check
        let ready = loop {
            let r: serde_json::Value = http.get(gw.admin_url("/readyz")).send().await.unwrap().json().await.unwrap();
            if r["upstreams"]["checked"]["ready"] == true || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(ready["upstreams"]["checked"]["ready"], true, "{ready}\nlog:\n{}", common::tail(&gw.log(), 10));
        // no client certificate: the backend refuses the handshake -> a problem, not a hang
        let anonymous = http.get(gw.url("/healthz")).send().await.unwrap();
        assert_eq!(anonymous.status(), 502);
        assert_eq!(anonymous.headers()["content-type"], "application/problem+json");
        // the system roots do not know the test CA: verification fails
        let untrusted = http.get(gw.url("/api/users")).send().await.unwrap();
        assert_eq!(untrusted.status(), 502);
    });
    drop(backend);
}

#[test]
fn tls_1_2_is_the_floor_public_port_names_redirects_and_hsts_preload() {
    let backend = Backend::start();
    let pki = Pki::new("floor");
    let a = pki.issue("a", &["a.test"]);
    let tls_port = free_port();
    let tls = format!("{}public_port = 443\n", tls_table(tls_port, &[(&a.cert, &a.key)]));
    let routes = format!("{CATCH_ALL}hsts = {{ max_age = \"365d\", include_subdomains = true, preload = true }}\n");
    let gw = start(&config_for(&backend.addr(), &routes), "redirect_to_https = true", &tls);
    let url = format!("https://a.test:{tls_port}/healthz");
    // TLS 1.2 and 1.3 are served; 1.1 and 1.0 are refused in the handshake (curl's exit 35)
    for (flags, ok) in [
        (&["--tlsv1.3"][..], true),
        (&["--tlsv1.2", "--tls-max", "1.2"][..], true),
        (&["--tlsv1.1", "--tls-max", "1.1"][..], false),
        (&["--tlsv1.0", "--tls-max", "1.0"][..], false),
    ] {
        let seen = curl(&url, &pki.ca(), flags);
        if ok {
            assert_eq!(seen.status, 200, "{flags:?}: exit {}", seen.exit);
        } else {
            assert_eq!((seen.status, seen.exit), (0, 35), "{flags:?}");
        }
    }
    // preload, in the order RFC 6797's preload list asks for
    let seen = curl(&url.replace("/healthz", "/debug/echo"), &pki.ca(), &[]);
    assert!(seen.headers.contains("strict-transport-security: max-age=31536000; includesubdomains; preload"), "{}", seen.headers);
    // the redirect names the public port: 443 is the scheme's default, so none is written
    let plain = curl(&format!("http://plain.test:{}/items/1?x=1", gw.port), &pki.ca(), &[]);
    assert_eq!(plain.status, 308);
    assert!(plain.headers.contains("location: https://plain.test/items/1?x=1\r\n"), "{}", plain.headers);
}

#[test]
fn each_certificate_is_logged_with_the_days_it_has_left() {
    let backend = Backend::start();
    let pki = Pki::new("expiry");
    let fine = pki.issue_for_days("fine", &["fine.test"], (-1, 90));
    let soon = pki.issue_for_days("soon", &["soon.test"], (-80, 5));
    let gone = pki.issue_for_days("gone", &["gone.test"], (-90, -2));
    let tls = tls_table(free_port(), &[(&fine.cert, &fine.key), (&soon.cert, &soon.key), (&gone.cert, &gone.key)]);
    let gw = start(&config_for(&backend.addr(), CATCH_ALL), "", &tls);
    let log = gw.log();
    let line = |stem: &str| -> serde_json::Value {
        let l = log.lines().find(|l| l.contains("TLS certificate") && l.contains(&format!("{stem}.pem"))).unwrap_or_else(|| panic!("no line for {stem}:\n{log}"));
        serde_json::from_str(l).unwrap()
    };
    let (f, s, g) = (line("fine"), line("soon"), line("gone"));
    assert_eq!((f["level"].as_str(), f["message"].as_str()), (Some("INFO"), Some("TLS certificate loaded")), "{f}");
    assert!((88..=90).contains(&f["days_left"].as_i64().unwrap()), "{f}");
    assert_eq!((s["level"].as_str(), s["message"].as_str()), (Some("WARN"), Some("TLS certificate expires soon")), "{s}");
    assert!((3..=5).contains(&s["days_left"].as_i64().unwrap()), "{s}");
    assert_eq!((g["level"].as_str(), g["message"].as_str()), (Some("ERROR"), Some("TLS certificate has expired")), "{g}");
}
