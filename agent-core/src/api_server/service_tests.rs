//! `/service` over the socket: every status code of the API reference, persistence across
//! an agent restart, the OpenAPI schemas of the models, and the `cilium service` commands
//! against a served agent.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Weak;

use cilium_api::models::{
    BackendAddress, ErrorResponse, FrontendAddress, ServiceFlags, ServiceSpec,
};
use cilium_api::Client;
use clap::Parser;
use http::Method;
use tokio::sync::oneshot;

use super::*;
use crate::config::AgentConfig;

/// An agent serving its socket, with its state under a directory the test owns (so that a
/// second server can restart on it).
struct Server {
    socket: PathBuf,
    agent: Weak<Agent>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let socket = dir.join("api.sock");
        let mut config = AgentConfig::with_dirs(socket.clone(), dir.join("state"));
        config.ipv4_range = Some("10.67.0.0/16".parse().unwrap());
        config.ipv6_range = Some("f00d::43:0:0/96".parse().unwrap());
        config.node_address = Some("192.0.2.67".parse().unwrap());
        let agent = Arc::new(Agent::start(config, Box::new(|_| {})).unwrap());
        let weak = Arc::downgrade(&agent);
        let api = ApiSocket::bind(&socket).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(api.serve(agent, async {
            let _ = stopped.await;
        }));
        Server {
            socket,
            agent: weak,
            stop,
            task,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Stops serving and waits until the agent is gone (its open connections closed), so
    /// its state directory can be opened again.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
        for _ in 0..500 {
            if self.agent.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the agent is still referenced after the server stopped");
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

fn spec(frontend: &str, port: i64, backends: &[(&str, i64)]) -> ServiceSpec {
    ServiceSpec {
        id: 0,
        frontend_address: FrontendAddress {
            ip: frontend.into(),
            port,
            protocol: "tcp".into(),
        },
        backend_addresses: backends
            .iter()
            .map(|(ip, port)| BackendAddress {
                ip: (*ip).into(),
                port: *port,
                weight: 1,
            })
            .collect(),
        flags: None,
    }
}

/// `(status, error message)` of a `PUT /service/{id}` with `body`.
async fn put(c: &Client, id: &str, body: &str) -> (u16, String) {
    let (status, reply) = raw(c, Method::PUT, &format!("/service/{id}"), Some(body)).await;
    let message = if status >= 400 {
        error_of(&reply)
    } else {
        String::new()
    };
    (status, message)
}

#[tokio::test]
async fn every_status_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = server.client();

    // 201 created, 200 updated; the reply is the service as accepted.
    let web = spec(
        "10.96.0.10",
        80,
        &[("10.67.0.5", 8080), ("10.67.0.6", 8080)],
    );
    let (created, svc) = c.service_put(1, &web).await.unwrap();
    assert!(created);
    assert_eq!(svc.spec.id, 1);
    assert_eq!(svc.spec.backend_addresses.len(), 2);
    let (created, svc) = c
        .service_put(1, &spec("10.96.0.10", 80, &[("10.67.0.7", 8080)]))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(svc.spec.backend_addresses[0].ip, "10.67.0.7");
    let (status, _) = put(
        &c,
        "2",
        r#"{"id": 2, "frontend-address": {"ip": "F00D::0:10", "port": 443, "protocol": "TCP"},
            "backend-addresses": [{"ip": "f00d::43:0:5", "port": 8443, "weight": 3}],
            "flags": {"direct-server-return": true}}"#,
    )
    .await;
    assert_eq!(status, 201);
    let got = c.service_get(2).await.unwrap();
    assert_eq!(got.spec.frontend_address.ip, "f00d::10");
    assert_eq!(got.spec.frontend_address.protocol, "tcp");
    assert_eq!(got.spec.backend_addresses[0].weight, 3);
    assert_eq!(
        got.spec.flags,
        Some(ServiceFlags {
            direct_server_return: true,
            active_frontend: false
        })
    );
    let ids: Vec<u16> = c
        .service_list()
        .await
        .unwrap()
        .iter()
        .map(|s| s.spec.id)
        .collect();
    assert_eq!(ids, [1, 2]);

    // 400: ids, bodies, the id of the body.
    for (id, body, expected) in [
        ("0", "{}", "invalid service id '0'"),
        ("65536", "{}", "invalid service id '65536'"),
        ("web", "{}", "invalid service id 'web'"),
        ("3", "", "request body is empty"),
        (
            "3",
            "{\"frontend-address\": ",
            "invalid a service specification",
        ),
        ("3", "{}", "missing field `frontend-address`"),
        (
            "3",
            r#"{"frontend-address": {"ip": "10.96.0.3", "port": 80}, "colour": "red"}"#,
            "unknown field `colour`",
        ),
        (
            "3",
            r#"{"frontend-address": {"ip": "10.96.0.3", "port": 80},
                "backend-addresses": [{"ip": "10.67.0.5", "port": 80, "wieght": 1}]}"#,
            "unknown field `wieght`",
        ),
        (
            "3",
            r#"{"frontend-address": {"ip": "10.96.0.3", "port": "80"}}"#,
            "invalid type",
        ),
        (
            "3",
            r#"{"id": 4, "frontend-address": {"ip": "10.96.0.3", "port": 80}}"#,
            "the path names service 3 but the body says id 4",
        ),
    ] {
        let (status, message) = put(&c, id, body).await;
        assert_eq!(status, 400, "{id} {body}: {message}");
        assert!(message.contains(expected), "{id} {body}: {message}");
    }
    for path in ["/service/0", "/service/x", "/service/1?verbose=1"] {
        let (status, _) = raw(&c, Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}");
    }

