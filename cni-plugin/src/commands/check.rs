//! `CHECK`: compares the agent's endpoint with the `prevResult` the runtime kept from `ADD`
//! and asks the agent whether the endpoint's links, addresses and routes are still in place.
//! Every problem found is reported in one error (code 101).

use std::net::IpAddr;

use cilium_api::models::Endpoint;
use cilium_api::EndpointId;

use super::require_netns;
use crate::agent::{agent_error, Agent, NOT_FOUND};
use crate::config::NetworkConfig;
use crate::env::Target;
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;

/// Differences between the endpoint and `prev`, one line each.
pub(crate) fn compare(endpoint: &Endpoint, target: &Target, prev: &CniResult) -> Vec<String> {
    let mut problems = Vec::new();
    if endpoint.container_interface_name != target.ifname {
        problems.push(format!(
            "the endpoint's container interface is '{}', expected '{}'",
            endpoint.container_interface_name, target.ifname
        ));
    }
    if endpoint.netns_path != target.netns {
        problems.push(format!(
            "the endpoint's network namespace is '{}', expected '{}'",
            endpoint.netns_path, target.netns
        ));
    }

    // Our interface in prevResult: the one named CNI_IFNAME inside CNI_NETNS.
    let ours: Vec<usize> = prev
        .interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| i.name == target.ifname && i.sandbox.as_deref() == Some(&target.netns))
        .map(|(index, _)| index)
        .collect();
    if ours.is_empty() {
        problems.push(format!(
            "prevResult has no interface {} in {}",
            target.ifname, target.netns
        ));
    }
    for &index in &ours {
        let mac = prev.interfaces[index].mac.as_deref();
        if let Some(mac) =
            mac.filter(|m| !endpoint.mac.is_empty() && !m.eq_ignore_ascii_case(&endpoint.mac))
        {
            problems.push(format!(
                "prevResult gives {} the MAC {mac}, the endpoint has {}",
                target.ifname, endpoint.mac
            ));
        }
    }

    let assigned: Vec<IpAddr> = [endpoint.addressing.ipv4, endpoint.addressing.ipv6]
        .into_iter()
        .flatten()
        .collect();
    for address in &assigned {
        if !prev.ips.iter().any(|ip| ip.address.addr == *address) {
            problems.push(format!(
                "address {address} of the endpoint is not in prevResult"
            ));
        }
    }
    for ip in &prev.ips {
        let on_ours = ip.interface.is_some_and(|i| ours.contains(&i));
        if on_ours && !assigned.contains(&ip.address.addr) {
            problems.push(format!(
                "prevResult address {} on {} is not assigned to the endpoint",
                ip.address, target.ifname
            ));
        }
    }
    problems
}

