//! The Docker watcher (`--docker`): links each Docker endpoint to its container and gives it
//! the container's labels as `container:` labels, so the endpoint leaves the `reserved:init`
//! identity for the identity of its labels.
//!
//! One session per connection to dockerd: subscribe to events first, then list every running
//! container (a resync, so nothing that happened before the subscription is missed), then
//! follow `start`, `rename` and network `connect` events, and resync every
//! [`RESYNC_INTERVAL`] while some endpoint still waits for its labels. After `die`, `destroy`
//! and network `disconnect` (and at every full resync), endpoints whose container no longer
//! has them are deleted: Docker drops an endpoint without the plugin's help when the plugin
//! is down at the time, and the agent is the one left to clean up. When Docker is absent
//! or goes away the session ends, `cilium status` says why (`ContainerRuntime: Failure`) and
//! the watcher reconnects with a capped backoff; the agent never stops for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerInspectResponse, ContainerSummary, EndpointSettings, EventMessage,
    EventMessageTypeEnum,
};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::{Docker, API_DEFAULT_VERSION};
use cilium_api::models::StatusState;
use futures_util::StreamExt;

use crate::daemon::{Agent, ContainerInfo, LiveContainers};

/// Timeout of one Docker API request (seconds; not the event stream).
const REQUEST_TIMEOUT: u64 = 10;
/// While endpoints wait for their container's labels, the containers are listed this often.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(2);
/// Every container is listed this often anyway (events lost to a slow reader).
const FULL_RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// How long after a `die`/`disconnect` event stale endpoints are looked for: the plugin's
/// `DeleteEndpoint` has been tried by then.
const STALE_GRACE: Duration = Duration::from_secs(1);
/// Reconnection backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Starts the watcher on the current tokio runtime.
pub fn spawn(agent: Arc<Agent>, socket: PathBuf) {
    tokio::spawn(async move { watch(agent, socket).await });
}

async fn watch(agent: Arc<Agent>, socket: PathBuf) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let why = match session(&agent, &socket).await {
            Ok(never) => match never {},
            Err(why) => why,
        };
        agent.set_container_runtime(
            StatusState::Failure,
            format!("Docker at unix://{}: {why}", socket.display()),
        );
        if started.elapsed() > BACKOFF_MAX * 2 {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Uninhabited: a session only ends with an error.
enum Never {}

async fn session(agent: &Arc<Agent>, socket: &Path) -> Result<Never, String> {
    let path = socket
        .to_str()
        .ok_or_else(|| "the socket path is not UTF-8".to_string())?;
    if !socket.exists() {
        return Err("no socket (is dockerd running?)".into());
    }
    let docker = Docker::connect_with_unix(path, REQUEST_TIMEOUT, API_DEFAULT_VERSION)
        .map_err(|e| format!("cannot connect: {e}"))?
        .negotiate_version()
        .await
        .map_err(|e| format!("cannot talk to dockerd: {e}"))?;
    let version = docker
        .version()
        .await
        .map_err(|e| format!("cannot read the version: {e}"))?;

    let filters = HashMap::from([
        (
            "type".to_string(),
            vec!["container".into(), "network".into()],
        ),
        (
            "event".to_string(),
            vec![
                "start".into(),
                "rename".into(),
                "connect".into(),
                "die".into(),
                "destroy".into(),
                "disconnect".into(),
            ],
        ),
    ]);
    let mut events = Box::pin(docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..EventsOptions::default()
    })));
    resync(agent, &docker, true).await?;
    agent.set_container_runtime(
        StatusState::Ok,
        format!(
            "Docker {} (API {}) at unix://{}",
            version.version.as_deref().unwrap_or("?"),
            version.api_version.as_deref().unwrap_or("?"),
            socket.display()
        ),
    );

    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full = Instant::now();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    let Some(container) = container_of(&event) else {
                        continue;
                    };
                    match event.action.as_deref() {
                        Some("die" | "destroy" | "disconnect") => {
                            // The plugin's own deletes come first; look a moment later.
                            let (agent, docker) = (Arc::clone(agent), docker.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(STALE_GRACE).await;
                                remove_stale(&agent, &docker, &container).await;
                            });
                        }
                        _ => sync_container(agent, &docker, &container).await,
                    }
                }
                Some(Err(e)) => return Err(format!("event stream failed: {e}")),
                None => return Err("event stream ended (dockerd stopped?)".into()),
            },
            _ = tick.tick() => {
                if last_full.elapsed() >= FULL_RESYNC_INTERVAL {
                    resync(agent, &docker, true).await?;
                    last_full = Instant::now();
                } else if !agent.pending_docker_endpoints().is_empty() {
                    resync(agent, &docker, false).await?;
                }
            }
        }
    }
}

/// The container an event is about: the actor of a container event, the `container`
/// attribute of a network event.
fn container_of(event: &EventMessage) -> Option<String> {
    let actor = event.actor.as_ref()?;
    match event.typ? {
        EventMessageTypeEnum::CONTAINER => actor.id.clone(),
        EventMessageTypeEnum::NETWORK => actor.attributes.as_ref()?.get("container").cloned(),
        _ => None,
    }
    .filter(|id| !id.is_empty())
}

fn endpoint_ids(networks: Option<&HashMap<String, EndpointSettings>>) -> Vec<String> {
    let mut ids: Vec<String> = networks
        .into_iter()
        .flat_map(|n| n.values())
        .filter_map(|s| s.endpoint_id.clone())
        .filter(|id| !id.is_empty())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn labels(map: Option<&HashMap<String, String>>) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = map
        .into_iter()
        .flat_map(|m| m.iter())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.sort();
    labels
}

