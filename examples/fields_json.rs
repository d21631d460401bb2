//! The price of `?fields=` selection with three JSON approaches, on the body `bench/` uses for
//! it (a 20 KiB list of 180 items of 5 members, two members selected from each):
//!
//! - fastgate's one-pass scanner (`policy::fields::filter`): kept spans copied, no tree;
//! - serde_json: parse to a `Value`, keep the members, serialize;
//! - sonic-rs (SIMD): the same with its `Value`;
//! - sonic-rs's lazy iterators (no tree, SIMD skipping), kept values copied raw: the same
//!   design as fastgate's, hand-written for this one selection.
//!
//! `cargo run --release --example fields_json` prints nanoseconds per body for each (the
//! median of 7 runs of 2000 bodies) and checks they agree.

use fastgate::policy::fields::{filter, Selector};
use std::time::Instant;

const RUNS: usize = 7;
const N: usize = 2000;

fn body() -> Vec<u8> {
    let items: Vec<String> = (0..180)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "symbol": "SYM{i:05}", "name": "Instrument {i}", "exchange": "NASDAQ", "price": {}}}"#,
                100.0 + f64::from(i) / 7.0
            )
        })
        .collect();
    format!(r#"{{"items": [{}]}}"#, items.join(", ")).into_bytes()
}

fn with_serde(body: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(body).expect("json");
    if let Some(items) = v.get_mut("items").and_then(|i| i.as_array_mut()) {
        for item in items {
            if let Some(obj) = item.as_object_mut() {
                obj.retain(|k, _| k == "id" || k == "price");
            }
        }
    }
    serde_json::to_vec(&v).expect("serialize")
}

fn with_sonic(body: &[u8]) -> Vec<u8> {
    use sonic_rs::JsonValueMutTrait;
    let mut v: sonic_rs::Value = sonic_rs::from_slice(body).expect("json");
    if let Some(items) = v.get_mut("items").and_then(|i| i.as_array_mut()) {
        for item in items.iter_mut() {
            if let Some(obj) = item.as_object_mut() {
                let drop: Vec<String> = obj.iter().map(|(k, _)| k.to_string()).filter(|k| k != "id" && k != "price").collect();
                for k in drop {
                    obj.remove(&k);
                }
            }
        }
    }
    sonic_rs::to_vec(&v).expect("serialize")
}

/// sonic-rs without a tree: its lazy iterators skip values with SIMD; kept ones are copied raw.
fn with_sonic_lazy(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 2);
    out.extend_from_slice(b"{");
    for (i, member) in sonic_rs::to_object_iter(body).enumerate() {
        let (key, value) = member.expect("json");
        if key.as_ref() != "items" {
            continue;
        }
        if i > 0 && out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"items\":[");
        for (n, item) in sonic_rs::to_array_iter(value.as_raw_str()).enumerate() {
            let item = item.expect("json");
            if n > 0 {
                out.push(b',');
            }
            out.push(b'{');
            let mut first = true;
            for member in sonic_rs::to_object_iter(item.as_raw_str()) {
                let (k, v) = member.expect("json");
                if k.as_ref() == "id" || k.as_ref() == "price" {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(format!("{:?}:", k.as_ref()).as_bytes());
                    out.extend_from_slice(v.as_raw_str().as_bytes());
                }
            }
            out.push(b'}');
        }
        out.push(b']');
    }
    out.push(b'}');
    out
}

fn time(name: &str, body: &[u8], f: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let out = f(body);
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..N {
                std::hint::black_box(f(std::hint::black_box(body)));
            }
            t.elapsed().as_nanos() as f64 / N as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    println!("{name:<22} {:>9.0} ns/body  ({} -> {} bytes)", runs[RUNS / 2], body.len(), out.len());
    out
}

fn main() {
    let body = body();
    let sel = Selector::parse("items.id,items.price").expect("selector");
    let ours = time("fastgate one-pass", &body, |b| filter(b, &sel).expect("filter"));
    let serde = time("serde_json Value", &body, with_serde);
    let sonic = time("sonic-rs Value", &body, with_sonic);
    let lazy = time("sonic-rs lazy, no tree", &body, with_sonic_lazy);
    let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).expect("json");
    assert_eq!(parse(&ours), parse(&serde), "fastgate and serde_json agree");
    assert_eq!(parse(&ours), parse(&sonic), "fastgate and sonic-rs agree");
    assert_eq!(parse(&ours), parse(&lazy), "fastgate and sonic-rs (lazy) agree");
}
