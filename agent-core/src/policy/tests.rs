//! The policy examples of the seed (policy chapter and the Docker, Kubernetes and Mesos
//! guides) with the verdicts the seed gives, through the trace and through the resolved
//! tables; the parser's error messages; and a property test holding the tables to the
//! rule-by-rule semantics.

use std::collections::BTreeMap;
use std::sync::Arc;

use cilium_api::models::Decision;
use serde_json::json;

use super::resolve::{evaluate, Enforcement, Verdict};
use super::rule::{parse_rules, Direction, PortProtocol, Protocol};
use super::trace::{parse_dport, trace, TraceRequest};
use super::{PolicyEngine, PolicyError};
use crate::labels::{Label, LabelSet};

fn labels(list: &[&str]) -> LabelSet {
    list.iter()
        .map(|l| l.parse::<Label>().expect("label"))
        .collect()
}

/// A node's view: identities by name, local endpoints holding some of them.
struct World {
    engine: PolicyEngine,
    ids: BTreeMap<String, u32>,
    next: u32,
}

impl World {
    fn new() -> World {
        let mut w = World {
            engine: PolicyEngine::new(Enforcement::Default),
            ids: BTreeMap::new(),
            next: 256,
        };
        w.engine.add_identity(1, labels(&["reserved:host"]));
        w.engine.add_identity(2, labels(&["reserved:world"]));
        w.ids.insert("host".into(), 1);
        w.ids.insert("world".into(), 2);
        w
    }

    /// An endpoint identity (a subject of resolution).
    fn endpoint(&mut self, name: &str, list: &[&str]) -> u32 {
        let id = self.next;
        self.next += 1;
        self.engine.add_identity(id, labels(list));
        self.engine.acquire(id);
        self.ids.insert(name.into(), id);
        id
    }

    fn cidr(&mut self, prefix: &str) -> u32 {
        let id = (1 << 24) + self.next;
        self.next += 1;
        self.engine
            .add_identity(id, labels(&[&format!("cidr:{prefix}"), "reserved:world"]));
        self.ids.insert(prefix.into(), id);
        id
    }

    fn import(&mut self, policy: &str) {
        let rules = parse_rules(policy).expect("valid policy");
        self.engine.import(rules);
    }

    fn labels_of(&self, name: &str) -> LabelSet {
        self.engine
            .identity_labels(self.ids[name])
            .cloned()
            .expect("known identity")
    }

    /// Verdict of src → dst on a port: (table verdict, trace decision). The table verdict
    /// combines the source's egress and the destination's ingress, each where it is local.
    fn flow(&self, src: &str, dst: &str, port: u16, proto: u8) -> Option<Verdict> {
        let (s, d) = (self.ids[src], self.ids[dst]);
        let egress = match self.engine.policy(s) {
            Some(p) => p.egress.lookup(d, port, proto),
            None => Some(Verdict::Allow),
        };
        let ingress = match self.engine.policy(d) {
            Some(p) => p.ingress.lookup(s, port, proto),
            None => Some(Verdict::Allow),
        };
        match (egress, ingress) {
            (Some(a), Some(b)) => Some(match (a, b) {
                (Verdict::Allow, other) | (other, Verdict::Allow) => other,
                (a, _) => a,
            }),
            _ => None,
        }
    }

    fn trace(&self, src: &str, dst: &str, ports: &[&str]) -> (Decision, String) {
        let ports: Vec<PortProtocol> = ports
            .iter()
            .map(|p| parse_dport(p).expect("dport"))
            .collect();
        trace(
            &self.engine.rules(),
            self.engine.mode(),
            TraceRequest {
                from: &self.labels_of(src),
                to: &self.labels_of(dst),
                ports: &ports,
                verbose: false,
            },
        )
    }

    /// Asserts the same verdict through the tables and the trace.
    fn expect(&self, src: &str, dst: &str, port: u16, allowed: bool) {
        let table = self.flow(src, dst, port, Protocol::TCP);
        let dport = port.to_string();
        let ports: Vec<&str> = if port == 0 { vec![] } else { vec![&dport] };
        let (decision, log) = self.trace(src, dst, &ports);
        let table_proto = if port == 0 { 0 } else { Protocol::TCP };
        let table = if port == 0 {
            self.flow(src, dst, 0, table_proto)
        } else {
            table
        };
        assert_eq!(
            table.is_some(),
            allowed,
            "table verdict {src} -> {dst}:{port}: {table:?}\n{log}"
        );
        assert_eq!(
            decision == Decision::Allowed,
            allowed,
            "trace {src} -> {dst}:{port}\n{log}"
        );
    }

    fn enforcing(&self, name: &str) -> (bool, bool) {
        let p = self.engine.policy(self.ids[name]).expect("local identity");
        (p.ingress.enforcing, p.egress.enforcing)
    }
}

