//! Policy JSON: the text of `PUT /policy` / `cilium policy import` through `parse_rules`
//! (agent-core/src/policy/rule.rs) and `cilium policy validate`; for a valid policy:
//!
//! - the printed form (`rules_json`, what the agent saves and restores after a restart, and
//!   what `GET /policy` shows) parses again and prints the same;
//! - the rules go through the policy engine the way the agent applies them: imported, CIDR
//!   identities added for the prefixes they name, endpoints acquiring their resolved policy,
//!   then a delete by rule labels; after each step every resolved table must give, for every
//!   peer and a few ports, the verdict the rule-by-rule semantics (`evaluate`) gives;
//! - `cilium policy trace` runs over the rules.
//!
//! Input: the policy text (not UTF-8: ignored, as the API refuses it before parsing).
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use agent_core::labels::{Label, LabelSet, LabelSource};
use agent_core::policy::selector::Operator;
use agent_core::policy::trace::{trace, TraceRequest};
use agent_core::policy::{
    evaluate, parse_rules, rules_json, Direction, Enforcement, PolicyEngine, PortProtocol,
    Protocol, Rule,
};
use libfuzzer_sys::fuzz_target;

/// Endpoint identities whose labels come from the rules' selectors, at most.
const MAX_DERIVED: usize = 6;
/// Ports looked up besides those the rules name.
const BASE_FLOWS: &[(u16, u8)] = &[(0, 0), (0, 1), (80, 6), (53, 17)];
/// Ports taken from the rules, at most.
const MAX_RULE_PORTS: usize = 4;

fn label(source: LabelSource, key: &str, value: &str) -> Label {
    Label::new(source, key, value)
}

fn set(labels: Vec<Label>) -> LabelSet {
    LabelSet::new(labels)
}

/// Labels that some selector of the rules asks for, so the endpoints below are selected.
fn derived_label_sets(rules: &[Rule]) -> Vec<LabelSet> {
    let mut out = Vec::new();
    let selectors = rules.iter().flat_map(|r| {
        std::iter::once(&r.subject).chain(
            r.ingress
                .iter()
                .chain(&r.egress)
                .flat_map(|p| p.endpoints.iter().chain(&p.requires)),
        )
    });
    for selector in selectors {
        if out.len() >= MAX_DERIVED {
            break;
        }
        let labels: Vec<Label> = selector
            .requirements()
            .iter()
            .filter_map(|req| {
                let source = match req.source {
                    LabelSource::Any => LabelSource::Container,
                    s => s,
                };
                match req.op {
                    Operator::In | Operator::Exists => {
                        let value = req.values.first().map(String::as_str).unwrap_or("");
                        Some(label(source, &req.key, value))
                    }
                    Operator::NotIn | Operator::DoesNotExist => None,
                }
            })
            .collect();
        out.push(set(labels));
    }
    out
}

/// The flows looked up: a few fixed ones and the first ports the rules name.
fn flows(rules: &[Rule]) -> Vec<(u16, u8)> {
    let mut out: BTreeSet<(u16, u8)> = BASE_FLOWS.iter().copied().collect();
    let ports = rules
        .iter()
        .flat_map(|r| r.ingress.iter().chain(&r.egress))
        .flat_map(|p| &p.ports)
        .flat_map(|pr| &pr.ports)
        .take(MAX_RULE_PORTS);
    for pp in ports {
        for &proto in pp.protocol.numbers() {
            out.insert((pp.port, proto));
        }
    }
    out.into_iter().collect()
}

/// Every resolved table of `locals` agrees with `evaluate` for every known peer.
fn check_agreement(engine: &PolicyEngine, locals: &[u32], flows: &[(u16, u8)], step: &str) {
    let rules = engine.rules();
    for &subject in locals {
        let Some(policy) = engine.policy(subject) else {
            panic!("{step}: local identity {subject} has no resolved policy");
        };
        let subject_labels = engine.identity_labels(subject).expect("local labels");
        for (&peer, peer_labels) in engine.identities() {
            for d in [Direction::Ingress, Direction::Egress] {
                for &(port, proto) in flows {
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
                        table,
                        direct,
                        "{step}: subject {subject} {subject_labels} {d:?} peer {peer} \
                         {peer_labels} {port}/{proto}\nrules: {}\ntable: {:?}",
                        rules_json(&rules),
                        policy.direction(d)
                    );
                }
            }
        }
    }
}

