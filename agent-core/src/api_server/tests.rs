use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use cilium_api::models::ErrorResponse;
use cilium_api::Client;
use http::Method;
use tokio::sync::oneshot;

use super::routes::ROUTES;
use super::*;
use crate::config::AgentConfig;

struct TestServer {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let mut config = AgentConfig::with_dirs(socket.clone(), dir.path().join("state"));
        config.ipv4_range = Some("10.66.0.0/16".parse().unwrap());
        config.ipv6_range = Some("f00d::42:0:0/96".parse().unwrap());
        config.node_address = Some("192.0.2.66".parse().unwrap());
        let agent = Arc::new(Agent::start(config, Box::new(|_| {})).unwrap());
        let api = ApiSocket::bind(&socket).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(api.serve(agent, async {
            let _ = stopped.await;
        }));
        TestServer {
            _dir: dir,
            socket,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Stops serving; returns the temp dir so a test can keep using it.
    async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        self._dir
    }
}

async fn raw(client: &Client, method: Method, path: &str, body: Option<&str>) -> (u16, String) {
    let reply = client
        .send(method, path, body.map(|b| b.as_bytes().to_vec()))
        .await
        .unwrap();
    (
        reply.status.as_u16(),
        String::from_utf8(reply.body.to_vec()).unwrap(),
    )
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<ErrorResponse>(body)
        .unwrap_or_else(|_| panic!("not an error: {body}"))
        .error
}

#[tokio::test]
async fn socket_mode_stale_replacement_and_second_agent() {
    let server = TestServer::start().await;
    let mode = fs::metadata(&server.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A second agent on the same live socket refuses.
    let err = ApiSocket::bind(&server.socket).unwrap_err();
    assert!(matches!(err, SocketError::AgentRunning { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("another cilium-agent is already serving"),
        "{err}"
    );
    let socket = server.socket.clone();
    let _dir = server.stop().await;
    assert!(!socket.exists(), "socket removed on shutdown");

    // A stale socket file (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let api = ApiSocket::bind(&socket).unwrap();
    assert_eq!(
        fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
    drop(api);

    // A regular file is never replaced.
    fs::write(&socket, b"data").unwrap();
    let err = ApiSocket::bind(&socket).unwrap_err();
    assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
    assert_eq!(fs::read(&socket).unwrap(), b"data");
}

#[tokio::test]
async fn foreign_listener_is_not_displaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busy.sock");
    let _other = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let err = ApiSocket::bind(&socket).unwrap_err();
    assert!(matches!(err, SocketError::InUse { .. }), "{err}");
}

#[tokio::test]
async fn request_validation() {
    let server = TestServer::start().await;
    let c = server.client();

    let (status, body) = raw(
        &c,
        Method::PUT,
        "/endpoint/container-id:a",
        Some("{\"container-id\": "),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).starts_with("invalid an endpoint change request: EOF"),
        "{body}"
    );

    let (status, body) = raw(
        &c,
        Method::PUT,
        "/endpoint/container-id:a",
        Some(r#"{"bogus": 1}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("unknown field `bogus`"), "{body}");

    let (status, body) = raw(&c, Method::PUT, "/endpoint/container-id:a", None).await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("request body is empty"), "{body}");

    let huge = format!(
        "{{\"container-name\": \"{}\"}}",
        "x".repeat(cilium_api::MAX_BODY_BYTES)
    );
    let (status, body) = raw(&c, Method::PUT, "/endpoint/container-id:a", Some(&huge)).await;
    assert_eq!(status, 413, "{body}");

    let (status, body) = raw(&c, Method::GET, "/nope", None).await;
    assert_eq!(
        (status, error_of(&body)),
        (404, "no such API path: /v1/nope".to_string())
    );

    let reply = c.send(Method::DELETE, "/healthz", None).await.unwrap();
    assert_eq!(reply.status.as_u16(), 405);
    assert_eq!(reply.headers.get(http::header::ALLOW).unwrap(), "GET");

    let (status, body) = raw(&c, Method::POST, "/ipam?owner=x&colour=red", None).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("unknown query parameter 'colour'"),
        "{body}"
    );

    let (status, body) = raw(&c, Method::GET, "/endpoint/foo:bar", None).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("unknown endpoint id prefix 'foo'"),
        "{body}"
    );

    let (status, body) = raw(&c, Method::POST, "/ipam/10.99.0.1?owner=x", None).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("outside the allocation range 10.66.0.0/16"),
        "{body}"
    );

    let (status, _) = raw(&c, Method::POST, "/ipam/not-an-ip?owner=x", None).await;
    assert_eq!(status, 400);

    // Nothing of the above left anything behind.
    assert!(c.endpoint_list(&[]).await.unwrap().is_empty());
    assert_eq!(c.healthz().await.unwrap().ipam.ipv4, vec!["10.66.0.1"]);
    server.stop().await;
}

