//! End to end, with the real binary and real upstreams: device classes in
//! routing, the JSON response transform, and the response cache.

mod scripted;
mod support;

use scripted::{metric, rule_yaml, scripted, RawClient, Reply};
use std::io::{Read, Write};
use std::time::Duration;
use support::{blocking_get, Gateway};

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const ANDROID_PHONE: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
const IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

fn admin_post(gateway: &Gateway, path: &str) -> String {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(gateway.admin).expect("connect admin");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("read");
    out
}

/// Each device class goes to the rule that matches it, decided from real
/// User-Agent strings and the Sec-CH-UA-Mobile client hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_classes_choose_the_rule() {
    let upstream = scripted(|_, _| Reply::json("{}")).await;
    let url = upstream.url();
    let yaml = format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: devices, namespace: default}}
spec:
  hosts: [dev.test]
  rules:
  - name: phones
    matches: [{{path: {{type: PathPrefix, value: /}}, devices: [mobile]}}]
    backends: [{{url: \"{url}\"}}]
    filters: {{responseHeaders: {{set: [{{name: x-rule, value: phones}}]}}}}
  - name: tablets
    matches: [{{path: {{type: PathPrefix, value: /}}, devices: [tablet]}}]
    backends: [{{url: \"{url}\"}}]
    filters: {{responseHeaders: {{set: [{{name: x-rule, value: tablets}}]}}}}
  - name: bots
    matches: [{{path: {{type: PathPrefix, value: /}}, devices: [bot]}}]
    backends: [{{url: \"{url}\"}}]
    filters: {{responseHeaders: {{set: [{{name: x-rule, value: bots}}]}}}}
  - name: everyone
    matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backends: [{{url: \"{url}\"}}]
    filters: {{responseHeaders: {{set: [{{name: x-rule, value: everyone}}]}}}}
"
    );
    let gateway = Gateway::start(&[("devices.yaml", &yaml)]);
    let client = RawClient::new(gateway.http);
    let table: &[(&[(&str, &str)], &str)] = &[
        (&[("user-agent", IPHONE)], "phones"),
        (&[("user-agent", ANDROID_PHONE)], "phones"),
        (&[("user-agent", "okhttp/4.12.0")], "phones"),
        (&[("user-agent", IPAD)], "tablets"),
        (&[("user-agent", ANDROID_TABLET)], "tablets"),
        (&[("user-agent", DESKTOP)], "everyone"),
        (
            &[("user-agent", DESKTOP), ("sec-ch-ua-mobile", "?1")],
            "phones",
        ),
        (
            &[("user-agent", ANDROID_PHONE), ("sec-ch-ua-mobile", "?0")],
            "everyone",
        ),
        (&[("user-agent", GOOGLEBOT)], "bots"),
        (&[("user-agent", "curl/8.5.0")], "bots"),
        (&[], "everyone"),
    ];
    for (headers, want) in table {
        let answer = client.get("dev.test", "/x", headers).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-rule"), Some(*want), "{headers:?}");
    }
}

fn catalogue(n: usize) -> String {
    let items: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": i,
                "name": format!("item {i}"),
                "description": "a long description ".repeat(4),
                "price": 12.50,
            })
        })
        .collect();
    serde_json::json!({
        "items": items,
        "internal": {"shard": 7},
        "meta": {"page": 1, "debug": {"trace": "x", "keep": true}},
    })
    .to_string()
}

fn transform_route(url: &str, extra: &str) -> String {
    rule_yaml(
        "shop",
        "shop.test",
        "/",
        url,
        &format!(
            "    filters:
      responseTransform:
        devices: [mobile]
        remove: [internal, \"items[].description\", meta.debug.trace]
{extra}"
        ),
    )
}

/// The same route trims JSON for phones and leaves it whole for desktops;
/// nested and array paths; Content-Length matches the new body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_get_trimmed_json_desktops_do_not() {
    let body = catalogue(3);
    let sent = body.clone();
    let upstream = scripted(move |_, _| Reply::json(sent.clone())).await;
    let gateway = Gateway::start(&[("shop.yaml", &transform_route(&upstream.url(), ""))]);
    let client = RawClient::new(gateway.http);

    let phone = client
        .get("shop.test", "/products", &[("user-agent", IPHONE)])
        .await;
    assert_eq!(phone.status, 200);
    let json = phone.json();
    assert!(json.get("internal").is_none(), "{json}");
    assert_eq!(
        json["meta"],
        serde_json::json!({"page": 1, "debug": {"keep": true}})
    );
    let items = json["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    for item in items {
        assert!(item.get("description").is_none());
        assert!(item.get("name").is_some());
        assert_eq!(item["price"], 12.5);
    }
    assert_eq!(
        phone
            .header("content-length")
            .map(|v| v.parse::<usize>().expect("number")),
        Some(phone.body.len())
    );
    assert!(phone.body.len() < body.len());
    assert!(phone
        .header("vary")
        .is_some_and(|v| v.contains("Sec-CH-UA-Mobile")));

    let desktop = client
        .get("shop.test", "/products", &[("user-agent", DESKTOP)])
        .await;
    assert_eq!(desktop.status, 200);
    assert_eq!(
        &desktop.body[..],
        body.as_bytes(),
        "desktop gets the upstream's bytes"
    );

    let metrics = blocking_get(gateway.admin, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            "ferrogate_transforms_total",
            "route=\"default/shop\",rule=\"api\",result=\"applied\""
        ),
        1.0,
        "{metrics}"
    );
}

/// Bodies over maxBodyBytes pass through byte for byte, with and without
/// Content-Length, and are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_pass_through_and_are_counted() {
    let big = catalogue(200);
    assert!(big.len() > 20_000);
    let sent = big.clone();
    let upstream = scripted(move |seen, _| {
        let reply = Reply::json(sent.clone());
        if seen.uri.contains("chunked") {
            reply.chunked()
        } else {
            reply
        }
    })
    .await;
    let gateway = Gateway::start(&[(
        "shop.yaml",
        &transform_route(&upstream.url(), "        maxBodyBytes: 10000\n"),
    )]);
    let client = RawClient::new(gateway.http);
    for path in ["/sized", "/chunked"] {
        let phone = client
            .get("shop.test", path, &[("user-agent", IPHONE)])
            .await;
        assert_eq!(phone.status, 200);
        assert_eq!(phone.body.len(), big.len(), "{path}");
        assert_eq!(&phone.body[..], big.as_bytes(), "{path}");
    }
    let metrics = blocking_get(gateway.admin, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            "ferrogate_transforms_total",
            "route=\"default/shop\",rule=\"api\",result=\"oversize\""
        ),
        2.0,
        "{metrics}"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

fn gunzip(data: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(data)
        .read_to_string(&mut out)
        .expect("gunzip");
    out
}

/// gzip and br bodies are decoded, trimmed and encoded again; a body that
/// claims gzip but is not, or a coding Ferrogate does not handle, passes
/// through unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_trimmed_or_passed_through_never_corrupted() {
    let body = catalogue(5);
    let sent = body.clone();
    let upstream = scripted(move |seen, _| {
        let plain = sent.clone().into_bytes();
        match seen.uri.as_str() {
            "/gzip" => Reply::json("")
                .bytes(gzip(&plain))
                .header("content-encoding", "gzip"),
            "/br" => {
                let mut out = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    w.write_all(&plain).expect("br");
                }
                Reply::json("").bytes(out).header("content-encoding", "br")
            }
            "/fake-gzip" => Reply::json(sent.clone()).header("content-encoding", "gzip"),
            _ => Reply::json(sent.clone()).header("content-encoding", "deflate"),
        }
    })
    .await;
    let gateway = Gateway::start(&[("shop.yaml", &transform_route(&upstream.url(), ""))]);
    let client = RawClient::new(gateway.http);
    let phone = [("user-agent", IPHONE), ("accept-encoding", "gzip, br")];

    let answer = client.get("shop.test", "/gzip", &phone).await;
    assert_eq!(answer.header("content-encoding"), Some("gzip"));
    assert_eq!(
        answer.header("content-length"),
        Some(answer.body.len().to_string().as_str())
    );
    let json: serde_json::Value = serde_json::from_str(&gunzip(&answer.body)).expect("JSON");
    assert!(json.get("internal").is_none());
    assert!(json["items"][0].get("description").is_none());

    let answer = client.get("shop.test", "/br", &phone).await;
    assert_eq!(answer.header("content-encoding"), Some("br"));
    let mut text = String::new();
    brotli::Decompressor::new(&answer.body[..], 4096)
        .read_to_string(&mut text)
        .expect("br");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert!(json.get("internal").is_none());

    for path in ["/fake-gzip", "/deflate"] {
        let answer = client.get("shop.test", path, &phone).await;
        assert_eq!(
            &answer.body[..],
            body.as_bytes(),
            "{path} passes through unchanged"
        );
    }
    let metrics = blocking_get(gateway.admin, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            "ferrogate_transforms_total",
            "route=\"default/shop\",rule=\"api\",result=\"encoding\""
        ),
        2.0,
        "{metrics}"
    );
}

fn cache_route(url: &str, cache: &str) -> String {
    rule_yaml(
        "cached",
        "cache.test",
        "/",
        url,
        &format!("    filters:\n      cache:\n{cache}"),
    )
}

/// Twenty identical requests at once make one upstream request; all get
/// the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_misses_make_one_upstream_request() {
    let upstream = scripted(|_, n| {
        Reply::json(format!("{{\"n\":{n}}}"))
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(300))
    })
    .await;
    let gateway = Gateway::start(&[(
        "c.yaml",
        &cache_route(&upstream.url(), "        maxEntryBytes: 100000\n"),
    )]);
    let client = RawClient::new(gateway.http);
    let requests = (0..20).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.get("cache.test", "/popular", &[]).await })
    });
    let answers = futures::future::join_all(requests).await;
    assert_eq!(
        upstream.hits(),
        1,
        "one upstream request for 20 concurrent misses"
    );
    let mut collapsed = 0;
    for answer in answers {
        let answer = answer.expect("task");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json(), serde_json::json!({"n": 0}));
        if answer
            .header("cache-status")
            .is_some_and(|s| s.contains("collapsed"))
        {
            collapsed += 1;
        }
    }
    assert_eq!(collapsed, 19);
    let hit = client.get("cache.test", "/popular", &[]).await;
    assert!(
        hit.header("cache-status")
            .is_some_and(|s| s.starts_with("ferrogate; hit")),
        "{hit:?}"
    );
    assert!(hit.header("age").is_some());
    assert_eq!(upstream.hits(), 1);
}

