//! Policy benchmark (issue: labels, identities and policy). Imports 10,000 rules and resolves
//! the policy of 1,000 endpoint identities among 1,000 identities; then applies one new
//! identity and one new rule, showing how many endpoint identities were recomputed. Compares
//! with what an address-based firewall (the approach seed §3.7.1 describes) has to load for
//! the same policy: one iptables rule per allowed (source address, destination address, port),
//! loaded with `iptables-restore` in a private network namespace.
//!
//! Run with `make bench` (release build). Prints times, peak memory and ratios.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_core::labels::{Label, LabelSet};
use agent_core::policy::{parse_rules, Enforcement, PolicyEngine, Verdict};

const IDENTITIES: u32 = 1000;
const RULES: usize = 10_000;
const ROLES: u32 = 20;

fn labels(list: &[String]) -> LabelSet {
    list.iter()
        .map(|l| l.parse::<Label>().expect("label"))
        .collect()
}

fn identity_labels(i: u32) -> LabelSet {
    labels(&[
        format!("container:id=app{i}"),
        format!("container:role=r{}", i % ROLES),
        format!("container:env=e{}", i % 3),
    ])
}

/// 10,000 rules: each selects one app; half admit a role, half one other app, on one port;
/// every 10th adds HTTP rules, every 50th an egress CIDR.
fn policy_text() -> String {
    let mut rules = Vec::with_capacity(RULES);
    for j in 0..RULES {
        let subject = j as u32 % IDENTITIES;
        let from = if j % 2 == 0 {
            serde_json::json!({"matchLabels": {"role": format!("r{}", (j * 7) as u32 % ROLES)}})
        } else {
            serde_json::json!({"matchLabels": {"id": format!("app{}", (j * 13) as u32 % IDENTITIES)}})
        };
        let mut port = serde_json::json!({"ports": [{"port": (1000 + j % 500).to_string(), "protocol": "TCP"}]});
        if j % 10 == 0 {
            port["rules"] =
                serde_json::json!({"http": [{"method": "GET", "path": format!("/api/{j}")}]});
        }
        let mut rule = serde_json::json!({
            "endpointSelector": {"matchLabels": {"id": format!("app{subject}")}},
            "ingress": [{"fromEndpoints": [from], "toPorts": [port]}],
            "labels": [format!("unspec:bench={}", j % 100)],
        });
        if j % 50 == 0 {
            rule["egress"] = serde_json::json!([{"toCIDR": [format!("10.{}.0.0/16", j % 250)]}]);
        }
        rules.push(rule);
    }
    serde_json::Value::Array(rules).to_string()
}

/// Peak resident memory of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The address-based equivalent: one ACCEPT per (peer address, endpoint address, port).
fn iptables_rules(engine: &PolicyEngine) -> (String, usize) {
    let addr = |id: u32| format!("10.200.{}.{}", id / 250, id % 250 + 1);
    let mut out = String::from("*filter\n:CILIUM-BENCH - [0:0]\n");
    let mut count = 0;
    for subject in 256..256 + IDENTITIES {
        let Some(policy) = engine.policy(subject) else {
            continue;
        };
        for key in policy.ingress.entries.keys() {
            let Some(peer) = key.identity else { continue };
            if !(256..256 + IDENTITIES).contains(&peer) {
                continue;
            }
            let _ = writeln!(
                out,
                "-A CILIUM-BENCH -s {} -d {} -p tcp --dport {} -j ACCEPT",
                addr(peer - 256),
                addr(subject - 256),
                key.port
            );
            count += 1;
        }
    }
    out.push_str("COMMIT\n");
    (out, count)
}

