//! Service discovery against a DNS server the test runs: a name with two addresses is two
//! servers (two uvicorn backends on 127.0.0.2 and 127.0.0.3, one port), a changed record is
//! seen within `resolve_interval`, and a failing DNS server keeps the servers in force.

use crate::common;

use common::{config_for, free_port, Backend, Gateway, CATCH_ALL};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the DNS server answers for `api.fastgate.test`: A records, or SERVFAIL.
#[derive(Clone)]
struct Records(Arc<Mutex<Option<Vec<Ipv4Addr>>>>);

const NAME: &str = "api.fastgate.test";

/// A minimal authoritative DNS server over UDP: A queries for `NAME` get the current records
/// (TTL 0), AAAA queries for it an empty answer, any other name NXDOMAIN.
/// On its own thread: the test's runtime is blocked while the gateway starts.
async fn dns_server(records: Records) -> u16 {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else { return };
            let q = &buf[..n];
            if n < 12 {
                continue;
            }
            // the question: labels, then type and class
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let len = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + len]).to_ascii_lowercase());
                i += 1 + len;
            }
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let question_end = i + 5;
            let name = labels.join(".");
            let current = records.0.lock().unwrap().clone();
            let (rcode, answers): (u8, Vec<Ipv4Addr>) = match (name == NAME, current) {
                (false, _) => (3, vec![]),
                (true, None) => (2, vec![]),
                (true, Some(ips)) if qtype == 1 => (0, ips),
                (true, Some(_)) => (0, vec![]),
            };
            let mut out = Vec::with_capacity(128);
            out.extend_from_slice(&q[0..2]);
            out.extend_from_slice(&[0x81 | (q[2] & 0x01), 0x80 | rcode]);
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&q[12..question_end]);
            for ip in answers {
                out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                out.extend_from_slice(&ip.octets());
            }
            let _ = sock.send_to(&out, from);
        }
    });
    port
}

async fn spread(gw: &Gateway, n: usize) {
    let http = reqwest::Client::new();
    for _ in 0..n {
        let r = http.get(gw.url("/debug/echo")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn a_name_with_two_addresses_is_two_servers_and_record_changes_are_followed() {
    let records = Records(Arc::new(Mutex::new(Some(vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]))));
    let dns = dns_server(records.clone()).await;
    let port = free_port();
    let mut two = Backend::start_on(std::net::TcpListener::bind(("127.0.0.2", port)).unwrap(), &[]);
    let mut three = Backend::start_on(std::net::TcpListener::bind(("127.0.0.3", port)).unwrap(), &[]);
    two.wait_healthy(Duration::from_secs(30));
    three.wait_healthy(Duration::from_secs(30));

    let extra = format!("resolver = \"127.0.0.1:{dns}\"\nresolve_interval = \"300ms\"\n");
    let gw = Gateway::start_with(&config_for(&format!("{NAME}:{port}"), CATCH_ALL), &extra, &[]);
    spread(&gw, 10).await;
    let (a, b) = (two.hits("/debug/echo").await, three.hits("/debug/echo").await);
    assert_eq!((a, b), (5, 5), "round-robin over both addresses");

    // the record loses an address: within a few intervals, all traffic goes to the other
    *records.0.lock().unwrap() = Some(vec![Ipv4Addr::new(127, 0, 0, 3)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log().contains("upstream servers changed") {
        assert!(Instant::now() < deadline, "the change was not seen; log:\n{}", common::tail(&gw.log(), 10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spread(&gw, 6).await;
    assert_eq!(two.hits("/debug/echo").await, a);
    assert_eq!(three.hits("/debug/echo").await, b + 6);

    // the DNS server fails: logged once, the servers in force stay
    *records.0.lock().unwrap() = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log().contains("upstream discovery failed") {
        assert!(Instant::now() < deadline, "no discovery failure logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spread(&gw, 4).await;
    assert_eq!(three.hits("/debug/echo").await, b + 10);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gw.log().matches("upstream discovery failed").count(), 1, "logged once per failing run");

    // both addresses back, and the recovery logged
    *records.0.lock().unwrap() = Some(vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log().contains("upstream discovery works again") || gw.log().matches("upstream servers changed").count() < 2 {
        assert!(Instant::now() < deadline, "recovery not seen; log:\n{}", common::tail(&gw.log(), 10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spread(&gw, 4).await;
    assert_eq!(two.hits("/debug/echo").await, a + 2);
}

#[tokio::test]
async fn check_warns_on_a_name_it_cannot_resolve_and_reports_a_broken_upstream_once() {
    let records = Records(Arc::new(Mutex::new(Some(vec![Ipv4Addr::new(127, 0, 0, 2)]))));
    let dns = dns_server(records).await;
    let text = format!(
        "[server]\nresolver = \"127.0.0.1:{dns}\"\n\n[upstreams.api]\nservers = [\"app.cluster.internal:8000\"]\n\n{CATCH_ALL}"
    );
    let out = common::check_config(&text);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("warning: upstream `api`: cannot resolve app.cluster.internal:8000"), "{said}");

    // an upstream with an error of its own: that error, and none for each route naming it
    let text = "[upstreams.api]\nservers = [\"app:8000\"]\nhealth_check = { path = \"healthz\" }\n\n\
        [[routes]]\nname = \"a\"\nmatch = { path_prefix = \"/a\" }\nupstream = \"api\"\n\n\
        [[routes]]\nname = \"b\"\nmatch = { path_prefix = \"/b\" }\nupstream = \"api\"\n";
    let out = common::check_config(text);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(!said.contains("unknown upstream"), "{said}");
    assert_eq!(said.matches("error").count(), 1, "{said}");
}