/// Entries expire with max-age (and defaultTtl when the upstream says
/// nothing); Age grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire() {
    let upstream = scripted(|seen, n| {
        let reply = Reply::json(format!("{{\"n\":{n}}}"));
        if seen.uri == "/short" {
            reply.header("cache-control", "max-age=1")
        } else {
            reply
        }
    })
    .await;
    let gateway = Gateway::start(&[(
        "c.yaml",
        &cache_route(&upstream.url(), "        defaultTtl: 1s\n"),
    )]);
    let client = RawClient::new(gateway.http);
    for path in ["/short", "/default"] {
        let before = upstream.hits();
        let first = client.get("cache.test", path, &[]).await;
        let second = client.get("cache.test", path, &[]).await;
        assert_eq!(first.body, second.body, "{path}: served from the cache");
        assert_eq!(upstream.hits(), before + 1);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let third = client.get("cache.test", path, &[]).await;
        assert_ne!(first.body, third.body, "{path}: expired, fetched again");
        assert_eq!(upstream.hits(), before + 2);
        assert!(third
            .header("cache-status")
            .is_some_and(|s| s.contains("fwd=miss")));
    }
}

/// Variants by Vary live side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_variants_apart() {
    let upstream = scripted(|seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        Reply::json(format!("{{\"lang\":\"{lang}\"}}"))
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language")
    })
    .await;
    let gateway = Gateway::start(&[(
        "c.yaml",
        &cache_route(&upstream.url(), "        keyDevice: false\n"),
    )]);
    let client = RawClient::new(gateway.http);
    for _ in 0..2 {
        for lang in ["en", "de"] {
            let answer = client
                .get("cache.test", "/greeting", &[("accept-language", lang)])
                .await;
            assert_eq!(answer.json()["lang"], lang);
        }
    }
    assert_eq!(upstream.hits(), 2, "one upstream request per variant");
}