const L3_L4_DOCKER: &str = r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [
      {"matchLabels":{"id":"app2"}}
    ],
    "toPorts": [{
      "ports": [{"port": "80", "protocol": "tcp"}]
    }]
  }]
}]"#;

#[test]
fn docker_guide_l3_l4() {
    let mut w = World::new();
    w.endpoint("app1", &["container:id=app1"]);
    w.endpoint("app2", &["container:id=app2"]);
    w.endpoint("app3", &["container:id=app3"]);
    // No policy: everything is allowed, enforcement is off.
    w.expect("app3", "app1", 80, true);
    assert_eq!(w.enforcing("app1"), (false, false));
    w.import(L3_L4_DOCKER);
    assert_eq!(w.engine.revision(), 1);
    assert_eq!(w.enforcing("app1"), (true, false));
    assert_eq!(w.enforcing("app2"), (false, false));
    w.expect("app2", "app1", 80, true);
    w.expect("app3", "app1", 80, false);
    w.expect("app2", "app1", 8080, false);
    w.expect("app2", "app1", 0, false); // ping
    w.expect("host", "app1", 80, false);
    w.expect("app1", "app2", 80, true);
    assert!(w.flow("app2", "app1", 80, Protocol::UDP).is_none());
    let (_, log) = w.trace("app2", "app1", &["80"]);
    assert!(
        log.contains("* Rule 0 {\"matchLabels\":{\"any:id\":\"app1\"}}: match"),
        "{log}"
    );
    assert!(
        log.contains("Allows from labels {\"matchLabels\":{\"any:id\":\"app2\"}}: match"),
        "{log}"
    );
    assert!(log.contains("L3 verdict: allowed"), "{log}");
    assert!(log.contains("L4 egress verdict: allowed"), "{log}");
    assert!(log.contains("L4 ingress verdict: allowed"), "{log}");
    assert!(log.ends_with("Verdict: allowed\n"), "{log}");
    let (_, log) = w.trace("app3", "app1", &["80"]);
    assert!(log.contains("L3 verdict: denied"), "{log}");
    assert!(log.ends_with("Verdict: denied\n"), "{log}");
}

#[test]
fn docker_guide_l7() {
    let mut w = World::new();
    w.endpoint("app1", &["container:id=app1"]);
    w.endpoint("app2", &["container:id=app2"]);
    w.endpoint("app3", &["container:id=app3"]);
    w.import(
        r#"[{
      "endpointSelector": {"matchLabels":{"id":"app1"}},
      "ingress": [{
        "fromEndpoints": [{"matchLabels":{"id":"app2"}}],
        "toPorts": [{
          "ports": [{"port": "80", "protocol": "tcp"}],
          "rules": {"HTTP": [{"method": "GET", "path": "/public"}]}
        }]
      }]
    }]"#,
    );
    match w.flow("app2", "app1", 80, Protocol::TCP) {
        Some(Verdict::Redirect(rules)) => {
            let r: Vec<_> = rules.iter().collect();
            assert_eq!(r.len(), 1);
            assert_eq!(
                (r[0].method.as_str(), r[0].path.as_str()),
                ("GET", "/public")
            );
        }
        other => panic!("expected a redirect, got {other:?}"),
    }
    w.expect("app3", "app1", 80, false);
    let (_, log) = w.trace("app2", "app1", &["80/tcp"]);
    assert!(
        log.contains("HTTP requests checked by the proxy: method GET path /public"),
        "{log}"
    );
    // The compiled rule matches whole values only.
    let rules = parse_rules(
        r#"{"endpointSelector":{"matchLabels":{"id":"a"}},"ingress":[{"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}],"rules":{"http":[{"method":"GET","path":"/public","headers":["X-My-Header: true"]}]}}]}]}"#,
    )
    .expect("valid");
    let http = rules[0].ingress[0].ports[0]
        .http
        .as_ref()
        .expect("http rules");
    assert!(http[0].matches("GET", "/public", "", &[("x-my-header", "true")]));
    assert!(!http[0].matches("GET", "/public/x", "", &[("x-my-header", "true")]));
    assert!(!http[0].matches("GETX", "/public", "", &[("x-my-header", "true")]));
    assert!(!http[0].matches("GET", "/public", "", &[("x-my-header", "false")]));
    assert!(!http[0].matches("GET", "/public", "", &[]));
}

