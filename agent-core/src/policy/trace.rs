//! `cilium policy trace` (seed §5.3): why a flow from one set of labels to another is allowed
//! or denied, rule by rule. The verdicts come from [`evaluate`], the same semantics the
//! resolved tables implement.

use std::fmt::Write;
use std::sync::Arc;

use cilium_api::models::Decision;

use super::resolve::{enforced, evaluate, peer_selected, selects, Enforcement, Verdict};
use super::rule::{Direction, PeerRule, PortProtocol, Protocol, Rule};
use crate::labels::LabelSet;

/// A traced flow.
#[derive(Debug, Clone, Copy)]
pub struct TraceRequest<'a> {
    pub from: &'a LabelSet,
    pub to: &'a LabelSet,
    /// Destination ports; empty = traffic without ports (ICMP).
    pub ports: &'a [PortProtocol],
    pub verbose: bool,
}

fn bracket(labels: &LabelSet) -> String {
    format!("[{}]", labels.to_strings().join(" "))
}

fn ports_text(pr: &PeerRule) -> String {
    let list: Vec<String> = pr
        .ports
        .iter()
        .flat_map(|r| &r.ports)
        .map(|pp| format!("{{{} {}}}", pp.port, pp.protocol.as_str()))
        .collect();
    format!("[{}]", list.join(" "))
}

fn http_text(v: &Verdict) -> String {
    match v {
        Verdict::Allow => String::new(),
        Verdict::Redirect(rules) => {
            let list: Vec<String> = rules
                .iter()
                .map(|h| {
                    let mut parts = Vec::new();
                    for (name, value) in
                        [("method", &h.method), ("path", &h.path), ("host", &h.host)]
                    {
                        if !value.is_empty() {
                            parts.push(format!("{name} {value}"));
                        }
                    }
                    for header in &h.headers {
                        parts.push(format!("header '{header}'"));
                    }
                    if parts.is_empty() {
                        "any request".to_string()
                    } else {
                        parts.join(" ")
                    }
                })
                .collect();
            format!(", HTTP requests checked by the proxy: {}", list.join("; "))
        }
    }
}

/// Prints the rules of one direction that select `subject`, and how `peer` fares with each.
fn rules_section(
    out: &mut String,
    rules: &[Arc<Rule>],
    subject: &LabelSet,
    peer: &LabelSet,
    d: Direction,
    verbose: bool,
) -> usize {
    let (word, verb) = match d {
        Direction::Ingress => ("from", "Ingress"),
        Direction::Egress => ("to", "Egress"),
    };
    let mut matched = 0;
    for (index, rule) in rules.iter().enumerate() {
        if !selects(rule, subject) {
            if verbose {
                let _ = writeln!(out, "  Rule {index} {}: no match", rule.subject);
            }
            continue;
        }
        if rule.peers(d).is_empty() {
            continue;
        }
        matched += 1;
        let _ = writeln!(out, "* Rule {index} {}: match", rule.subject);
        for pr in rule.peers(d) {
            let hit = |b: bool| if b { "match" } else { "no match" };
            for sel in &pr.endpoints {
                let _ = writeln!(
                    out,
                    "    Allows {word} labels {sel}: {}",
                    hit(sel.matches(peer))
                );
            }
            for set in pr.all_cidrs() {
                let except: Vec<String> = set.except.iter().map(ToString::to_string).collect();
                let except = if except.is_empty() {
                    String::new()
                } else {
                    format!(" except {}", except.join(", "))
                };
                let _ = writeln!(
                    out,
                    "    Allows {word} CIDR {}{except}: {}",
                    set.cidr,
                    hit(super::resolve::cidr_selects(&set, peer))
                );
            }
            if pr.has_no_peers() && !pr.ports.is_empty() {
                let _ = writeln!(out, "    Allows {word} any peer on these ports");
            }
            if pr.has_no_peers() && pr.ports.is_empty() && pr.requires.is_empty() {
                let _ = writeln!(out, "    Allows nothing (enables enforcement)");
            }
            for req in &pr.requires {
                if req.matches(peer) {
                    let _ = writeln!(out, "+     Found all required labels {req}");
                } else {
                    let _ = writeln!(out, "-     Required labels {req} not found");
                }
            }
            if !pr.ports.is_empty() && (!pr.has_no_peers() || peer_selected(pr, peer)) {
                let _ = writeln!(out, "    Allows {verb} port {}", ports_text(pr));
            }
        }
    }
    let _ = writeln!(out, "{matched} rules matched");
    matched
}