/// Conditional requests get 304 from the cache; a stale entry with an
/// ETag is revalidated with the upstream (304 refreshes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_and_not_modified() {
    let upstream = scripted(|seen, _| {
        let matches = seen
            .headers
            .get("if-none-match")
            .is_some_and(|v| v.as_bytes() == b"\"v1\"");
        let reply = if matches {
            Reply::json("").status(304)
        } else {
            Reply::json("{\"version\":1}")
        };
        reply
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\"")
            .header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")
    })
    .await;
    let gateway = Gateway::start(&[(
        "c.yaml",
        &cache_route(&upstream.url(), "        keyDevice: false\n"),
    )]);
    let client = RawClient::new(gateway.http);

    let first = client.get("cache.test", "/doc", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("etag"), Some("\"v1\""));
    // The client's validators are answered by the cache.
    let not_modified = client
        .get("cache.test", "/doc", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some("\"v1\""));
    let since = client
        .get(
            "cache.test",
            "/doc",
            &[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
        )
        .await;
    assert_eq!(since.status, 304);
    let changed = client
        .get("cache.test", "/doc", &[("if-none-match", "\"v0\"")])
        .await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.json()["version"], 1);
    assert_eq!(upstream.hits(), 1);

    // Stale: revalidated with the upstream's validator.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revalidated = client.get("cache.test", "/doc", &[]).await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.json()["version"], 1);
    assert!(
        revalidated
            .header("cache-status")
            .is_some_and(|s| s.contains("fwd=stale") && s.contains("fwd-status=304")),
        "{revalidated:?}"
    );
    assert_eq!(upstream.hits(), 2);
    let seen = upstream.seen();
    assert_eq!(
        seen[1].headers.get("if-none-match").map(|v| v.as_bytes()),
        Some(&b"\"v1\""[..])
    );
    // Refreshed: fresh again.
    let hit = client.get("cache.test", "/doc", &[]).await;
    assert!(hit
        .header("cache-status")
        .is_some_and(|s| s.contains("hit")));
    assert_eq!(upstream.hits(), 2);
}