#[test]
fn kubernetes_guide_with_namespace_labels() {
    let mut w = World::new();
    let ns = "k8s:io.kubernetes.pod.namespace=default";
    w.endpoint("app1", &["k8s:id=app1", ns]);
    w.endpoint("app2", &["k8s:id=app2", ns]);
    w.endpoint("app3", &["k8s:id=app3", ns]);
    w.endpoint(
        "other-ns",
        &["k8s:id=app2", "k8s:io.kubernetes.pod.namespace=prod"],
    );
    w.import(
        r#"[{
      "endpointSelector": {"matchLabels": {"k8s:id": "app1", "k8s:io.kubernetes.pod.namespace": "default"}},
      "ingress": [{
        "fromEndpoints": [{"matchLabels": {"k8s:id": "app2", "k8s:io.kubernetes.pod.namespace": "default"}}],
        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]
      }],
      "labels": [{"key": "io.cilium.k8s-policy-name", "value": "access-backend", "source": "unspec"}]
    }]"#,
    );
    assert_eq!(w.enforcing("app1"), (true, false));
    assert_eq!(w.enforcing("app3"), (false, false));
    w.expect("app2", "app1", 80, true);
    w.expect("app3", "app1", 80, false);
    w.expect("other-ns", "app1", 80, false);
    let printed = w.engine.rules()[0].to_json();
    assert_eq!(
        printed["labels"],
        json!([{"key": "io.cilium.k8s-policy-name", "value": "access-backend", "source": "unspec"}])
    );
    assert_eq!(
        printed["ingress"][0]["toPorts"][0]["ports"][0]["protocol"],
        "TCP"
    );
}

#[test]
fn mesos_guide() {
    let mut w = World::new();
    w.endpoint("web", &["mesos:id=web-server"]);
    w.endpoint("good", &["mesos:id=goodclient"]);
    w.endpoint("bad", &["mesos:id=badclient"]);
    w.import(
        r#"[{
      "endpointSelector": {"matchLabels":{"id":"web-server"}},
      "ingress": [{
        "fromEndpoints": [{"matchLabels":{"id":"goodclient"}}],
        "toPorts": [{"ports": [{"port": "8181", "protocol": "tcp"}]}]
      }]
    }]"#,
    );
    w.expect("good", "web", 8181, true);
    w.expect("bad", "web", 8181, false);
    // `cilium policy delete --all`: revision 2, everything allowed again.
    let (deleted, change) = w.engine.delete(&[]).expect("delete all");
    assert_eq!((deleted.len(), change.revision), (1, 2));
    w.expect("bad", "web", 8181, true);
    assert_eq!(w.enforcing("web"), (false, false));
    // Deleting all from an empty repository changes nothing.
    assert_eq!(w.engine.delete(&[]).expect("empty").1.revision, 2);
}

#[test]
fn requires_example() {
    let mut w = World::new();
    w.endpoint("backend-prod", &["k8s:role=backend", "k8s:env=prod"]);
    w.endpoint("backend-qa", &["k8s:role=backend", "k8s:env=qa"]);
    w.endpoint("frontend-prod", &["k8s:role=frontend", "k8s:env=prod"]);
    w.endpoint("frontend-qa", &["k8s:role=frontend", "k8s:env=qa"]);
    w.import(
        r#"[{
      "endpointSelector": { "matchLabels": { "env": "prod" } },
      "ingress": [ { "fromRequires": [ { "matchLabels": { "env": "prod" } } ] } ]
    }, {
      "endpointSelector": { "matchLabels": { "role": "backend" } },
      "ingress": [{ "fromEndpoints": [ {"matchLabels":{"role":"frontend"}} ] }]
    }]"#,
    );
    w.expect("frontend-prod", "backend-prod", 80, true);
    w.expect("frontend-qa", "backend-prod", 80, false);
    w.expect("frontend-qa", "backend-qa", 80, true);
    w.expect("frontend-prod", "backend-qa", 0, true);
    // The requirement alone allows nothing: prod endpoints are enforced and closed.
    w.expect("backend-prod", "frontend-prod", 80, false);
    let (_, log) = w.trace("frontend-qa", "backend-prod", &["80"]);
    assert!(
        log.contains("Required labels {\"matchLabels\":{\"any:env\":\"prod\"}} not found"),
        "{log}"
    );
    let (_, log) = w.trace("frontend-prod", "backend-prod", &["80"]);
    assert!(log.contains("+     Found all required labels"), "{log}");
}

