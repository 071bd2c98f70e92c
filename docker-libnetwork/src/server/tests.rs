use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;

use http_body_util::{BodyExt, Empty as EmptyBody};
use serde_json::{json, Value};

use super::*;
use crate::fake::{FakeAgent, Harness};

async fn reply_of(response: Response<Full<Bytes>>) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn malformed_bodies_are_err_replies() {
    let h = Harness::new(FakeAgent::dual_stack());
    let (status, reply) = h.raw("NetworkDriver.CreateNetwork", "{not json").await;
    assert_eq!(status, 200);
    let err = reply["Err"].as_str().unwrap();
    assert!(
        err.starts_with(
            "invalid request body for NetworkDriver.CreateNetwork: key must be a string"
        ),
        "{err}"
    );
    let (status, reply) = h.raw("IpamDriver.RequestAddress", r#"{"PoolID": 4}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        reply.get("Err"),
        None,
        "IPAM failures use the Error field: {reply}"
    );
    let err = reply["Error"].as_str().unwrap();
    assert!(
        err.starts_with("invalid request body for IpamDriver.RequestAddress: invalid type"),
        "{err}"
    );
    let (_, reply) = h.raw("NetworkDriver.Leave", "").await;
    assert!(reply["Err"].as_str().unwrap().contains("EOF"), "{reply}");
    // Fields from newer Docker versions are ignored.
    let body = json!({"Pool": "", "V6": false, "NewField": {"x": 1}});
    assert_eq!(
        h.call("IpamDriver.RequestPool", body).await["PoolID"],
        "CiliumPoolv4"
    );
}

#[tokio::test]
async fn unknown_and_unsupported_methods_are_404() {
    let h = Harness::new(FakeAgent::dual_stack());
    let (status, reply) = h.raw("Foo.Bar", "{}").await;
    assert_eq!(status, 404);
    assert_eq!(reply, json!({"Err": "unknown method Foo.Bar"}));
    for method in [
        "NetworkDriver.ProgramExternalConnectivity",
        "NetworkDriver.RevokeExternalConnectivity",
        "NetworkDriver.AllocateNetwork",
        "NetworkDriver.FreeNetwork",
    ] {
        let (status, reply) = h.raw(method, "{}").await;
        assert_eq!(status, 404, "{method}");
        assert_eq!(reply["Err"], format!("{method} is not supported"));
    }
}

#[tokio::test]
async fn only_post_is_allowed() {
    let h = Harness::new(FakeAgent::dual_stack());
    let request = Request::get("/Plugin.Activate")
        .body(EmptyBody::<Bytes>::new())
        .unwrap();
    let response = handle(&h.driver, request).await;
    assert_eq!(response.headers()[header::ALLOW], "POST");
    let (status, reply) = reply_of(response).await;
    assert_eq!(status, 405);
    assert_eq!(reply, json!({"Err": "method GET not allowed; use POST"}));
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let h = Harness::new(FakeAgent::dual_stack());
    let big = format!(r#"{{"PoolID": "{}"}}"#, "x".repeat(MAX_BODY_BYTES));
    let (status, reply) = h.raw("IpamDriver.ReleasePool", &big).await;
    assert_eq!(status, 200);
    assert_eq!(
        reply,
        json!({"Error": "request body exceeds 1048576 bytes"})
    );
    // Announced by Content-Length: refused before reading.
    let request = Request::post("/IpamDriver.ReleasePool")
        .header(header::CONTENT_LENGTH, "2000000")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let (_, reply) = reply_of(handle(&h.driver, request).await).await;
    assert_eq!(
        reply,
        json!({"Error": "request body exceeds 1048576 bytes"})
    );
}

/// One raw HTTP/1.1 exchange on a std unix stream; returns the whole response text.
fn raw_post(path: &std::path::Path, method: &str, body: &str) -> String {
    let mut stream = StdUnixStream::connect(path).unwrap();
    write!(
        stream,
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[tokio::test]
async fn serves_on_a_unix_socket() {
    let h = Harness::new(FakeAgent::dual_stack());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugins/cilium.sock");
    let socket = PluginSocket::bind(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, SOCKET_MODE);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = Arc::new(h.driver);
    let server = tokio::spawn(socket.serve(driver, async {
        let _ = stopped.await;
    }));

    let client_path = path.clone();
    let (activate, unknown) = tokio::task::spawn_blocking(move || {
        (
            raw_post(&client_path, "Plugin.Activate", ""),
            raw_post(&client_path, "NetworkDriver.Nope", "{}"),
        )
    })
    .await
    .unwrap();
    assert!(activate.starts_with("HTTP/1.1 200 OK\r\n"), "{activate}");
    assert!(
        activate.contains("content-type: application/vnd.docker.plugins.v1+json\r\n"),
        "{activate}"
    );
    assert!(
        activate.ends_with(r#"{"Implements":["NetworkDriver","IpamDriver"]}"#),
        "{activate}"
    );
    assert!(
        unknown.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{unknown}"
    );
    assert!(
        unknown.ends_with(r#"{"Err":"unknown method NetworkDriver.Nope"}"#),
        "{unknown}"
    );

    // A second plugin on the same path refuses to start while this one serves.
    let err = PluginSocket::bind(&path).unwrap_err();
    assert!(matches!(err, SocketError::InUse { .. }), "{err}");

    stop.send(()).unwrap();
    server.await.unwrap();
    assert!(!path.exists(), "socket file left behind");
}

#[tokio::test]
async fn stale_sockets_are_replaced_and_other_files_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cilium.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let socket = PluginSocket::bind(&path).unwrap();
    drop(socket);
    assert!(!path.exists());

    fs::write(&path, "not a socket").unwrap();
    let err = PluginSocket::bind(&path).unwrap_err();
    assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "not a socket");
}