/// Traces a flow through the rules. Returns the final decision and the log.
pub fn trace(rules: &[Arc<Rule>], mode: Enforcement, req: TraceRequest<'_>) -> (Decision, String) {
    let mut out = String::new();
    let ports: Vec<String> = req
        .ports
        .iter()
        .map(|p| format!("{}/{}", p.port, p.protocol.as_str()))
        .collect();
    let _ = writeln!(
        out,
        "Tracing From: {} => To: {} Ports: [{}]",
        bracket(req.from),
        bracket(req.to),
        ports.join(", ")
    );
    if mode != Enforcement::Default {
        let _ = writeln!(out, "Policy enforcement mode: {mode}");
    }
    let _ = writeln!(out);

    // L3: may the source reach the destination at all (ingress of the destination)?
    let selecting_dst: Vec<&Rule> = rules
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| selects(r, req.to))
        .collect();
    let ingress_on = enforced(
        mode,
        req.to,
        selecting_dst.iter().copied(),
        Direction::Ingress,
    );
    rules_section(
        &mut out,
        rules,
        req.to,
        req.from,
        Direction::Ingress,
        req.verbose,
    );
    let l3 = !ingress_on || {
        let peers = selecting_dst
            .iter()
            .flat_map(|r| r.peers(Direction::Ingress));
        let requirements = peers
            .clone()
            .flat_map(|pr| &pr.requires)
            .all(|s| s.matches(req.from));
        requirements && peers.clone().any(|pr| peer_selected(pr, req.from))
    };
    let word = |b: bool| if b { "allowed" } else { "denied" };
    if ingress_on {
        let _ = writeln!(out, "Result: {}", word(l3).to_ascii_uppercase());
    } else {
        let _ = writeln!(out, "Result: ALLOWED (ingress policy not enforced)");
    }
    let _ = writeln!(out, "L3 verdict: {}", word(l3));

    let mut allowed = true;
    for (d, subject, peer) in [
        (Direction::Egress, req.from, req.to),
        (Direction::Ingress, req.to, req.from),
    ] {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Resolving {} port policy for {}",
            d.as_str(),
            bracket(subject)
        );
        let selecting: Vec<&Rule> = rules
            .iter()
            .map(|r| r.as_ref())
            .filter(|r| selects(r, subject))
            .collect();
        let on = enforced(mode, subject, selecting.iter().copied(), d);
        rules_section(&mut out, rules, subject, peer, d, req.verbose);
        if !on {
            let _ = writeln!(out, "{} policy is not enforced", d.title());
        }
        let flows: Vec<(String, u16, &[u8])> = if req.ports.is_empty() {
            vec![("any traffic".to_string(), 0, &[0u8][..])]
        } else {
            req.ports
                .iter()
                .map(|p| {
                    (
                        format!("{}/{}", p.port, p.protocol.as_str()),
                        p.port,
                        p.protocol.numbers(),
                    )
                })
                .collect()
        };
        let mut direction_ok = true;
        for (name, port, protos) in &flows {
            // `any` is allowed when one of its protocols is.
            let verdict = protos
                .iter()
                .find_map(|proto| evaluate(rules, mode, subject, d, peer, *port, *proto));
            if on {
                let _ = writeln!(
                    out,
                    "  {name}: {}{}",
                    word(verdict.is_some()),
                    verdict.as_ref().map(http_text).unwrap_or_default()
                );
            }
            direction_ok &= verdict.is_some();
        }
        let _ = writeln!(out, "L4 {} verdict: {}", d.as_str(), word(direction_ok));
        allowed &= direction_ok;
    }
    let decision = if allowed {
        Decision::Allowed
    } else {
        Decision::Denied
    };
    let _ = writeln!(out);
    let _ = writeln!(out, "Verdict: {decision}");
    (decision, out)
}

/// Parses a `--dport` value: `80`, `80/tcp`, `53/udp`, `80/any`.
pub fn parse_dport(s: &str) -> Result<PortProtocol, String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "any"));
    let port = match port.trim().parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => n as u16,
        _ => return Err(format!("'{s}': the port must be 1-65535")),
    };
    let protocol = Protocol::parse(proto)
        .ok_or_else(|| format!("'{s}': unknown protocol '{proto}' (expected tcp, udp or any)"))?;
    Ok(PortProtocol { port, protocol })
}
