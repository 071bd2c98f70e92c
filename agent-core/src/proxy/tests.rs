//! The proxy end to end on loopback, request handling: a hyper client (or raw bytes) → the
//! proxy's listener → a test upstream. Each test has its own proxy with its own port range
//! (`lifecycle_tests.rs` has listeners, logging, refusals and timeouts). Needs root
//! (IP_TRANSPARENT, SO_MARK).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cilium_api::models::HttpRuleModel;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::testutil::{
    public_get, raw_upstream, read_response, refusing_addr, request, rule, set, Setup, TestBody,
};
use super::Verdict;
use crate::policy::rule::HttpRule;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_and_denied() {
    let s = Setup::new(21000, public_get()).await;
    let mut c = s.client().await;
    assert_eq!(
        c.call("GET", "/public", &[]).await,
        (200, "GET /public 0\n".into())
    );
    let response = c
        .send(request("GET", "/private", &[], TestBody::empty()))
        .await
        .expect("response");
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.headers()["content-length"], "14");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"Access denied\n");
    // The query string is not part of the path that is matched.
    assert_eq!(
        c.call("GET", "/public?x=1", &[]).await,
        (200, "GET /public?x=1 0\n".into())
    );
    assert_eq!(c.call("POST", "/public", &[]).await.0, 403);
    assert_eq!(s.upstream.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_regex() {
    let s = Setup::new(21050, set(vec![rule("GET|HEAD", "/public", "", &[])])).await;
    let mut c = s.client().await;
    assert_eq!(c.call("GET", "/public", &[]).await.0, 200);
    assert_eq!(c.call("HEAD", "/public", &[]).await, (200, String::new()));
    assert_eq!(c.call("POST", "/public", &[]).await.0, 403);
    assert_eq!(c.call("GETX", "/public", &[]).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_exact_value_and_presence() {
    let s = Setup::new(21100, set(vec![rule("", "", "", &["X-Token: yes"])])).await;
    let mut c = s.client().await;
    assert_eq!(c.call("GET", "/", &[("x-token", "yes")]).await.0, 200);
    assert_eq!(c.call("GET", "/", &[("X-TOKEN", "yes")]).await.0, 200);
    assert_eq!(c.call("GET", "/", &[("x-token", "no")]).await.0, 403);
    assert_eq!(c.call("GET", "/", &[]).await.0, 403);
    s.policy
        .set_rules(set(vec![rule("", "", "", &["X-Token"])]));
    assert_eq!(c.call("GET", "/", &[("x-token", "no")]).await.0, 200);
    assert_eq!(c.call("GET", "/", &[("x-token", "")]).await.0, 200);
    assert_eq!(c.call("GET", "/", &[]).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_match_the_host_header_as_sent() {
    let s = Setup::new(21150, set(vec![rule("", "", "app1", &[])])).await;
    let mut c = s.client().await;
    assert_eq!(c.call("GET", "/", &[("host", "app1")]).await.0, 200);
    assert_eq!(c.call("GET", "/", &[("host", "app2")]).await.0, 403);
    // The port is part of the value matched.
    assert_eq!(c.call("GET", "/", &[("host", "app1:8080")]).await.0, 403);
    s.policy
        .set_rules(set(vec![rule("", "", r"app1(:\d+)?", &[])]));
    assert_eq!(c.call("GET", "/", &[("host", "app1:8080")]).await.0, 200);

    // An absolute-form target decides the host, whatever the Host header says.
    let mut raw = TcpStream::connect(s.addr).await.expect("connect");
    raw.write_all(b"GET http://app1/abs HTTP/1.1\r\nHost: evil\r\n\r\nGET http://evil/abs HTTP/1.1\r\nHost: app1\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let first = read_response(&mut raw, &mut buf).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"GET /abs 0\n");
    assert_eq!(read_response(&mut raw, &mut buf).await.status, 403);
    // Several Host headers are refused; the connection carries on.
    raw.write_all(b"GET / HTTP/1.1\r\nHost: app1\r\nHost: app2\r\n\r\nGET http://u:p@app1:80/x HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let refused = read_response(&mut raw, &mut buf).await;
    assert_eq!(
        (refused.status, refused.body.as_slice()),
        (400, &b"Bad Request\n"[..])
    );
    // The userinfo of an absolute-form target is not part of the host.
    s.policy.set_rules(set(vec![rule("", "", "app1:80", &[])]));
    assert_eq!(read_response(&mut raw, &mut buf).await.status, 200);
    let seen = s.upstream.seen();
    let last = seen.last().expect("seen");
    assert_eq!(last.target, "/x");
    assert_eq!(last.headers["host"], "app1:80");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_with_allowed_denied_allowed() {
    let s = Setup::new(21200, public_get()).await;
    let mut c = s.client().await;
    assert_eq!(c.call("GET", "/public", &[]).await.0, 200);
    assert_eq!(c.call("GET", "/private", &[]).await.0, 403);
    assert_eq!(c.call("GET", "/public", &[]).await.0, 200);
    let seen: Vec<String> = s.upstream.seen().iter().map(|r| r.target.clone()).collect();
    assert_eq!(seen, ["/public", "/public"]);
    // One upstream connection for the one client connection.
    assert_eq!(s.upstream.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_keeps_target_and_end_to_end_headers() {
    let s = Setup::new(21250, Some(Vec::new())).await;
    let mut c = s.client().await;
    let response = c
        .send(request(
            "PUT",
            "/a/b?x=1&y=%20",
            &[
                ("x-token", "yes"),
                ("connection", "keep-alive, x-private"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
            ],
            TestBody::chunks(vec![Bytes::from_static(b"abc")], true),
        ))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-upstream"], "yes");
    let seen = s.upstream.seen();
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str(), r.body_len),
        ("PUT", "/a/b?x=1&y=%20", 3)
    );
    assert_eq!(r.headers["x-token"], "yes");
    assert_eq!(r.headers["host"], "app1");
    for gone in ["x-private", "keep-alive", "te"] {
        assert!(!r.headers.contains_key(gone), "{gone} forwarded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let s = Setup::new(21300, set(vec![rule("GET", "/public.*", "", &[])])).await;
    let mut raw = TcpStream::connect(s.addr).await.expect("connect");
    raw.write_all(
        b"GET /public/1 HTTP/1.1\r\nHost: app1\r\n\r\n\
          GET /private HTTP/1.1\r\nHost: app1\r\n\r\n\
          GET /public/2 HTTP/1.1\r\nHost: app1\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    let r1 = read_response(&mut raw, &mut buf).await;
    let r2 = read_response(&mut raw, &mut buf).await;
    let r3 = read_response(&mut raw, &mut buf).await;
    assert_eq!(
        (r1.status, r1.body.as_slice()),
        (200, &b"GET /public/1 0\n"[..])
    );
    assert_eq!(
        (r2.status, r2.body.as_slice()),
        (403, &b"Access denied\n"[..])
    );
    assert!(r2.headers.contains(&("content-length".into(), "14".into())));
    assert_eq!(
        (r3.status, r3.body.as_slice()),
        (200, &b"GET /public/2 0\n"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_uploads_pass() {
    const SIZE: usize = 1 << 20;
    let s = Setup::new(21350, set(vec![rule("POST", "/upload", "", &[])])).await;
    let mut c = s.client().await;
    for exact in [true, false] {
        let chunks: Vec<Bytes> = (0..64)
            .map(|_| Bytes::from(vec![b'x'; SIZE / 64]))
            .collect();
        let response = c
            .send(request(
                "POST",
                "/upload",
                &[],
                TestBody::chunks(chunks, exact),
            ))
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("POST /upload {SIZE}\n")
        );
    }
    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["content-length"], SIZE.to_string());
    assert_eq!(seen[1].headers["transfer-encoding"], "chunked");
    assert!(seen.iter().all(|r| r.body_len == SIZE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_is_streamed() {
    let s = Setup::new(21400, Some(Vec::new())).await;
    let mut c = s.client().await;
    let response = c
        .send(request("GET", "/stream", &[], TestBody::empty()))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("content-length"));
    let mut body = response.into_body();
    // The first chunk arrives while the upstream holds back the rest: nothing is buffered.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk in time")
        .expect("frame")
        .expect("data");
    assert_eq!(first.into_data().expect("data"), "chunk-1\n");
    s.upstream.release.notify_one();
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(&rest[..], b"chunk-2\nchunk-3\n");
    // The connection is still usable.
    assert_eq!(c.call("GET", "/after", &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_changes_apply_to_the_next_request() {
    let s = Setup::new(21450, public_get()).await;
    let mut c = s.client().await;
    assert_eq!(c.call("GET", "/public", &[]).await.0, 200);
    s.policy
        .set_rules(set(vec![rule("GET", "/other", "", &[])]));
    assert_eq!(c.call("GET", "/public", &[]).await.0, 403);
    assert_eq!(c.call("GET", "/other", &[]).await.0, 200);
    // Two sets: both must allow.
    s.policy.set_rules(Some(vec![
        Arc::new(vec![rule("GET", "", "", &[])]),
        Arc::new(vec![
            rule("", "/public", "", &[]),
            rule("", "/other", "", &[]),
        ]),
    ]));
    assert_eq!(c.call("GET", "/public", &[]).await.0, 200);
    assert_eq!(c.call("POST", "/public", &[]).await.0, 403);
    assert_eq!(c.call("GET", "/third", &[]).await.0, 403);
    // An empty set allows nothing.
    s.policy.set_rules(Some(vec![Arc::new(Vec::new())]));
    assert_eq!(c.call("GET", "/public", &[]).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rule_sets_forward_everything_and_none_denies_all() {
    let s = Setup::new(21500, Some(Vec::new())).await;
    let mut c = s.client().await;
    assert_eq!(c.call("DELETE", "/anything", &[]).await.0, 200);
    assert_eq!(c.call("GET", "/", &[("host", "x")]).await.0, 200);
    s.policy.set_rules(None);
    assert_eq!(c.call("GET", "/", &[]).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gives_503() {
    let s = Setup::new(21550, Some(Vec::new())).await;
    s.policy.set_upstream(refusing_addr());
    let mut c = s.client().await;
    assert_eq!(
        c.call("GET", "/", &[]).await,
        (503, "Service Unavailable\n".into())
    );
    assert_eq!(c.call("GET", "/", &[]).await.0, 503);
    assert_eq!(s.proxy.stats().error, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_upstream_gives_502() {
    let s = Setup::new(21600, Some(Vec::new())).await;
    s.policy
        .set_upstream(raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Le").await);
    let mut c = s.client().await;
    assert_eq!(c.call("GET", "/", &[]).await, (502, "Bad Gateway\n".into()));
    // A new upstream connection is opened for the next request.
    assert_eq!(c.call("GET", "/", &[]).await.0, 502);

    // Closed after the head: the client gets the status, then a cut body.
    s.policy.set_upstream(
        raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this").await,
    );
    let mut c = s.client().await;
    let response = c
        .send(request("GET", "/", &[], TestBody::empty()))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert!(response.into_body().collect().await.is_err());
}

#[test]
fn rules_compile_from_the_api_model() {
    let model = |path: &str, headers: &[&str]| HttpRuleModel {
        method: "GET".into(),
        path: path.into(),
        host: String::new(),
        headers: headers.iter().map(|h| h.to_string()).collect(),
    };
    let r = HttpRule::from_model(&model("/a/.*", &[" X-Token: yes ", "X-Present"])).expect("rule");
    assert_eq!(r.model.headers, ["X-Token: yes", "X-Present"]);
    assert!(r.matches("GET", "/a/b", "", &[("x-token", "yes"), ("x-present", "")]));
    assert!(!r.matches("GET", "/a/b", "", &[("x-token", "yes")]));
    assert!(!r.matches("GET", "/b", "", &[("x-token", "yes"), ("x-present", "")]));
    let e = HttpRule::from_model(&model("/a(", &[])).expect_err("bad regex");
    assert!(
        e.starts_with("path: invalid regular expression '/a('"),
        "{e}"
    );
    let e = HttpRule::from_model(&model("", &["ok", "Bad Header: x"])).expect_err("bad header");
    assert!(
        e.starts_with("headers[1]: 'Bad Header: x' is not a header"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_request_with_body_keeps_the_connection() {
    let s = Setup::new(21850, public_get()).await;
    let mut c = s.client().await;
    // Bodies up to 1 MiB are read and dropped: the connection carries on.
    for (size, exact) in [
        (8192, true),
        (8192, false),
        (1 << 20, true),
        (1 << 20, false),
    ] {
        let chunks = (0..8).map(|_| Bytes::from(vec![b'y'; size / 8])).collect();
        let response = c
            .send(request(
                "POST",
                "/private",
                &[],
                TestBody::chunks(chunks, exact),
            ))
            .await
            .expect("response");
        assert_eq!(response.status(), 403);
        assert_eq!(c.call("GET", "/public", &[]).await.0, 200);
    }
    // A larger one is denied too (the connection is closed, the client may see a reset).
    let mut live = s.proxy.context.log.subscribe();
    let big = TestBody::chunks(vec![Bytes::from(vec![b'y'; 4 << 20])], true);
    let _ = c.send(request("POST", "/private", &[], big)).await;
    let record = live.recv().await.expect("record");
    assert_eq!((record.verdict, record.status), (Verdict::Denied, 403));
    assert!(s.upstream.seen().iter().all(|r| r.method == "GET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reopened() {
    let s = Setup::new(21900, Some(Vec::new())).await;
    for reply in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
    ] {
        s.policy.set_upstream(raw_upstream(reply).await);
        let mut c = s.client().await;
        for i in 0..200 {
            let (status, body) = c.call("GET", "/", &[]).await;
            assert_eq!(
                (status, body.as_str()),
                (200, "ok\n"),
                "request {i} reply {reply:?}"
            );
        }
    }
}