/// Private responses, responses with Set-Cookie and answers to requests
/// with Authorization are not cached, unless the rule says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_authorized_responses_are_not_cached() {
    let upstream = scripted(|seen, n| {
        let reply = Reply::json(format!("{{\"n\":{n}}}"));
        match seen.uri.as_str() {
            "/private" => reply.header("cache-control", "private, max-age=60"),
            uri if uri.ends_with("/cookie") => reply
                .header("cache-control", "max-age=60")
                .header("set-cookie", "s=1"),
            "/no-store" => reply.header("cache-control", "no-store"),
            _ => reply.header("cache-control", "public, max-age=60"),
        }
    })
    .await;
    let url = upstream.url();
    let yaml = format!(
        "{}  - name: trusting
    matches: [{{path: {{type: PathPrefix, value: /trusting}}}}]
    backends: [{{url: \"{url}\"}}]
    filters: {{cache: {{cacheAuthorized: true, cacheSetCookie: true}}}}
",
        cache_route(&url, "        keyDevice: false\n")
    );
    let gateway = Gateway::start(&[("c.yaml", &yaml)]);
    let client = RawClient::new(gateway.http);
    let twice = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let client = client.clone();
        async move {
            let a = client.get("cache.test", path, headers).await;
            let b = client.get("cache.test", path, headers).await;
            (a, b)
        }
    };
    for path in ["/private", "/cookie", "/no-store"] {
        let before = upstream.hits();
        let (a, b) = twice(path, &[]).await;
        assert_ne!(a.body, b.body, "{path} is not cached");
        assert_eq!(upstream.hits(), before + 2);
        assert!(
            b.header("cache-status")
                .is_some_and(|s| s.contains("detail=")),
            "{b:?}"
        );
    }
    let before = upstream.hits();
    let (a, b) = twice("/public", &[("authorization", "Bearer x")]).await;
    assert_ne!(
        a.body, b.body,
        "answers to authorized requests are not cached"
    );
    assert!(b
        .header("cache-status")
        .is_some_and(|s| s.contains("fwd=bypass")));
    assert_eq!(upstream.hits(), before + 2);
    // The same public path without credentials is cached.
    let (a, b) = twice("/public", &[]).await;
    assert_eq!(a.body, b.body);
    // A rule that allows it caches both.
    let before = upstream.hits();
    let (a, b) = twice("/trusting/cookie", &[("authorization", "Bearer x")]).await;
    assert_eq!(a.body, b.body);
    assert_eq!(upstream.hits(), before + 1);
}

/// Purge by key prefix on the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_prefix() {
    let upstream = scripted(|_, n| {
        Reply::json(format!("{{\"n\":{n}}}")).header("cache-control", "max-age=600")
    })
    .await;
    let gateway = Gateway::start(&[(
        "c.yaml",
        &cache_route(&upstream.url(), "        keyDevice: false\n"),
    )]);
    let client = RawClient::new(gateway.http);
    for path in ["/products/1", "/products/2", "/cart"] {
        client.get("cache.test", path, &[]).await;
        client.get("cache.test", path, &[]).await;
    }
    assert_eq!(upstream.hits(), 3);
    let answer = admin_post(&gateway, "/cache/purge?prefix=cache.test%2Fproducts");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"purged\":2"), "{answer}");
    client.get("cache.test", "/products/1", &[]).await;
    client.get("cache.test", "/products/2", &[]).await;
    client.get("cache.test", "/cart", &[]).await;
    assert_eq!(
        upstream.hits(),
        5,
        "purged paths are fetched again, others are not"
    );
    let get = blocking_get(gateway.admin, "/cache/purge?prefix=x");
    assert!(get.contains("POST"), "{get}");

    let metrics = blocking_get(gateway.admin, "/metrics");
    let labels = "route=\"default/cached\",rule=\"api\",result=\"hit\"";
    assert_eq!(
        metric(&metrics, "ferrogate_cache_lookups_total", labels),
        4.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "ferrogate_cache_bytes", "") > 0.0);
}