#[test]
fn cidr_and_l4_examples() {
    let mut w = World::new();
    w.endpoint("svc", &["container:app=myService"]);
    w.endpoint("other", &["container:app=other"]);
    w.cidr("20.1.1.1/32");
    w.cidr("10.0.0.0/8");
    w.cidr("10.96.0.0/12");
    w.cidr("10.1.0.0/16");
    w.import(
        r#"[{
      "endpointSelector": {"matchLabels":{"app":"myService"}},
      "egress": [{"toCIDR": ["20.1.1.1/32"]},
                 {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]}]
    }]"#,
    );
    w.expect("svc", "20.1.1.1/32", 443, true);
    w.expect("svc", "10.0.0.0/8", 443, true);
    w.expect("svc", "10.1.0.0/16", 0, true);
    w.expect("svc", "10.96.0.0/12", 443, false);
    w.expect("svc", "world", 443, false);
    w.expect("svc", "other", 443, false);
    w.expect("svc", "host", 443, false);
    assert_eq!(
        w.engine
            .prefixes()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["10.0.0.0/8", "10.96.0.0/12", "20.1.1.1/32"]
    );

    // Seed §5.1.4: only TCP port 80 out.
    let mut w = World::new();
    w.endpoint("svc", &["container:app=myService"]);
    w.endpoint("other", &["container:app=other"]);
    w.import(
        r#"{"endpointSelector": {"matchLabels":{"app":"myService"}},
            "egress": [{"toPorts": [{"port": "80", "protocol": "tcp"}]}]}"#
            .replace(
                r#"[{"port": "80", "protocol": "tcp"}]"#,
                r#"[{"ports":[{"port": "80", "protocol": "tcp"}]}]"#,
            )
            .as_str(),
    );
    w.expect("svc", "other", 80, true);
    w.expect("svc", "world", 80, true);
    w.expect("svc", "other", 443, false);
    assert!(w.flow("svc", "other", 80, Protocol::UDP).is_none());
    assert_eq!(w.enforcing("svc"), (false, true));
}