/// Verifies the endpoint of `target` against the config's `prevResult`.
pub(super) async fn check<A: Agent>(
    target: &Target,
    config: &NetworkConfig,
    agent: &A,
) -> Result<(), CniError> {
    let version = config.cni_version;
    if !version.supports_check() {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("CHECK is not supported in version {version}"),
        ));
    }
    let prev = config.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "invalid network config: CHECK needs 'prevResult'",
        )
    })?;
    let prev = CniResult::parse(prev)?;
    require_netns(&target.netns)?;

    let not_found = || {
        CniError::new(
            ErrorCode::CheckFailed,
            format!("endpoint for container {} not found", target.container_id),
        )
    };
    let id = EndpointId::ContainerId(target.container_id.clone());
    let endpoint = match agent.endpoint_get(&id).await {
        Ok(endpoint) => endpoint,
        Err(e) if e.status() == Some(NOT_FOUND) => return Err(not_found()),
        Err(e) => return Err(agent_error(e, &format!("getting endpoint {id}"))),
    };
    let mut problems = compare(&endpoint, target, &prev);

    let local = EndpointId::CiliumLocal(endpoint.id);
    let health = match agent.endpoint_health(&local).await {
        Ok(health) => health,
        Err(e) if e.status() == Some(NOT_FOUND) => return Err(not_found()),
        Err(e) => return Err(agent_error(e, &format!("checking endpoint {local}"))),
    };
    if !health.connected {
        if health.problems.is_empty() {
            problems.push("the agent reports the endpoint as not connected".into());
        }
        problems.extend(health.problems);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(ErrorCode::CheckFailed, problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use cilium_api::models::EndpointHealth;
    use serde_json::{json, Value};

    use super::*;
    use crate::testing::{block_on, config, endpoint, target, FakeAgent};

    /// The agent's endpoint for `c1` in `netns` and the config holding the matching result.
    fn setup(netns: &str, version: &str) -> (FakeAgent, Value) {
        let mut ep = endpoint(Some("10.11.0.5"), Some("f00d::a0b:0:0:5"));
        ep.netns_path = netns.to_string();
        let prev = CniResult::from_endpoint(&ep, "eth0", netns).to_json(version.parse().unwrap());
        let config = json!({"cniVersion": version, "prevResult": prev});
        (FakeAgent::with_endpoints(vec![ep]), config)
    }

    #[test]
    fn passes_right_after_add() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let t = target(netns.path(), "");
        for version in ["0.4.0", "1.0.0", "1.1.0"] {
            let (agent, conf) = setup(&t.netns, version);
            block_on(check(&t, &config(conf), &agent)).unwrap();
            assert_eq!(
                agent.calls(),
                ["get container-id:c1", "health cilium-local:7"]
            );
        }
    }

    #[test]
    fn refused_before_0_4_0() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let t = target(netns.path(), "");
        for version in ["0.1.0", "0.2.0", "0.3.0", "0.3.1"] {
            let (agent, conf) = setup(&t.netns, version);
            let err = block_on(check(&t, &config(conf), &agent)).unwrap_err();
            assert_eq!(err.code, ErrorCode::IncompatibleVersion);
            assert_eq!(
                err.msg,
                format!("CHECK is not supported in version {version}")
            );
        }
    }

    #[test]
    fn needs_prev_result_and_netns() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let t = target(netns.path(), "");
        let (agent, _) = setup(&t.netns, "1.0.0");
        let err = block_on(check(&t, &config(json!({"cniVersion": "1.0.0"})), &agent)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidConfig);
        assert!(err.msg.contains("prevResult"));

        let dir = tempfile::tempdir().unwrap();
        let gone = target(&dir.path().join("gone"), "");
        let (agent, conf) = setup(&gone.netns, "1.0.0");
        let err = block_on(check(&gone, &config(conf), &agent)).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownContainer);
    }

    #[test]
    fn missing_endpoint() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let t = target(netns.path(), "");
        let (agent, conf) = setup(&t.netns, "1.0.0");
        agent.endpoints.borrow_mut().clear();
        let err = block_on(check(&t, &config(conf), &agent)).unwrap_err();
        assert_eq!(err.code, ErrorCode::CheckFailed);
        assert_eq!(err.msg, "endpoint for container c1 not found");
    }

    #[test]
    fn unhealthy_endpoint() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let t = target(netns.path(), "");
        let (agent, conf) = setup(&t.netns, "1.0.0");
        *agent.health.borrow_mut() = EndpointHealth {
            connected: false,
            problems: vec!["lxc1234 is missing".into(), "no route to 10.11.0.5".into()],
        };
        let err = block_on(check(&t, &config(conf.clone()), &agent)).unwrap_err();
        assert_eq!(err.code, ErrorCode::CheckFailed);
        assert_eq!(err.msg, "lxc1234 is missing; no route to 10.11.0.5");

        agent.health.borrow_mut().problems.clear();
        let err = block_on(check(&t, &config(conf), &agent)).unwrap_err();
        assert!(err.msg.contains("not connected"), "{}", err.msg);
    }

    #[test]
    fn differences_from_prev_result() {
        let netns = "/var/run/netns/c1";
        let t = crate::env::Target {
            netns: netns.into(),
            ..target(std::path::Path::new(netns), "")
        };
        let mut ep = endpoint(Some("10.11.0.5"), Some("f00d::5"));
        ep.netns_path = netns.into();
        let good = CniResult::from_endpoint(&ep, "eth0", netns);
        assert_eq!(compare(&ep, &t, &good), Vec::<String>::new());

        let mut other = ep.clone();
        other.container_interface_name = "net1".into();
        other.netns_path = "/var/run/netns/other".into();
        other.addressing.ipv4 = Some("10.11.0.6".parse().unwrap());
        other.mac = "cc:cc:cc:cc:cc:cc".into();
        let problems = compare(&other, &t, &good);
        assert_eq!(
            problems,
            [
                "the endpoint's container interface is 'net1', expected 'eth0'",
                "the endpoint's network namespace is '/var/run/netns/other', expected '/var/run/netns/c1'",
                "prevResult gives eth0 the MAC bb:bb:bb:bb:bb:bb, the endpoint has cc:cc:cc:cc:cc:cc",
                "address 10.11.0.6 of the endpoint is not in prevResult",
                "prevResult address 10.11.0.5/32 on eth0 is not assigned to the endpoint",
            ]
        );

        let empty = CniResult::default();
        let problems = compare(&ep, &t, &empty);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(
            problems[0],
            "prevResult has no interface eth0 in /var/run/netns/c1"
        );
    }
}