/// A cacheable response that announces trailers streams through with its
/// trailers, and is not stored (entries keep no trailers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_with_trailers_keep_them_and_are_not_stored() {
    use http_body_util::BodyExt;
    let upstream = scripted(|_, _| {
        Reply::json("{\"ok\":true}")
            .header("cache-control", "max-age=60")
            .header("trailer", "x-checksum")
            .trailer("x-checksum", "abc")
    })
    .await;
    let gateway = Gateway::start(&[(
        "c.yaml",
        &cache_route(&upstream.url(), "        maxEntryBytes: 100000\n"),
    )]);
    // HTTP/2 to the gateway: trailers reach the client whatever the
    // response's headers say.
    let stream = tokio::net::TcpStream::connect(gateway.http)
        .await
        .expect("connect to the gateway");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    for _ in 0..2 {
        let request = http::Request::get("http://cache.test/t")
            .header("te", "trailers")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("answer within 10 s")
            .expect("response");
        assert_eq!(response.status(), 200);
        let cache_status = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(cache_status.contains("detail=trailers"), "{cache_status}");
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected
            .trailers()
            .cloned()
            .unwrap_or_else(|| panic!("no trailers reached the client; log:\n{}", gateway.log()));
        assert_eq!(
            trailers.get("x-checksum").map(|v| v.as_bytes()),
            Some(&b"abc"[..])
        );
        assert_eq!(collected.to_bytes(), "{\"ok\":true}");
    }
    // HTTP/1.1: the server sends only the trailer fields that the
    // response's `Trailer` header announces, so that header must reach it.
    let stream = tokio::net::TcpStream::connect(gateway.http)
        .await
        .expect("connect to the gateway");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let request = http::Request::get("/t")
        .header("host", "cache.test")
        .header("te", "trailers")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answer within 10 s")
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("trailer").map(|v| v.as_bytes()),
        Some(&b"x-checksum"[..])
    );
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected
        .trailers()
        .cloned()
        .unwrap_or_else(|| panic!("no trailers over HTTP/1.1; log:\n{}", gateway.log()));
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"abc"[..])
    );
    assert_eq!(upstream.hits(), 3, "nothing was stored");
}