#[test]
fn seed_trace_example() {
    let mut w = World::new();
    w.endpoint("curl", &["container:id.curl"]);
    w.endpoint("httpd", &["container:id.httpd"]);
    w.import(
        r#"[
      {"endpointSelector": {"matchLabels":{"id.curl":""}},
       "egress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]}]},
      {"endpointSelector": {"matchLabels":{"id.other":""}},
       "ingress": [{"fromEndpoints": [{"matchLabels":{"id.curl":""}}]}]},
      {"endpointSelector": {"matchLabels":{"id.httpd":""}},
       "ingress": [{"fromEndpoints": [{"matchLabels":{"id.curl":""}}],
                    "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]}]}
    ]"#,
    );
    let (decision, log) = w.trace("curl", "httpd", &["80"]);
    assert_eq!(decision, Decision::Allowed, "{log}");
    let expected_start = [
        "Tracing From: [container:id.curl] => To: [container:id.httpd] Ports: [80/any]",
        "",
        "* Rule 2 {\"matchLabels\":{\"any:id.httpd\":\"\"}}: match",
        "    Allows from labels {\"matchLabels\":{\"any:id.curl\":\"\"}}: match",
        "    Allows Ingress port [{80 tcp}]",
        "1 rules matched",
        "Result: ALLOWED",
        "L3 verdict: allowed",
        "",
        "Resolving egress port policy for [container:id.curl]",
        "* Rule 0 {\"matchLabels\":{\"any:id.curl\":\"\"}}: match",
        "    Allows to any peer on these ports",
        "    Allows Egress port [{80 tcp}]",
        "1 rules matched",
        "  80/any: allowed",
        "L4 egress verdict: allowed",
        "",
        "Resolving ingress port policy for [container:id.httpd]",
        "* Rule 2 {\"matchLabels\":{\"any:id.httpd\":\"\"}}: match",
    ]
    .join("\n");
    assert!(log.starts_with(&expected_start), "{log}");
    assert!(log.contains("L4 egress verdict: allowed\n"), "{log}");
    assert!(log.contains("L4 ingress verdict: allowed\n"), "{log}");
    w.expect("curl", "httpd", 80, true);
    w.expect("curl", "httpd", 443, false);
    assert_eq!(parse_dport("80").expect("ok").protocol, Protocol::Any);
    assert!(parse_dport("0").is_err());
    assert!(parse_dport("80/icmp")
        .unwrap_err()
        .contains("unknown protocol"));
}

#[test]
fn empty_selector_and_reserved_identities() {
    let mut w = World::new();
    w.endpoint("db", &["container:app=db"]);
    w.endpoint("web", &["container:app=web"]);
    w.import(
        r#"[{"endpointSelector": {"matchLabels":{"app":"db"}},
            "ingress": [{"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "5432", "protocol": "tcp"}]}]},
                        {"fromEndpoints": [{"matchLabels": {"reserved:host": ""}}]}]}]"#,
    );
    w.expect("web", "db", 5432, true);
    w.expect("world", "db", 5432, true);
    w.expect("web", "db", 22, false);
    w.expect("host", "db", 22, true);
    // A new identity is covered by the empty selector without recomputation.
    let change = w.engine.add_identity(999, labels(&["container:app=new"]));
    assert!(change.recomputed.is_empty(), "{change:?}");
    w.ids.insert("new".into(), 999);
    w.expect("new", "db", 5432, true);
}

#[test]
fn enforcement_modes() {
    let mut w = World::new();
    w.endpoint("a", &["container:app=a"]);
    w.endpoint("b", &["container:app=b"]);
    w.engine.set_mode(Enforcement::Always);
    assert_eq!(w.enforcing("a"), (true, true));
    w.expect("a", "b", 80, false);
    w.import(r#"[{"endpointSelector":{"matchLabels":{"app":"b"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"a"}}]}]}]"#);
    // b admits a, but a may not send anything under `always`.
    w.expect("a", "b", 80, false);
    w.engine.set_mode(Enforcement::Never);
    w.expect("a", "b", 80, true);
    w.engine.set_mode(Enforcement::Default);
    w.expect("a", "b", 80, true);
    w.expect("b", "a", 80, true);
    assert_eq!(w.enforcing("b"), (true, false));
}

#[test]
fn incremental_updates_touch_only_affected_identities() {
    let mut w = World::new();
    for i in 0..20 {
        w.endpoint(&format!("app{i}"), &[&format!("container:id=app{i}")]);
    }
    w.import(r#"[{"endpointSelector":{"matchLabels":{"id":"app0"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"role":"client"}}]}]},
                 {"endpointSelector":{"matchLabels":{"id":"app1"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"role":"admin"}}]}]}]"#);
    let app0 = w.ids["app0"];
    let change = w
        .engine
        .add_identity(5000, labels(&["container:role=client"]));
    assert_eq!(
        change.recomputed.iter().copied().collect::<Vec<_>>(),
        vec![app0]
    );
    assert_eq!(
        change.changed.iter().copied().collect::<Vec<_>>(),
        vec![app0]
    );
    w.ids.insert("client".into(), 5000);
    w.expect("client", "app0", 80, true);
    w.expect("client", "app1", 80, false);
    // A rule change recomputes the identities the rule selects.
    let rules =
        parse_rules(r#"[{"endpointSelector":{"matchLabels":{"id":"app5"}},"egress":[{}]}]"#)
            .expect("valid");
    let change = w.engine.import(rules);
    assert_eq!(
        change.recomputed.iter().copied().collect::<Vec<_>>(),
        vec![w.ids["app5"]]
    );
    let change = w.engine.remove_identity(5000);
    assert_eq!(
        change.recomputed.iter().copied().collect::<Vec<_>>(),
        vec![app0]
    );
    w.ids.remove("client");
}

#[test]
fn malformed_policies_name_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("[{", "invalid policy JSON"),
        ("42", "a policy is a JSON array of rules, not a number"),
        ("[]", "the policy contains no rules"),
        (r#"[{"ingress": []}]"#, "rule 0: endpointSelector: missing"),
        (r#"[{"endpointSelector": {}}]"#, "rule 0: endpointSelector: must not be empty"),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}}, {"endpointSelector": {"matchLabels": {"a": "b"}}, "fromEndpoints": []}]"#,
            "rule 1: fromEndpoints: unknown field 'fromEndpoints' (expected endpointSelector, ingress, egress, labels, description)",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"fromEndpoint": []}]}]"#,
            "rule 0: ingress[0].fromEndpoint: unknown field 'fromEndpoint'",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "egress": [{"fromEndpoints": []}]}]"#,
            "rule 0: egress[0].fromEndpoints: unknown field 'fromEndpoints' (expected toEndpoints, toRequires, toCIDR, toCIDRSet, toPorts)",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"toPorts": [{"ports": [{"port": "99999"}]}]}]}]"#,
            "rule 0: ingress[0].toPorts[0].ports[0].port: '99999' is not a port number (1-65535)",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"toPorts": [{"ports": [{"port": "0"}]}]}]}]"#,
            "'0' is not a port number",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "icmp"}]}]}]}]"#,
            "rule 0: ingress[0].toPorts[0].ports[0].protocol: unknown protocol 'icmp' (expected TCP, UDP or ANY)",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"toPorts": [{"ports": []}]}]}]"#,
            "rule 0: ingress[0].toPorts[0].ports: at least one port is required",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "egress": [{"toCIDR": ["10.0.0.0/33"]}]}]"#,
            "rule 0: egress[0].toCIDR[0]: '10.0.0.0/33': prefix length 33 is larger than 32",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "egress": [{"toCIDR": ["10.0.0.1/8"]}]}]"#,
            "has host bits set",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}]}]}]"#,
            "rule 0: ingress[0].fromCIDRSet[0].except[0]: 11.0.0.0/16 is not inside 10.0.0.0/8",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}], "rules": {"http": [{"path": "/a("}]}}]}]}]"#,
            "rule 0: ingress[0].toPorts[0].rules.http[0].path: invalid regular expression '/a('",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"toPorts": [{"ports": [{"port": "53", "protocol": "udp"}], "rules": {"http": [{}]}}]}]}]"#,
            "rule 0: ingress[0].toPorts[0].rules: HTTP rules need protocol TCP, but port 53 has protocol UDP",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}], "rules": {"http": [{"headers": ["Bad Header: x"]}]}}]}]}]"#,
            "'Bad Header: x' is not a header",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}], "rules": {"kafka": []}}]}]}]"#,
            "rules.kafka: unknown field 'kafka' (expected http, HTTP)",
        ),
        (
            r#"[{"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}}]"#,
            "rule 0: endpointSelector.matchExpressions[0].operator: unknown operator 'Equals'",
        ),
        (
            r#"[{"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]"#,
            "rule 0: endpointSelector.matchExpressions[0].values: operator In needs at least one value",
        ),
        (
            r#"[{"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}]"#,
            "operator Exists takes no values",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"docker:a": "b"}}}]"#,
            "rule 0: endpointSelector.matchLabels.docker:a: unknown label source 'docker'",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": 1}}}]"#,
            "rule 0: endpointSelector.matchLabels.a: expected a string value, found a number",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": {}}]"#,
            "rule 0: ingress: expected a list, found an object",
        ),
        (
            r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}, "labels": ["any:x=y"]}]"#,
            "rule 0: labels[0]: a rule label needs a concrete source",
        ),
    ];
    for (input, want) in cases {
        let err = parse_rules(input).expect_err(input).to_string();
        assert!(
            err.contains(want),
            "input {input}\n got: {err}\nwant: {want}"
        );
    }
    let many: Vec<serde_json::Value> = (1..=41).map(|p| json!({"port": p.to_string()})).collect();
    let text = json!([{"endpointSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"toPorts": [{"ports": many}]}]}]).to_string();
    assert!(parse_rules(&text)
        .expect_err("41 ports")
        .to_string()
        .contains("41 ports given; at most 40"));
    // Nothing of a policy with one bad rule is imported: parsing is all or nothing.
    let mut engine = PolicyEngine::new(Enforcement::Default);
    let bad = r#"[{"endpointSelector": {"matchLabels": {"a": "b"}}}, {"endpointSelector": {}}]"#;
    assert!(matches!(
        parse_rules(bad),
        Err(PolicyError::Invalid { rule: 1, .. })
    ));
    assert_eq!((engine.rule_count(), engine.revision()), (0, 0));
    engine.import(
        parse_rules(r#"{"endpointSelector": {"matchLabels": {"a": "b"}}}"#)
            .expect("single rule object"),
    );
    assert_eq!((engine.rule_count(), engine.revision()), (1, 1));
}

#[test]
fn printed_rules_import_again_unchanged() {
    let text = r#"[{"endpointSelector":{"matchLabels":{"id":"app1"},"matchExpressions":[{"key":"k8s:env","operator":"NotIn","values":["qa","dev"]}]},
      "ingress":[{"fromEndpoints":[{"matchLabels":{"id":"app2"}}],"fromRequires":[{"matchLabels":{"env":"prod"}}],
                  "fromCIDR":["10.1.2.3"],"fromCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.96.0.0/12"]}],
                  "toPorts":[{"ports":[{"port":"80","protocol":"TCP"},{"port":"53"}]},
                             {"ports":[{"port":"8080","protocol":"tcp"}],"rules":{"http":[{"method":"GET","path":"/a.*","host":"x","headers":["X-A"]}]}}]}],
      "egress":[{"toEndpoints":[{}],"toCIDR":["::/0"]}],
      "labels":["k8s:name=x", {"key":"io.cilium.k8s-policy-name","value":"rule1"}],
      "description":"all the fields"}]"#;
    let rules: Vec<Arc<super::Rule>> = parse_rules(text)
        .expect("valid")
        .into_iter()
        .map(Arc::new)
        .collect();
    let printed = super::rules_json(&rules);
    assert!(
        printed.contains("\"fromCIDR\": [\n          \"10.1.2.3/32\""),
        "{printed}"
    );
    let again: Vec<Arc<super::Rule>> = parse_rules(&printed)
        .expect("printed form parses")
        .into_iter()
        .map(Arc::new)
        .collect();
    assert_eq!(super::rules_json(&again), printed);
}