fn iptables_restore_ms(rules: &str) -> Option<f64> {
    let ns = format!("cilium-bench-policy-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .ok();
    let result = child.as_mut().and_then(|c| {
        c.stdin.take()?.write_all(rules.as_bytes()).ok()?;
        c.wait().ok().filter(|s| s.success())
    });
    let elapsed = ms(start.elapsed());
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    result.map(|_| elapsed)
}

fn main() {
    println!(
        "policy benchmark: {RULES} rules, {IDENTITIES} endpoint identities ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let text = policy_text();
    let rss_before = peak_rss_kib();

    let t = Instant::now();
    let rules = parse_rules(&text).expect("the benchmark policy is valid");
    let parse = t.elapsed();

    let mut engine = PolicyEngine::new(Enforcement::Default);
    engine.add_identity(1, labels(&["reserved:host".into()]));
    engine.add_identity(2, labels(&["reserved:world".into()]));
    for i in 0..IDENTITIES {
        engine.add_identity(256 + i, identity_labels(i));
        engine.acquire(256 + i);
    }
    // CIDR identities, as the agent allocates them for the prefixes the rules name.
    let t = Instant::now();
    let change = engine.import(rules);
    let import = t.elapsed();
    let t = Instant::now();
    for (n, prefix) in engine.prefixes().into_iter().enumerate() {
        engine.add_identity(
            (1 << 24) + n as u32,
            labels(&[format!("cidr:{prefix}"), "reserved:world".into()]),
        );
    }
    let cidr = t.elapsed();
    let entries: usize = (256..256 + IDENTITIES)
        .filter_map(|id| engine.policy(id))
        .map(|p| p.ingress.entries.len() + p.egress.entries.len())
        .sum();
    let peak = peak_rss_kib().saturating_sub(rss_before);
    let total = parse + import + cidr;
    println!();
    println!("import + resolution of {RULES} rules for {IDENTITIES} identities:");
    println!("  parse and validate     {:>9.1} ms", ms(parse));
    println!(
        "  import and resolve     {:>9.1} ms ({} identities recomputed)",
        ms(import),
        change.recomputed.len()
    );
    println!("  CIDR identities        {:>9.1} ms", ms(cidr));
    println!(
        "  total                  {:>9.1} ms   (target <= 1000 ms: {})",
        ms(total),
        if total <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!("  table entries          {entries:>9}");
    println!(
        "  peak memory growth     {:>9.1} MiB  (target <= 200 MiB: {})",
        peak as f64 / 1024.0,
        if peak <= 200 * 1024 { "met" } else { "MISSED" }
    );

    // Sanity: the guides' kind of check, through the tables.
    let p = engine.policy(257).expect("app1 policy");
    let allowed = p
        .ingress
        .entries
        .iter()
        .filter(|(_, v)| **v == Verdict::Allow)
        .count();
    assert!(p.ingress.enforcing && allowed > 0);

    println!();
    println!("incremental changes:");
    let t = Instant::now();
    // Role r2 is admitted by 500 rules of 50 apps.
    let new_labels = labels(&[
        "container:id=app-new".into(),
        "container:role=r2".into(),
        "container:env=e0".into(),
    ]);
    let change = engine.add_identity(256 + IDENTITIES, new_labels);
    let one = t.elapsed();
    println!(
        "  new identity (role r2)   {:>7.2} ms: {} of {IDENTITIES} identities recomputed",
        ms(one),
        change.recomputed.len()
    );
    let t = Instant::now();
    let change = engine.add_identity(
        256 + IDENTITIES + 1,
        labels(&["container:id=unrelated".into()]),
    );
    println!(
        "  new unrelated identity   {:>7.2} ms: {} recomputed",
        ms(t.elapsed()),
        change.recomputed.len()
    );
    let extra = parse_rules(r#"[{"endpointSelector":{"matchLabels":{"id":"app7"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"id":"app8"}}]}]}]"#)
        .expect("valid");
    let t = Instant::now();
    let change = engine.import(extra);
    println!(
        "  new rule for one app     {:>7.2} ms: {} recomputed",
        ms(t.elapsed()),
        change.recomputed.len()
    );

    println!();
    println!(
        "address-based alternative (one iptables rule per peer address, endpoint address, port):"
    );
    let (ipt, count) = iptables_rules(&engine);
    println!("  rules to load          {count:>9} (identity entries here: {entries})");
    match iptables_restore_ms(&ipt) {
        Some(t) => println!(
            "  iptables-restore       {t:>9.1} ms   ratio cilium/iptables: {:.2}x",
            ms(total) / t
        ),
        None => println!("  iptables-restore could not run here (needs root, ip, iptables)"),
    }
    let per_new = (256..256 + IDENTITIES)
        .filter_map(|id| engine.policy(id))
        .filter(|p| {
            p.ingress
                .entries
                .keys()
                .any(|k| k.identity == Some(256 + IDENTITIES))
        })
        .count();
    println!(
        "  the new role r2 endpoint: {per_new} endpoint chains need rules for its address on every \
         node; here, for the next endpoint with these labels, nothing (the identity exists)"
    );

    cidr_heavy();
}

/// One rule admitting 10,000 single-address prefixes (`fromCIDR`), as the datapath benchmark
/// loads it: the import, then the 10,000 CIDR identities the agent allocates for them in one
/// batch (each must be matched against the rule's selectors).
fn cidr_heavy() {
    const PREFIXES: u32 = 10_000;
    let cidrs: Vec<String> = (0..PREFIXES)
        .map(|i| format!("\"172.16.{}.{}/32\"", i / 250, i % 250 + 1))
        .collect();
    let text = format!(
        r#"[{{"endpointSelector": {{"matchLabels": {{"id": "app1"}}}},
              "ingress": [{{"fromCIDR": [{}]}}]}}]"#,
        cidrs.join(",")
    );
    let rules = parse_rules(&text).expect("valid CIDR policy");
    let mut engine = PolicyEngine::new(Enforcement::Default);
    engine.add_identity(2, labels(&["reserved:world".into()]));
    engine.add_identity(256, labels(&["container:id=app1".into()]));
    engine.acquire(256);
    let t = Instant::now();
    engine.import(rules);
    let import = t.elapsed();
    let t = Instant::now();
    let batch: Vec<(u32, LabelSet)> = engine
        .prefixes()
        .into_iter()
        .enumerate()
        .map(|(n, prefix)| {
            (
                (1 << 24) + n as u32,
                labels(&[format!("cidr:{prefix}"), "reserved:world".into()]),
            )
        })
        .collect();
    engine.add_identities(batch);
    let identities = t.elapsed();
    let entries = engine.policy(256).map_or(0, |p| p.ingress.entries.len());
    println!();
    println!("{PREFIXES} fromCIDR prefixes in one rule (the datapath benchmark's policy):");
    println!("  import                 {:>9.1} ms", ms(import));
    println!(
        "  CIDR identities        {:>9.1} ms ({entries} ingress entries for app1)",
        ms(identities)
    );
}