    // 460: the frontend.
    for (frontend, expected) in [
        (
            r#"{"ip": "10.96.0.x", "port": 80}"#,
            "'10.96.0.x' is not an IP address",
        ),
        (r#"{"ip": "0.0.0.0", "port": 80}"#, "not a unicast address"),
        (
            r#"{"ip": "10.96.0.3", "port": 0}"#,
            "port 0 is out of range",
        ),
        (
            r#"{"ip": "10.96.0.3", "port": 65536}"#,
            "port 65536 is out of range",
        ),
        (
            r#"{"ip": "10.96.0.3", "port": 80, "protocol": "sctp"}"#,
            "unknown protocol 'sctp'",
        ),
        (
            r#"{"ip": "10.96.0.10", "port": 80, "protocol": "any"}"#,
            "overlaps the frontend 10.96.0.10:80/tcp of service 1",
        ),
    ] {
        let body = format!(r#"{{"frontend-address": {frontend}}}"#);
        let (status, message) = put(&c, "3", &body).await;
        assert_eq!(status, 460, "{frontend}: {message}");
        assert!(message.starts_with("invalid frontend: "), "{message}");
        assert!(message.contains(expected), "{frontend}: {message}");
    }

    // 461: the backends.
    for (backends, expected) in [
        (
            r#"[{"ip": "nope", "port": 80}]"#,
            "invalid backend 1: 'nope'",
        ),
        (
            r#"[{"ip": "10.67.0.5", "port": 80}, {"ip": "10.67.0.6", "port": 0}]"#,
            "invalid backend 2: port 0 is out of range",
        ),
        (
            r#"[{"ip": "f00d::43:0:5", "port": 80}]"#,
            "IPv6 address and the frontend an IPv4 one",
        ),
        (
            r#"[{"ip": "10.67.0.5", "port": 80, "weight": 65536}]"#,
            "weight 65536 of 10.67.0.5:80 is out of range (0-65535)",
        ),
        (
            r#"[{"ip": "10.67.0.5", "port": 80, "weight": -1}]"#,
            "weight -1 of 10.67.0.5:80 is out of range",
        ),
        (
            r#"[{"ip": "10.67.0.5", "port": 80}, {"ip": "10.67.0.5", "port": 80, "weight": 2}]"#,
            "invalid backend 2: 10.67.0.5:80 is backend 1 already",
        ),
    ] {
        let body = format!(
            r#"{{"frontend-address": {{"ip": "10.96.0.3", "port": 80}},
                 "backend-addresses": {backends}}}"#
        );
        let (status, message) = put(&c, "3", &body).await;
        assert_eq!(status, 461, "{backends}: {message}");
        assert!(message.contains(expected), "{backends}: {message}");
    }
    let err = c
        .service_put(3, &spec("10.96.0.3", 80, &[("10.67.0.5", 0)]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(461), "{err}");

    // Nothing of the refused requests was applied.
    assert_eq!(c.service_list().await.unwrap().len(), 2);
    assert_eq!(c.service_get(3).await.unwrap_err().status(), Some(404));

    // 404 and DELETE.
    let (status, body) = raw(&c, Method::GET, "/service/3", None).await;
    assert_eq!(
        (status, error_of(&body)),
        (404, "service 3 not found".into())
    );
    assert_eq!(c.service_delete(3).await.unwrap_err().status(), Some(404));
    assert_eq!(c.service_delete(2).await.unwrap().spec.id, 2);
    assert_eq!(c.service_get(2).await.unwrap_err().status(), Some(404));

    // 405 with the methods that are allowed.
    let reply = c.send(Method::POST, "/service/1", None).await.unwrap();
    assert_eq!(reply.status.as_u16(), 405);
    assert_eq!(
        reply.headers.get(http::header::ALLOW).unwrap(),
        "GET, PUT, DELETE"
    );
    let reply = c.send(Method::DELETE, "/service", None).await.unwrap();
    assert_eq!(reply.status.as_u16(), 405);

    // 500: the state cannot be written; nothing changes.
    let file = dir.path().join("state/services.json");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let err = c
        .service_put(5, &spec("10.96.0.5", 80, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(500), "{err}");
    assert!(err.to_string().contains("cannot save state"), "{err}");
    let err = c.service_delete(1).await.unwrap_err();
    assert_eq!(err.status(), Some(500), "{err}");
    let ids: Vec<u16> = c
        .service_list()
        .await
        .unwrap()
        .iter()
        .map(|s| s.spec.id)
        .collect();
    assert_eq!(ids, [1]);
    drop(c);
    server.stop().await;
}

#[tokio::test]
async fn services_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = server.client();
    let mut web = spec(
        "10.96.0.10",
        80,
        &[("10.67.0.5", 8080), ("10.67.0.6", 8080)],
    );
    web.backend_addresses[1].weight = 0;
    c.service_put(1, &web).await.unwrap();
    c.service_put(2, &spec("f00d::10", 443, &[("f00d::43:0:5", 8443)]))
        .await
        .unwrap();
    c.service_put(3, &spec("10.96.0.30", 53, &[]))
        .await
        .unwrap();
    c.service_delete(3).await.unwrap();
    let before = c.service_list().await.unwrap();
    drop(c);
    server.stop().await;

    let server = Server::start(dir.path());
    let c = server.client();
    assert_eq!(c.service_list().await.unwrap(), before);
    assert_eq!(c.service_get(3).await.unwrap_err().status(), Some(404));
    assert_eq!(
        c.service_get(1).await.unwrap().spec.backend_addresses[1].weight,
        0
    );
    // The restored frontends are still taken, and updates keep working.
    let err = c
        .service_put(4, &spec("10.96.0.10", 80, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(460), "{err}");
    assert!(!c.service_put(1, &web).await.unwrap().0);
    assert!(c.healthz().await.unwrap().cilium.msg.contains("endpoints"));
    drop(c);
    server.stop().await;
}

/// The property names of a schema of `openapi.json`.
fn schema_properties(doc: &serde_json::Value, name: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {name}"))
        .keys()
        .cloned()
        .collect()
}

fn keys(value: &serde_json::Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn openapi_schemas_match_the_models() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../api/openapi.json")).unwrap();
    let full = ServiceSpec {
        id: 1,
        flags: Some(ServiceFlags {
            active_frontend: true,
            direct_server_return: true,
        }),
        ..spec("10.96.0.1", 80, &[("10.67.0.5", 80)])
    };
    let service = cilium_api::models::Service {
        spec: full.clone(),
        status: Some(cilium_api::models::ServiceStatus {
            realized: full.clone(),
        }),
    };
    let json = serde_json::to_value(&service).unwrap();
    assert_eq!(keys(&json), schema_properties(&doc, "Service"));
    assert_eq!(
        keys(&json["status"]),
        schema_properties(&doc, "ServiceStatus")
    );
    let spec_json = &json["spec"];
    assert_eq!(keys(spec_json), schema_properties(&doc, "ServiceSpec"));
    assert_eq!(
        keys(&spec_json["frontend-address"]),
        schema_properties(&doc, "FrontendAddress")
    );
    assert_eq!(
        keys(&spec_json["backend-addresses"][0]),
        schema_properties(&doc, "BackendAddress")
    );
    assert_eq!(
        keys(&spec_json["flags"]),
        schema_properties(&doc, "ServiceFlags")
    );
    // The documented status codes are the ones the server answers.
    let put = &doc["paths"]["/service/{id}"]["put"]["responses"];
    let codes: BTreeSet<String> = keys(put);
    let expected: BTreeSet<String> = ["200", "201", "400", "460", "461", "500"]
        .map(String::from)
        .into();
    assert_eq!(codes, expected);
}

#[tokio::test]
async fn cilium_service_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let host = format!("unix://{}", server.socket.display());
    let run = |argv: Vec<&str>| {
        let mut full = vec!["cilium", "-H", host.as_str()];
        full.extend(argv);
        let cli = crate::cli::Cli::try_parse_from(full).unwrap();
        crate::cli::run(cli)
    };
    let code = run(vec![
        "service",
        "update",
        "--id",
        "7",
        "--frontend",
        "[f00d::10]:80/tcp",
        "--backends",
        "[f00d::43:0:5]:8080,[f00d::43:0:6]:8080",
        "--weights",
        "2,1",
    ])
    .await
    .unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let c = server.client();
    let got = c.service_get(7).await.unwrap();
    assert_eq!(got.spec.frontend_address.ip, "f00d::10");
    let weights: Vec<i64> = got
        .spec
        .backend_addresses
        .iter()
        .map(|b| b.weight)
        .collect();
    assert_eq!(weights, [2, 1]);

    // An invalid backend is the agent's 461.
    let err = run(vec![
        "service",
        "update",
        "--id",
        "8",
        "--frontend",
        "10.96.0.8:80",
        "--backends",
        "[f00d::43:0:5]:8080",
    ])
    .await
    .unwrap_err();
    assert!(
        matches!(&err, crate::cli::CliError::Client(e) if e.status() == Some(461)),
        "{err}"
    );

    for argv in [
        vec!["service", "list"],
        vec!["service", "list", "-o", "json"],
        vec!["service", "get", "7"],
    ] {
        assert_eq!(run(argv).await.unwrap(), std::process::ExitCode::SUCCESS);
    }
    let err = run(vec!["service", "get", "8"]).await.unwrap_err();
    assert!(
        matches!(&err, crate::cli::CliError::Client(e) if e.status() == Some(404)),
        "{err}"
    );
    // Deleting an unknown id fails the command but deletes the others.
    assert_eq!(
        run(vec!["service", "delete", "8", "7"]).await.unwrap(),
        std::process::ExitCode::FAILURE
    );
    assert!(c.service_list().await.unwrap().is_empty());
    run(vec![
        "service",
        "update",
        "--id",
        "1",
        "--frontend",
        "10.96.0.1:80",
    ])
    .await
    .unwrap();
    run(vec![
        "service",
        "update",
        "--id",
        "2",
        "--frontend",
        "10.96.0.2:80",
    ])
    .await
    .unwrap();
    assert_eq!(
        run(vec!["service", "delete", "--all"]).await.unwrap(),
        std::process::ExitCode::SUCCESS
    );
    assert!(c.service_list().await.unwrap().is_empty());
    drop(c);
    server.stop().await;
}