#[tokio::test]
async fn status_codes_of_ipam_and_endpoints() {
    let server = TestServer::start().await;
    let c = server.client();
    let pair = c
        .ipam_allocate(Some(cilium_api::models::Family::Ipv4), "test")
        .await
        .unwrap();
    let ip = pair.endpoint.ipv4.unwrap();
    assert_eq!(
        pair.host_addressing.ipv4.ip.unwrap().to_string(),
        "10.66.0.1"
    );
    let err = c.ipam_reserve(ip, "again").await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert_eq!(c.ipam_release(ip).await.unwrap().owner, "test");
    assert_eq!(c.ipam_release(ip).await.unwrap_err().status(), Some(404));

    let id: cilium_api::EndpointId = "container-id:abc".parse().unwrap();
    let created = c.endpoint_create(&id, &Default::default()).await.unwrap();
    assert_eq!(created.id, 1);
    assert_eq!(
        c.endpoint_create(&id, &Default::default())
            .await
            .unwrap_err()
            .status(),
        Some(409)
    );
    let modifier = cilium_api::models::LabelsModifier {
        add: vec![],
        delete: vec!["k8s:x".into()],
    };
    assert_eq!(
        c.endpoint_labels_modify(&id, &modifier)
            .await
            .unwrap_err()
            .status(),
        Some(460)
    );
    let (status, _) = raw(&c, Method::GET, "/endpoint?labels=k8s:nothing", None).await;
    assert_eq!(status, 404);
    assert!(c.endpoint_delete(&id).await.unwrap().is_none());
    assert_eq!(c.endpoint_get(&id).await.unwrap_err().status(), Some(404));
    server.stop().await;
}

fn documented_operations() -> BTreeSet<(String, String)> {
    let text = include_str!("../../api/openapi.json");
    let doc: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                out.insert((path.clone(), method.to_uppercase()));
            }
        }
    }
    out
}

fn concrete(template: &str) -> String {
    if template == "/monitor" {
        // The stream never ends while a datapath runs; an invalid filter is answered at once
        // and still proves the route and its method.
        return "/monitor?type=none-such".to_string();
    }
    template
        .replace("{ip}", "10.66.0.200")
        .replace("{id}", "cilium-local:4242")
}

#[tokio::test]
async fn openapi_document_matches_the_server() {
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|r| {
            r.methods
                .iter()
                .map(move |m| (r.template.to_string(), m.to_string()))
        })
        .collect();
    assert_eq!(
        documented_operations(),
        served,
        "openapi.json and the route table differ"
    );

    let server = TestServer::start().await;
    let c = server.client();
    let all = [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::PATCH,
        Method::DELETE,
    ];
    for spec in ROUTES {
        let path = concrete(spec.template);
        for method in &all {
            let reply = c
                .send(method.clone(), &path, Some(b"{}".to_vec()))
                .await
                .unwrap();
            let status = reply.status.as_u16();
            if spec.methods.contains(method) {
                assert_ne!(status, 405, "{method} {path} is documented but refused");
                let is_route_404 = status == 404
                    && String::from_utf8_lossy(&reply.body).contains("no such API path");
                assert!(
                    !is_route_404,
                    "{method} {path} is documented but not routed"
                );
            } else {
                assert_eq!(status, 405, "{method} {path} is served but not documented");
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn datapath_routes_without_a_datapath() {
    let server = TestServer::start().await;
    let c = server.client();
    for path in ["/map/endpoint", "/map/ipcache", "/map/ct", "/monitor"] {
        let (status, body) = raw(&c, Method::GET, path, None).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert!(
            error_of(&body).contains("datapath is not running"),
            "{path}: {body}"
        );
    }
    let err = c.bpf_ct_list().await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    let err = c.monitor(None).await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");

    let (status, body) = raw(&c, Method::GET, "/monitor?type=drops", None).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("invalid event type 'drops'"),
        "{body}"
    );
    let (status, body) = raw(&c, Method::GET, "/monitor?verbose=1", None).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("unknown query parameter 'verbose'"),
        "{body}"
    );
    let (status, body) = raw(&c, Method::GET, "/map/policy/foo:bar", None).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("unknown endpoint id prefix 'foo'"),
        "{body}"
    );
    let (status, _) = raw(&c, Method::GET, "/map/ct?all=1", None).await;
    assert_eq!(status, 400);
    // The agent keeps serving the other routes on the same connection.
    assert!(c.endpoint_list(&[]).await.unwrap().is_empty());
    server.stop().await;
}

#[test]
fn socket_group_is_given_when_the_group_exists() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // `daemon` (gid 1) exists on Debian; a group that does not exist changes nothing.
    assert_eq!(
        super::chgrp_if_exists(&path, "no-such-group-cilium-test").unwrap(),
        None
    );
    let before = std::fs::metadata(&path).unwrap().gid();
    if let Some(gid) = super::chgrp_if_exists(&path, "daemon").unwrap() {
        assert_eq!(std::fs::metadata(&path).unwrap().gid(), gid);
    } else {
        assert_eq!(std::fs::metadata(&path).unwrap().gid(), before);
    }
}
