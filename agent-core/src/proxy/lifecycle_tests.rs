//! The proxy end to end on loopback, its life cycle: listeners added and removed, shutdown,
//! refused connections, timeouts, unparsable input and the access log. Needs root.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::broadcast;

use super::testutil::{
    public_get, read_response, read_to_close, refusing_addr, request, Client, FakePolicy, Setup,
    TestBody, TestUpstream,
};
use super::{AccessLog, AccessRecord, Proxy, ProxyError, ProxyStats, Verdict, PROXY_PORTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_400_then_close() {
    let s = Setup::new(21650, Some(Vec::new())).await;
    let mut live = s.proxy.context.log.subscribe();
    for garbage in [
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"[..],
        b"hello\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
    ] {
        let mut raw = TcpStream::connect(s.addr).await.expect("connect");
        raw.write_all(garbage).await.expect("write");
        let reply = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut raw))
            .await
            .expect("closed in time");
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{garbage:?} → {text:?}"
        );
        let record = live.recv().await.expect("record");
        assert_eq!((record.verdict, record.status), (Verdict::Error, 400));
    }
    assert!(s.upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_file_and_live_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let (tx, mut live) = broadcast::channel(16);
    let log = AccessLog::new(Some(&path), tx).expect("log");
    let s = Setup::with_log(21700, public_get(), log).await;
    let mut c = s.client().await;
    assert_eq!(c.call("GET", "/public", &[]).await.0, 200);
    assert_eq!(c.call("GET", "/private", &[]).await.0, 403);
    s.policy.set_upstream(refusing_addr());
    s.policy.set_rules(Some(Vec::new()));
    let mut c2 = s.client().await;
    assert_eq!(c2.call("POST", "/x", &[("host", "app9:81")]).await.0, 503);

    let text = std::fs::read_to_string(&path).expect("read log");
    let from_file: Vec<AccessRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let mut from_live = Vec::new();
    while let Ok(r) = live.try_recv() {
        from_live.push(r);
    }
    // JSON numbers come back within an ulp of what was written.
    assert_eq!(from_file.len(), from_live.len());
    for (mut file, live) in from_file.clone().into_iter().zip(from_live) {
        assert!((file.duration_ms - live.duration_ms).abs() < 1e-9);
        file.duration_ms = live.duration_ms;
        assert_eq!(file, live);
    }
    let brief: Vec<(Verdict, u16, &str, &str, &str)> = from_file
        .iter()
        .map(|r| {
            (
                r.verdict,
                r.status,
                r.method.as_str(),
                r.host.as_str(),
                r.path.as_str(),
            )
        })
        .collect();
    assert_eq!(
        brief,
        [
            (Verdict::Forwarded, 200, "GET", "app1", "/public"),
            (Verdict::Denied, 403, "GET", "app1", "/private"),
            (Verdict::Error, 503, "POST", "app9:81", "/x"),
        ]
    );
    let first = &from_file[0];
    assert_eq!(first.source.identity, 261);
    assert_eq!(first.source.labels, ["k8s:app=client"]);
    assert_eq!(first.source.address, c.local.to_string());
    assert_eq!(first.destination.identity, 262);
    assert_eq!(first.destination.address, s.addr.to_string());
    assert!(first.duration_ms >= 0.0 && first.duration_ms < 5000.0);
    assert!(
        first.time.ends_with('Z') && first.time.len() == 24,
        "{}",
        first.time
    );
    assert!(first
        .summary()
        .starts_with("<- forwarded 200 GET http://app1/public from 127.0.0.1:"));
    assert_eq!(
        s.proxy.stats(),
        ProxyStats {
            forwarded: 1,
            denied: 1,
            error: 1,
            refused: 0
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_are_idempotent_and_removal_keeps_open_connections() {
    let s = Setup::new(21750, public_get()).await;
    let port = s.addr.port();
    assert_eq!(s.proxy.add_port(80).expect("again"), port);
    let other = s.proxy.add_port(8080).expect("second port");
    assert_ne!(other, port);
    assert_eq!(
        s.proxy.ports().into_iter().collect::<Vec<_>>(),
        [(80, port), (8080, other)]
    );
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let mut over_v6 = Client::connect(v6).await;
    assert_eq!(over_v6.call("GET", "/public", &[]).await.0, 200);

    let mut kept = s.client().await;
    assert_eq!(kept.call("GET", "/public", &[]).await.0, 200);
    s.proxy.remove_port(80);
    for addr in [s.addr, v6] {
        let e = TcpStream::connect(addr).await.expect_err("listener closed");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}");
    }
    assert_eq!(kept.call("GET", "/public", &[]).await.0, 200);
    assert_eq!(kept.call("GET", "/private", &[]).await.0, 403);
    assert_eq!(
        s.proxy.ports().into_iter().collect::<Vec<_>>(),
        [(8080, other)]
    );
    s.proxy.remove_port(80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_range_and_shutdown() {
    let upstream = TestUpstream::start().await;
    let policy = FakePolicy::new(upstream.addr, Some(Vec::new()));
    let proxy = Proxy::new(Handle::current(), policy, AccessLog::live_only(4));
    let port = proxy.add_port(443).expect("add_port");
    assert!(PROXY_PORTS.contains(&port));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = Client::connect(addr).await;
    assert_eq!(c.call("GET", "/", &[]).await.0, 200);
    proxy.shutdown();
    assert!(matches!(proxy.add_port(443), Err(ProxyError::Shutdown)));
    assert!(proxy.ports().is_empty());
    // The open connection was asked to finish: it closes once idle.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while c
            .send(request("GET", "/", &[], TestBody::empty()))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_closed() {
    let s = Setup::new(21800, Some(Vec::new())).await;
    s.policy.refuse.store(true, Ordering::SeqCst);
    let mut raw = TcpStream::connect(s.addr).await.expect("connect");
    let _ = raw.write_all(b"GET / HTTP/1.1\r\nHost: app1\r\n\r\n").await;
    let reply = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut raw))
        .await
        .expect("closed in time");
    assert!(reply.is_empty());
    assert_eq!(s.proxy.stats().refused, 1);
    assert!(s.upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_disconnected() {
    let upstream = TestUpstream::start().await;
    let policy = FakePolicy::new(upstream.addr, Some(Vec::new()));
    let proxy = Proxy::new(Handle::current(), policy, AccessLog::live_only(4))
        .with_port_range(21950..=21999)
        .with_header_read_timeout(Duration::from_millis(300));
    let addr = SocketAddr::from(([127, 0, 0, 1], proxy.add_port(80).expect("add_port")));
    // Idle after a request, and a head that never ends.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: app1\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut idle, &mut buf).await.status, 200);
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: ap")
        .await
        .expect("write");
    for stream in [&mut idle, &mut slow] {
        let rest = tokio::time::timeout(Duration::from_secs(5), read_to_close(stream))
            .await
            .expect("closed by the proxy");
        // hyper sends nothing on a header timeout: it closes.
        assert!(rest.is_empty(), "{rest:?}");
    }
}