// ---- property test: tables agree with the rule-by-rule semantics ----

/// xorshift64*: deterministic, seedable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &["id", "role", "env"];
const VALUES: &[&str] = &["a", "b", "c"];
const SOURCES: &[&str] = &["container", "k8s"];
const PREFIXES: &[&str] = &[
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "192.168.0.0/16",
    "0.0.0.0/0",
];

fn random_labels(rng: &mut Rng) -> LabelSet {
    let mut out = Vec::new();
    for key in KEYS {
        if rng.chance(70) {
            let text = format!("{}:{key}={}", rng.pick(SOURCES), rng.pick(VALUES));
            out.push(text.parse::<Label>().expect("label"));
        }
    }
    LabelSet::new(out)
}

fn random_selector(rng: &mut Rng, allow_empty: bool) -> serde_json::Value {
    let n = if allow_empty {
        rng.below(3)
    } else {
        1 + rng.below(2)
    };
    let mut labels = serde_json::Map::new();
    let mut exprs = Vec::new();
    for _ in 0..n {
        let key = *rng.pick(KEYS);
        let qualified = match rng.below(3) {
            0 => key.to_string(),
            1 => format!("k8s:{key}"),
            _ => format!("any:{key}"),
        };
        match rng.below(5) {
            0 | 1 => {
                labels.insert(qualified, json!(rng.pick(VALUES)));
            }
            2 => exprs.push(json!({"key": qualified, "operator": "In", "values": [rng.pick(VALUES), rng.pick(VALUES)]})),
            3 => exprs.push(json!({"key": qualified, "operator": "NotIn", "values": [rng.pick(VALUES)]})),
            _ => exprs.push(json!({"key": qualified, "operator": *rng.pick(&["Exists", "DoesNotExist"])})),
        }
    }
    let mut sel = serde_json::Map::new();
    if !labels.is_empty() {
        sel.insert("matchLabels".into(), serde_json::Value::Object(labels));
    }
    if !exprs.is_empty() {
        sel.insert("matchExpressions".into(), json!(exprs));
    }
    serde_json::Value::Object(sel)
}

