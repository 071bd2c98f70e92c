//! Restart without disruption: an established TCP stream keeps flowing while the agent is
//! stopped (SIGTERM and SIGKILL, ten times over) and started again; a denied flow stays denied
//! while it is down; the restarted agent keeps endpoints, identities, policy and services and
//! reconciles the pinned maps in place (conntrack entries kept).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration::cni::Node;
use integration::traffic::{tcp_connect, tcp_works, EchoServer};
use integration::{require_root, Agent, AgentOptions, Netns};
use nix::sys::signal::Signal;

/// What the agent reports that must not change across restarts.
fn snapshot(agent: &Agent) -> (String, String, String) {
    let endpoints = agent.cli(&["endpoint", "list"]).ok();
    let identities = agent.cli(&["identity", "list"]).ok();
    let (status, policy) = agent.http("GET", "/policy", None);
    assert_eq!(status, 200, "{policy}");
    // The status column may say "restoring" for a moment; keep ids, identities, addresses.
    let endpoints = endpoints
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter(|w| !matches!(*w, "ready" | "restoring" | "regenerating"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n");
    (endpoints, identities, policy)
}

#[test]
fn stream_keeps_flowing_across_ten_agent_restarts() {
    if !require_root("stream_keeps_flowing_across_ten_agent_restarts") {
        return;
    }
    let mut node = Node::start("rst");
    let app1 = Netns::new("rsta");
    let app2 = Netns::new("rstb");
    let app3 = Netns::new("rstc");
    let e1 = node.add_labeled(&app1, &[("id", "app1")]);
    node.add_labeled(&app2, &[("id", "app2")]);
    node.add_labeled(&app3, &[("id", "app3")]);
    let server_ip: IpAddr = e1.addressing.ipv4.expect("ipv4");
    let _server = EchoServer::start(&app1.name, SocketAddr::new(server_ip, 80));
    let policy = node.dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"[{"endpointSelector": {"matchLabels":{"id":"app1"}},
             "ingress": [{"fromEndpoints": [{"matchLabels":{"id":"app2"}}],
                          "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]}]}]"#,
    )
    .expect("policy");
    node.agent
        .cli(&["policy", "import", policy.to_str().expect("path")])
        .ok();
    let to_app1 = SocketAddr::new(server_ip, 80);
    assert!(!tcp_works(&app3.name, to_app1), "app3 denied");

    // The stream: 1 KiB echoed back and forth, the longest gap recorded.
    let mut conn =
        tcp_connect(&app2.name, to_app1, Duration::from_secs(2)).expect("app2 -> app1 stream");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let longest_gap = Arc::new(Mutex::new(Duration::ZERO));
    let stream = {
        let (stop, rounds, longest_gap) = (
            Arc::clone(&stop),
            Arc::clone(&rounds),
            Arc::clone(&longest_gap),
        );
        std::thread::spawn(move || -> Result<(), String> {
            let block = [0x5au8; 1024];
            let mut back = [0u8; 1024];
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(&block).map_err(|e| format!("write: {e}"))?;
                conn.read_exact(&mut back)
                    .map_err(|e| format!("read: {e}"))?;
                if back != block {
                    return Err("corrupted echo".into());
                }
                let gap = last.elapsed();
                last = Instant::now();
                let mut longest = longest_gap.lock().unwrap_or_else(|p| p.into_inner());
                *longest = (*longest).max(gap);
                rounds.fetch_add(1, Ordering::Relaxed);
                // About 1,000 round trips a second: enough to see any stall, and it leaves
                // the CPUs to the tests running beside it.
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })
    };

    let before = snapshot(&node.agent);
    let ct_key = |ct: &str| {
        ct.lines()
            .filter(|l| l.contains(&format!("-> {server_ip}:80")) && l.starts_with("TCP OUT"))
            .count()
    };
    assert!(
        ct_key(&node.agent.cli(&["bpf", "ct", "list", "global"]).ok()) >= 1,
        "the stream has its conntrack entry"
    );
    for i in 0..10 {
        let signal = if i % 2 == 0 {
            Signal::SIGTERM
        } else {
            Signal::SIGKILL
        };
        node.agent.stop_with(signal);
        // Down: the stream flows, the policy still decides.
        let at = rounds.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            rounds.load(Ordering::Relaxed) > at,
            "restart {i} ({signal}): the stream flows while the agent is down"
        );
        assert!(
            !tcp_works(&app3.name, to_app1),
            "restart {i}: app3 stays denied while the agent is down"
        );
        assert!(
            tcp_works(&app2.name, to_app1),
            "restart {i}: app2 is still allowed while the agent is down"
        );
        node.agent = Agent::start(
            node.dir.path(),
            &AgentOptions {
                netns: Some(node.netns.name.clone()),
                ..Default::default()
            },
        );
        let at = rounds.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            rounds.load(Ordering::Relaxed) > at,
            "restart {i}: the stream flows after the start"
        );
        assert!(!tcp_works(&app3.name, to_app1), "restart {i}: app3 denied");
        assert_eq!(snapshot(&node.agent), before, "restart {i}: state kept");
        assert!(
            ct_key(&node.agent.cli(&["bpf", "ct", "list", "global"]).ok()) >= 1,
            "restart {i}: conntrack kept"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let result = stream.join().expect("stream thread");
    let gap = *longest_gap.lock().unwrap_or_else(|p| p.into_inner());
    eprintln!(
        "stream: {} round trips of 1 KiB across 10 restarts, longest gap {gap:?}",
        rounds.load(Ordering::Relaxed)
    );
    assert_eq!(result, Ok(()), "the stream never broke");
    assert!(
        gap < Duration::from_secs(1),
        "the stream never stalled (longest gap {gap:?})"
    );
}
