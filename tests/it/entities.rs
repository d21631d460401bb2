//! The consistency contract on a DB-backed app (examples/conduit: SQLite through SQLAlchemy)
//! behind `fastgate init`'s own file: after each kind of write, every read of what it changed
//! answers as the app does, for the writer, another user and anonymously, on the pooled
//! connection and on a new one; and what it did not change is still served from the cache.

use crate::common;

use common::{fastgate_command, Backend, Gateway};
use serde_json::{json, Value};

const WRITER: &str = "Token user3";
const OTHER: &str = "Token user4";

struct Conduit {
    app: Backend,
    gw: Gateway,
    pooled: reqwest::Client,
}

impl Conduit {
    /// The app with 12 users and 40 articles, and the gateway on `init`'s file for it (reads
    /// kept 300 s, so nothing here expires by time).
    fn start() -> Conduit {
        let app = Backend::start_app_ready("examples/conduit", "/healthz", &[("CONDUIT_USERS", "12"), ("CONDUIT_ARTICLES", "40")]);
        let out = fastgate_command().args(["init", "--from-openapi", &app.url("/openapi.json")]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap().replace("ttl = \"10s\"", "ttl = \"300s\"");
        assert!(text.contains("[entities.Article]") && text.contains("[entities.Profile]"), "{text}");
        // the app has no security scheme, but its `viewer` dependency reads `Authorization`
        assert!(text.contains("key = { headers = [\"authorization\"] }"), "{text}");
        // `?favorited=` is no part of an article (`?tag=` and `?author=` are): a favorite moves
        // articles into the lists filtered by it
        assert!(text.contains("lists = [\"favorited\"]"), "{text}");
        let gw = Gateway::start_file(
            |port, admin| {
                text.replace(
                    "listen = \"0.0.0.0:8080\"",
                    &format!("listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nshutdown_grace = \"1s\""),
                )
            },
            &[],
        );
        Conduit { app, gw, pooled: reqwest::Client::new() }
    }

    /// Each viewer's read through the gateway, on the pooled and on a new connection:
    /// (viewer, status, body, x-cache).
    async fn reads(&self, path: &str) -> Vec<(&'static str, u16, Value, String)> {
        let mut out = Vec::new();
        for who in [WRITER, OTHER, ""] {
            for fresh in [false, true] {
                let c = if fresh { reqwest::Client::new() } else { self.pooled.clone() };
                let mut req = c.get(self.gw.url(path));
                if !who.is_empty() {
                    req = req.header("authorization", who);
                }
                let r = req.send().await.unwrap();
                let xc = r.headers().get("x-cache").map_or("-", |v| v.to_str().unwrap()).to_string();
                out.push((if who.is_empty() { "anonymous" } else { who }, r.status().as_u16(), r.json().await.unwrap_or(Value::Null), xc));
            }
        }
        out
    }

    async fn direct(&self, path: &str, who: &str) -> (u16, Value) {
        let mut req = self.pooled.get(self.app.url(path));
        if who != "anonymous" {
            req = req.header("authorization", who);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Reads `path` until every viewer's copy is stored (an error, such as the feed's 401 to
    /// an anonymous reader, is not).
    async fn cached(&self, path: &str) {
        self.reads(path).await;
        for (who, status, _, xc) in self.reads(path).await {
            assert!(xc == "HIT" || status >= 400, "{path} as {who} is cached ({status} {xc})");
        }
    }

    async fn write(&self, method: reqwest::Method, path: &str, who: &str, body: Option<Value>) -> Value {
        let mut req = self.pooled.request(method.clone(), self.gw.url(path)).header("authorization", who);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Every viewer's read of `path` answers as the app does (an error in the gateway's
    /// problem shape, with the app's words).
    async fn fresh(&self, path: &str, after: &str) {
        for (who, status, body, xc) in self.reads(path).await {
            let (s, truth) = self.direct(path, who).await;
            if status >= 400 {
                assert_eq!((status, &body["detail"]), (s, &truth["detail"]), "{path} as {who} after {after}");
                continue;
            }
            assert_eq!((status, body), (s, truth), "{path} as {who} after {after} (x-cache {xc})");
        }
    }

    /// Every copy of `path` but the writer's own (which `viewer` drops) is still served from
    /// the cache.
    async fn kept(&self, path: &str, after: &str) {
        for (who, status, _, xc) in self.reads(path).await.into_iter().filter(|r| r.0 != WRITER) {
            assert!(xc == "HIT" || status >= 400, "{path} as {who} is untouched by {after} ({status} {xc})");
        }
    }
}

#[tokio::test]
async fn writes_drop_what_they_changed_and_keep_the_rest() {
    let c = Conduit::start();
    let x = "article-40";
    let (_, doc) = c.direct(&format!("/api/articles/{x}"), "anonymous").await;
    let author = doc["article"]["author"]["username"].as_str().unwrap().to_string();
    let article = format!("/api/articles/{x}");
    let comments = format!("/api/articles/{x}/comments");
    let page = "/api/articles?limit=10&offset=0".to_string();
    let far_page = "/api/articles?limit=10&offset=30".to_string();
    // an article by someone else, on no page the writes below change
    let mut other = String::new();
    for n in 1..10 {
        let (_, d) = c.direct(&format!("/api/articles/article-{n}"), "anonymous").await;
        if d["article"]["author"]["username"] != author.as_str() {
            other = format!("/api/articles/article-{n}");
            break;
        }
    }
    let favorited = "/api/articles?favorited=user3&limit=10&offset=0".to_string();
    let by_author = format!("/api/articles?author={author}&limit=10&offset=0");
    let profile = format!("/api/profiles/{author}");
    let feed = "/api/articles/feed?limit=10&offset=0".to_string();
    let all = [&article, &comments, &page, &far_page, &other, &favorited, &by_author, &profile, &feed];
    for p in all {
        c.cached(p).await;
    }

    // a favorite changes the article everywhere it appears, and the writer's favorites list
    c.write(reqwest::Method::POST, &format!("{article}/favorite"), WRITER, None).await;
    for p in [&article, &page, &favorited, &by_author] {
        c.fresh(p, "a favorite").await;
    }
    assert_eq!(c.reads(&favorited).await[0].2["articles"][0]["slug"], x, "the favorite is in the writer's list");
    // not the comments, another article, a page without it, or its author's profile
    for p in [&comments, &other, &far_page, &profile] {
        c.kept(p, "a favorite").await;
    }

    // a comment changes the thread; the article's place in lists does not move
    for p in all {
        c.cached(p).await;
    }
    c.write(reqwest::Method::POST, &comments, WRITER, Some(json!({"comment": {"body": "first"}}))).await;
    c.fresh(&comments, "a comment").await;
    assert_eq!(c.reads(&comments).await[5].2["comments"].as_array().unwrap().last().unwrap()["body"], "first");
    // the article shows nothing of its comments (`init` read that from its schema)
    for p in [&article, &page, &other, &far_page, &profile] {
        c.kept(p, "a comment").await;
    }

    // a follow changes how the writer sees the author (the profile, the feed) and no one else
    for p in all {
        c.cached(p).await;
    }
    c.write(reqwest::Method::POST, &format!("{profile}/follow"), WRITER, None).await;
    for p in [&profile, &feed, &article] {
        c.fresh(p, "a follow").await;
    }
    assert_eq!(c.reads(&profile).await[0].2["profile"]["following"], true);
    assert_eq!(c.reads(&profile).await[2].2["profile"]["following"], false, "the other user does not follow");
    // `following` is a flag of the reader's: no one else's copies changed
    for p in [&other, &article, &page] {
        c.kept(p, "a follow").await;
    }

    // an update by its author: the article and the lists showing it
    for p in all {
        c.cached(p).await;
    }
    let mine = format!("Token {author}");
    c.write(reqwest::Method::PUT, &article, &mine, Some(json!({"article": {"title": "Renamed"}}))).await;
    for p in [&article, &page, &by_author, &favorited] {
        c.fresh(p, "an update").await;
    }
    assert_eq!(c.reads(&article).await[4].2["article"]["title"], "Renamed");
    c.kept(&other, "an update").await;

    // a create enters the first page of every list (and the feed of whoever follows the writer)
    for p in all {
        c.cached(p).await;
    }
    let created = c.write(reqwest::Method::POST, "/api/articles", &mine, Some(json!({"article": {"title": "New", "body": "b", "tagList": ["tag1"]}}))).await;
    for p in [&page, &by_author, &feed, &far_page] {
        c.fresh(p, "a create").await;
    }
    assert_eq!(c.reads(&page).await[1].2["articles"][0]["slug"], created["article"]["slug"]);
    c.kept(&other, "a create").await;
    c.kept(&comments, "a create").await;

    let metrics = c.gw.metrics().await;
    for reason in ["entity", "list", "viewer", "target"] {
        let label = format!("reason=\"{reason}\"");
        let n: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("fastgate_cache_invalidations_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(n > 0.0, "invalidations by {reason}: {metrics}");
    }
}