fn clean_name(name: &str) -> String {
    name.trim_start_matches('/').to_string()
}

/// From `GET /containers/{id}/json`.
pub fn from_inspect(c: &ContainerInspectResponse) -> ContainerInfo {
    ContainerInfo {
        id: c.id.clone().unwrap_or_default(),
        name: clean_name(c.name.as_deref().unwrap_or_default()),
        labels: labels(c.config.as_ref().and_then(|c| c.labels.as_ref())),
        endpoint_ids: endpoint_ids(
            c.network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref()),
        ),
    }
}

/// From `GET /containers/json`.
pub fn from_summary(c: &ContainerSummary) -> ContainerInfo {
    ContainerInfo {
        id: c.id.clone().unwrap_or_default(),
        name: clean_name(
            c.names
                .as_ref()
                .and_then(|n| n.first())
                .map_or("", String::as_str),
        ),
        labels: labels(c.labels.as_ref()),
        endpoint_ids: endpoint_ids(
            c.network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref()),
        ),
    }
}

/// Inspects one container and applies it; a container that is gone again is skipped.
async fn sync_container(agent: &Arc<Agent>, docker: &Docker, id: &str) {
    match docker.inspect_container(id, None).await {
        Ok(c) => apply(agent, from_inspect(&c)).await,
        Err(e) => tracing::debug!(container = %id, "cannot inspect: {e}"),
    }
}

/// Lists every running container and applies each; a `full` resync also deletes the
/// endpoints whose container no longer has them.
async fn resync(agent: &Arc<Agent>, docker: &Docker, full: bool) -> Result<(), String> {
    let containers = docker
        .list_containers(Some(ListContainersOptions::default()))
        .await
        .map_err(|e| format!("cannot list containers: {e}"))?;
    let mut live = HashMap::new();
    for c in &containers {
        let info = from_summary(c);
        live.insert(info.id.clone(), info.endpoint_ids.clone());
        apply(agent, info).await;
    }
    if full {
        let agent = Arc::clone(agent);
        let _ = tokio::task::spawn_blocking(move || {
            agent.remove_stale_docker_endpoints(&LiveContainers::All(&live))
        })
        .await;
    }
    Ok(())
}

/// After `die`, `destroy` or `disconnect` of `container`: deletes its endpoints that Docker no
/// longer has (all of them when the container is gone or stopped).
async fn remove_stale(agent: &Arc<Agent>, docker: &Docker, container: &str) {
    let endpoints = match docker.inspect_container(container, None).await {
        Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => {
            from_inspect(&c).endpoint_ids
        }
        Ok(_) => Vec::new(),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Vec::new(),
        Err(e) => {
            tracing::debug!(container, "cannot inspect: {e}");
            return;
        }
    };
    let agent = Arc::clone(agent);
    let container = container.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        agent.remove_stale_docker_endpoints(&LiveContainers::One {
            container: &container,
            endpoints: &endpoints,
        })
    })
    .await;
}

async fn apply(agent: &Arc<Agent>, container: ContainerInfo) {
    if container.id.is_empty() || container.endpoint_ids.is_empty() {
        return;
    }
    let agent = Arc::clone(agent);
    // Endpoint updates take the agent's lock and write state: off the async workers.
    let outcome = tokio::task::spawn_blocking(move || {
        let outcome = agent.container_update(&container);
        (container, outcome)
    })
    .await;
    if let Ok((container, outcome)) = outcome {
        for e in outcome.errors {
            tracing::warn!(container = %container.name, "cannot apply the container: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerConfig, EventActor, NetworkSettings};

    use super::*;

    #[test]
    fn events_name_their_container() {
        let container = EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some("start".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: None,
            }),
            ..EventMessage::default()
        };
        assert_eq!(container_of(&container).as_deref(), Some("abc"));
        let network = EventMessage {
            typ: Some(EventMessageTypeEnum::NETWORK),
            action: Some("connect".into()),
            actor: Some(EventActor {
                id: Some("net1".into()),
                attributes: Some(HashMap::from([("container".into(), "def".into())])),
            }),
            ..EventMessage::default()
        };
        assert_eq!(container_of(&network).as_deref(), Some("def"));
        let image = EventMessage {
            typ: Some(EventMessageTypeEnum::IMAGE),
            ..container
        };
        assert_eq!(container_of(&image), None);
    }

    #[test]
    fn inspect_gives_name_labels_and_endpoints() {
        let c = ContainerInspectResponse {
            id: Some("c1".into()),
            name: Some("/app1".into()),
            config: Some(ContainerConfig {
                labels: Some(HashMap::from([("id".into(), "app1".into())])),
                ..ContainerConfig::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([
                    (
                        "a".into(),
                        EndpointSettings {
                            endpoint_id: Some("ep2".into()),
                            ..EndpointSettings::default()
                        },
                    ),
                    (
                        "b".into(),
                        EndpointSettings {
                            endpoint_id: Some(String::new()),
                            ..EndpointSettings::default()
                        },
                    ),
                ])),
                ..NetworkSettings::default()
            }),
            ..ContainerInspectResponse::default()
        };
        let info = from_inspect(&c);
        assert_eq!(info.name, "app1");
        assert_eq!(info.labels, vec![("id".to_string(), "app1".to_string())]);
        assert_eq!(info.endpoint_ids, vec!["ep2".to_string()]);
    }
}