fn random_peer(rng: &mut Rng, d: Direction) -> serde_json::Value {
    let (eps, req, cidr, cidr_set) = match d {
        Direction::Ingress => ("fromEndpoints", "fromRequires", "fromCIDR", "fromCIDRSet"),
        Direction::Egress => ("toEndpoints", "toRequires", "toCIDR", "toCIDRSet"),
    };
    let mut m = serde_json::Map::new();
    if rng.chance(60) {
        let list: Vec<_> = (0..1 + rng.below(2))
            .map(|_| random_selector(rng, true))
            .collect();
        m.insert(eps.into(), json!(list));
    }
    if rng.chance(15) {
        m.insert(req.into(), json!([random_selector(rng, false)]));
    }
    if rng.chance(20) {
        m.insert(cidr.into(), json!([rng.pick(PREFIXES)]));
    }
    if rng.chance(15) {
        m.insert(
            cidr_set.into(),
            json!([{"cidr": "10.0.0.0/8", "except": [rng.pick(&["10.1.0.0/16", "10.1.2.0/24"])]}]),
        );
    }
    if rng.chance(60) {
        let rules: Vec<_> = (0..1 + rng.below(2))
            .map(|_| {
                let proto = *rng.pick(&["tcp", "udp", "any", "TCP"]);
                let ports: Vec<_> = (0..1 + rng.below(2))
                    .map(|_| json!({"port": rng.pick(&["80", "443", "53"]), "protocol": proto}))
                    .collect();
                if proto.eq_ignore_ascii_case("tcp") && rng.chance(40) {
                    json!({"ports": ports, "rules": {"http": [{"method": rng.pick(&["GET", "PUT"]), "path": "/x"}]}})
                } else {
                    json!({"ports": ports})
                }
            })
            .collect();
        m.insert("toPorts".into(), json!(rules));
    }
    serde_json::Value::Object(m)
}

fn random_rule(rng: &mut Rng) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("endpointSelector".into(), random_selector(rng, false));
    for d in [Direction::Ingress, Direction::Egress] {
        if rng.chance(60) {
            let list: Vec<_> = (0..1 + rng.below(2)).map(|_| random_peer(rng, d)).collect();
            m.insert(d.as_str().into(), json!(list));
        }
    }
    m.insert(
        "labels".into(),
        json!([format!("unspec:batch={}", rng.below(3))]),
    );
    serde_json::Value::Object(m)
}

const FLOWS: &[(u16, u8)] = &[
    (0, 0),
    (0, 1),
    (80, 6),
    (80, 17),
    (443, 6),
    (53, 17),
    (53, 6),
    (8080, 6),
];

fn check_agreement(engine: &PolicyEngine, locals: &[u32], seed: u64) {
    let rules = engine.rules();
    for &subject in locals {
        let policy = engine.policy(subject).expect("local identity has a policy");
        let subject_labels = engine.identity_labels(subject).expect("labels");
        for (&peer, peer_labels) in engine.identities() {
            for d in [Direction::Ingress, Direction::Egress] {
                for &(port, proto) in FLOWS {
                    let direct = evaluate(
                        &rules,
                        engine.mode(),
                        subject_labels,
                        d,
                        peer_labels,
                        port,
                        proto,
                    );
                    let table = policy.direction(d).lookup(peer, port, proto);
                    assert_eq!(
                        table, direct,
                        "seed {seed}: subject {subject} {subject_labels} {d:?} peer {peer} {peer_labels} {port}/{proto}\nrules: {}\ntable: {:?}",
                        super::rules_json(&rules),
                        policy.direction(d)
                    );
                }
            }
        }
    }
}