fn resolve(rules: Vec<Rule>, mode: Enforcement) {
    let flows = flows(&rules);
    let mut engine = PolicyEngine::new(mode);
    engine.add_identity(1, set(vec![label(LabelSource::Reserved, "host", "")]));
    engine.add_identity(2, set(vec![label(LabelSource::Reserved, "world", "")]));
    engine.add_identity(5, set(vec![label(LabelSource::Reserved, "init", "")]));
    engine.add_identity(
        256,
        set(vec![
            label(LabelSource::Container, "id", "app1"),
            label(LabelSource::K8s, "env", "prod"),
        ]),
    );
    engine.add_identity(257, set(vec![label(LabelSource::K8s, "id", "app2")]));
    let mut locals = vec![5, 256];
    for (id, labels) in (258..).zip(derived_label_sets(&rules)) {
        engine.add_identity(id, labels);
        if locals.len() < 4 {
            locals.push(id);
        }
    }
    // An endpoint before the rules, the others after: both paths must agree.
    engine.acquire(256);
    engine.import(rules);
    for &id in &locals {
        engine.acquire(id);
    }
    // As the agent does after a change: a CIDR identity per prefix the rules name.
    let cidrs: Vec<(u32, LabelSet)> = engine
        .prefixes()
        .into_iter()
        .take(16)
        .enumerate()
        .map(|(i, prefix)| {
            let labels = set(vec![
                label(LabelSource::Cidr, &prefix.to_string(), ""),
                label(LabelSource::Reserved, "world", ""),
            ]);
            ((1 << 24) + i as u32, labels)
        })
        .collect();
    engine.add_identities(cidrs);
    check_agreement(&engine, &locals, &flows, "after import");

    let rules = engine.rules();
    let ports: Vec<PortProtocol> = flows
        .iter()
        .filter(|(port, _)| *port != 0)
        .map(|&(port, proto)| PortProtocol {
            port,
            protocol: if proto == Protocol::UDP {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
        })
        .collect();
    for (&from, &to) in locals.iter().zip(locals.iter().rev()) {
        let (Some(from), Some(to)) = (engine.identity_labels(from), engine.identity_labels(to))
        else {
            continue;
        };
        for verbose in [false, true] {
            let _ = trace(
                &rules,
                engine.mode(),
                TraceRequest {
                    from,
                    to,
                    ports: &ports,
                    verbose,
                },
            );
        }
    }

    // `DELETE /policy` with the labels of the first labelled rule, then relabel and drop
    // identities: the incremental paths must still agree.
    if let Some(rule) = rules.iter().find(|r| !r.labels.is_empty()) {
        let labels: Vec<Label> = rule.labels.iter().cloned().collect();
        engine
            .delete(&labels)
            .expect("deleting the labels of an existing rule");
    }
    engine.add_identity(257, set(vec![label(LabelSource::K8s, "id", "app1")]));
    engine.remove_identity(2);
    check_agreement(&engine, &locals, &flows, "after delete");
    let _ = engine.set_mode(Enforcement::Always);
    check_agreement(&engine, &locals, &flows, "after mode change");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let validated = agent_core::cli::policy::validate(text, true);
    let rules = match parse_rules(text) {
        Ok(rules) => rules,
        Err(e) => {
            let _ = e.to_string();
            assert!(
                validated.is_err(),
                "validate accepted what the parser refused"
            );
            return;
        }
    };
    assert!(
        validated.is_ok(),
        "validate refused what the parser accepted"
    );

    // The printed form is what the agent saves and restores: it must import again, unchanged.
    let arcs: Vec<Arc<Rule>> = rules.iter().cloned().map(Arc::new).collect();
    let printed = rules_json(&arcs);
    let again = parse_rules(&printed)
        .unwrap_or_else(|e| panic!("the printed policy does not parse: {e}\n{printed}"));
    let again: Vec<Arc<Rule>> = again.into_iter().map(Arc::new).collect();
    assert_eq!(
        rules_json(&again),
        printed,
        "the printed policy changes when imported again"
    );

    let mode = match data.len() % 3 {
        0 => Enforcement::Default,
        1 => Enforcement::Always,
        _ => Enforcement::Never,
    };
    resolve(rules, mode);
});