#[test]
fn resolved_tables_agree_with_the_rules() {
    for seed in 1..=250u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mode = *rng.pick(&[
            Enforcement::Default,
            Enforcement::Default,
            Enforcement::Always,
            Enforcement::Never,
        ]);
        let mut engine = PolicyEngine::new(mode);
        engine.add_identity(1, labels(&["reserved:host"]));
        engine.add_identity(2, labels(&["reserved:world"]));
        for (i, p) in PREFIXES.iter().enumerate() {
            engine.add_identity(
                (1 << 24) + i as u32,
                labels(&[&format!("cidr:{p}"), "reserved:world"]),
            );
        }
        // Some identities and rules before the endpoints, more of both after: the
        // incremental paths must give what a full computation gives.
        let mut locals = Vec::new();
        for id in 256..262u32 {
            engine.add_identity(id, random_labels(&mut rng));
        }
        let first: Vec<_> = (0..1 + rng.below(3))
            .map(|_| random_rule(&mut rng))
            .collect();
        engine.import(parse_rules(&json!(first).to_string()).expect("generated rules are valid"));
        for id in 256..260u32 {
            engine.acquire(id);
            locals.push(id);
        }
        for id in 262..268u32 {
            engine.add_identity(id, random_labels(&mut rng));
        }
        let second: Vec<_> = (0..1 + rng.below(3))
            .map(|_| random_rule(&mut rng))
            .collect();
        engine.import(parse_rules(&json!(second).to_string()).expect("generated rules are valid"));
        engine.acquire(265);
        locals.push(265);
        check_agreement(&engine, &locals, seed);
        // Changes: a batch deleted, an identity relabelled, one removed.
        let _ = engine.delete(&[format!("unspec:batch={}", rng.below(3))
            .parse()
            .expect("label")]);
        engine.add_identity(263, random_labels(&mut rng));
        engine.remove_identity(264);
        check_agreement(&engine, &locals, seed);
    }
}

#[test]
fn init_identity_is_enforced_until_its_labels_are_known() {
    let mut w = World::new();
    w.endpoint("app1", &["container:id=app1"]);
    // An endpoint whose labels are not known yet: identity 5, `reserved:init`.
    w.engine
        .add_identity(crate::identity::INIT, labels(&["reserved:init"]));
    w.engine.acquire(crate::identity::INIT);
    w.ids.insert("init".into(), crate::identity::INIT);
    // No rules at all: everything else is allowed, the init endpoint is closed both ways.
    assert_eq!(w.enforcing("app1"), (false, false));
    assert_eq!(w.enforcing("init"), (true, true));
    w.expect("init", "app1", 80, false);
    w.expect("app1", "init", 80, false);
    w.import(L3_L4_DOCKER);
    w.expect("init", "app1", 80, false);
    // A rule may still select it explicitly.
    w.import(
        r#"[{"endpointSelector": {"matchLabels": {"reserved:init": ""}},
             "egress": [{"toEndpoints": [{"matchLabels": {"id": "app1"}}]}]}]"#,
    );
    assert!(
        w.engine
            .policy(crate::identity::INIT)
            .unwrap()
            .egress
            .enforcing
    );
    w.engine.set_mode(Enforcement::Never);
    assert_eq!(w.enforcing("init"), (false, false));
}

#[test]
fn cidr_selection_is_the_same_whichever_comes_first() {
    let policy = r#"[{"endpointSelector": {"matchLabels": {"id": "app1"}},
        "egress": [
            {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]},
            {"toCIDR": ["192.168.1.0/24", "f00d::/64"]}
        ]}]"#;
    let expected = [
        ("10.1.2.3/32", true),
        ("10.96.1.0/24", false),
        ("10.0.0.0/8", true),
        ("192.168.1.7/32", true),
        ("192.168.0.0/16", false),
        ("11.0.0.1/32", false),
        ("f00d::1/128", true),
        ("f00e::/16", false),
    ];
    for identities_first in [true, false] {
        let mut w = World::new();
        w.endpoint("app1", &["container:id=app1"]);
        if identities_first {
            for (p, _) in expected {
                w.cidr(p);
            }
            w.import(policy);
        } else {
            w.import(policy);
            for (p, _) in expected {
                w.cidr(p);
            }
        }
        for (p, allowed) in expected {
            w.expect("app1", p, 80, allowed);
        }
    }
}
