use super::*;

fn spec(frontend: (&str, i64, &str), backends: &[(&str, i64, i64)]) -> ServiceSpec {
    ServiceSpec {
        id: 0,
        frontend_address: FrontendAddress {
            ip: frontend.0.into(),
            port: frontend.1,
            protocol: frontend.2.into(),
        },
        backend_addresses: backends
            .iter()
            .map(|(ip, port, weight)| BackendAddress {
                ip: (*ip).into(),
                port: *port,
                weight: *weight,
            })
            .collect(),
        flags: None,
    }
}

fn frontend_error(s: &ServiceSpec) -> String {
    match ServiceRecord::from_spec(1, s) {
        Err(ServiceError::InvalidFrontend(reason)) => reason,
        other => panic!("expected an invalid frontend, got {other:?}"),
    }
}

fn backend_error(s: &ServiceSpec) -> (usize, String) {
    match ServiceRecord::from_spec(1, s) {
        Err(ServiceError::InvalidBackend { index, reason }) => (index, reason),
        other => panic!("expected an invalid backend, got {other:?}"),
    }
}

#[test]
fn ids() {
    assert_eq!(parse_id("1"), Ok(1));
    assert_eq!(parse_id("65535"), Ok(65535));
    for bad in ["0", "65536", "-1", "x", "", "cilium-local:4242", "1.5"] {
        assert_eq!(parse_id(bad), Err(ServiceError::BadId(bad.into())), "{bad}");
    }
    let err = ServiceRecord::from_spec(0, &spec(("10.0.0.1", 80, "tcp"), &[])).unwrap_err();
    assert_eq!(err, ServiceError::BadId("0".into()));
}

#[test]
fn valid_spec_is_normalized() {
    let given = spec(
        ("F00D:0:0::1", 80, "TCP"),
        &[("f00d::0:2", 8080, 3), ("f00d::3", 8080, 0)],
    );
    let record = ServiceRecord::from_spec(7, &given).unwrap();
    assert_eq!(record.frontend.to_string(), "[f00d::1]:80/tcp");
    assert_eq!(record.backends.len(), 2);
    assert_eq!(record.backends[1].weight, 0);
    let normal = record.to_spec();
    assert_eq!(normal.id, 7);
    assert_eq!(normal.frontend_address.ip, "f00d::1");
    assert_eq!(normal.frontend_address.protocol, "tcp");
    assert_eq!(normal.backend_addresses[0].ip, "f00d::2");
    assert_eq!(normal.backend_addresses[0].weight, 3);
    // The normal form validates to the same record.
    assert_eq!(ServiceRecord::from_spec(7, &normal).unwrap(), record);
    // No backends is a service too (connections to it are dropped until it gets some).
    assert!(ServiceRecord::from_spec(1, &spec(("10.0.0.1", 53, "udp"), &[])).is_ok());
}

#[test]
fn invalid_frontends() {
    for (frontend, expected) in [
        (("10.0.0.x", 80, "tcp"), "'10.0.0.x' is not an IP address"),
        (("", 80, "tcp"), "'' is not an IP address"),
        (("10.0.0.1/32", 80, "tcp"), "is not an IP address"),
        (("0.0.0.0", 80, "tcp"), "0.0.0.0 is not a unicast address"),
        (("::", 80, "tcp"), ":: is not a unicast address"),
        (("224.0.0.1", 80, "tcp"), "not a unicast address"),
        (("255.255.255.255", 80, "tcp"), "not a unicast address"),
        (("10.0.0.1", 0, "tcp"), "port 0 is out of range (1-65535)"),
        (("10.0.0.1", 65536, "tcp"), "port 65536 is out of range"),
        (("10.0.0.1", -80, "tcp"), "port -80 is out of range"),
        (("10.0.0.1", 80, "sctp"), "unknown protocol 'sctp'"),
    ] {
        let reason = frontend_error(&spec(frontend, &[]));
        assert!(reason.contains(expected), "{frontend:?}: {reason}");
    }
    // A bad frontend is reported before bad backends.
    let both = spec(("x", 80, "tcp"), &[("y", 80, 1)]);
    frontend_error(&both);
}

#[test]
fn invalid_backends() {
    let frontend = ("10.0.0.1", 80, "tcp");
    for (backends, index, expected) in [
        (
            vec![("10.0.1.1", 80, 1), ("nope", 80, 1)],
            2,
            "'nope' is not an IP address",
        ),
        (vec![("10.0.1.1", 0, 1)], 1, "port 0 is out of range"),
        (
            vec![("10.0.1.1", 70000, 1)],
            1,
            "port 70000 is out of range",
        ),
        (
            vec![("f00d::2", 80, 1)],
            1,
            "[f00d::2]:80 is an IPv6 address and the frontend an IPv4 one",
        ),
        (
            vec![("10.0.1.1", 80, 65536)],
            1,
            "weight 65536 of 10.0.1.1:80 is out of range (0-65535)",
        ),
        (vec![("10.0.1.1", 80, -1)], 1, "weight -1 of 10.0.1.1:80"),
        (
            vec![
                ("10.0.1.1", 80, 1),
                ("10.0.1.2", 80, 1),
                ("10.0.1.1", 80, 5),
            ],
            3,
            "10.0.1.1:80 is backend 1 already",
        ),
        (
            vec![("10.0.0.1", 80, 1)],
            1,
            "10.0.0.1:80 is the frontend itself",
        ),
        (vec![("0.0.0.0", 80, 1)], 1, "not a unicast address"),
    ] {
        let (i, reason) = backend_error(&spec(frontend, &backends));
        assert_eq!(i, index, "{backends:?}: {reason}");
        assert!(reason.contains(expected), "{backends:?}: {reason}");
    }
    // The same address on another port, and the extreme weights, are fine.
    let ok = spec(
        frontend,
        &[
            ("10.0.1.1", 80, 0),
            ("10.0.1.1", 81, 65535),
            ("10.0.0.1", 8080, 1),
        ],
    );
    assert!(ServiceRecord::from_spec(1, &ok).is_ok());
    let v6 = spec(("f00d::1", 80, "any"), &[("10.0.1.1", 80, 1)]);
    let (_, reason) = backend_error(&v6);
    assert!(
        reason.contains("IPv4 address and the frontend an IPv6 one"),
        "{reason}"
    );
}

#[test]
fn error_messages() {
    let err =
        ServiceRecord::from_spec(1, &spec(("10.0.0.1", 80, "tcp"), &[("b", 1, 1)])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid backend 1: 'b' is not an IP address"
    );
    let err = ServiceRecord::from_spec(1, &spec(("10.0.0.1", 0, "tcp"), &[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid frontend: port 0 is out of range (1-65535)"
    );
    assert_eq!(
        ServiceError::IdMismatch { path: 1, body: 2 }.to_string(),
        "the path names service 1 but the body says id 2"
    );
}

#[test]
fn frontends_are_unique_across_services() {
    let mut table = ServiceTable::default();
    let web = ServiceRecord::from_spec(1, &spec(("10.0.0.1", 80, "tcp"), &[])).unwrap();
    table.check(&web).unwrap();
    assert!(table.insert(web.clone()).is_none());

    // Same frontend, another id: refused; an overlapping `any` too.
    for (protocol, clash) in [("tcp", true), ("any", true), ("udp", false)] {
        let other = ServiceRecord::from_spec(2, &spec(("10.0.0.1", 80, protocol), &[])).unwrap();
        match table.check(&other) {
            Err(ServiceError::InvalidFrontend(reason)) => {
                assert!(clash, "{protocol}: {reason}");
                assert!(reason.contains("of service 1"), "{reason}");
            }
            Ok(()) => assert!(!clash, "{protocol} should clash"),
            Err(e) => panic!("{e}"),
        }
    }
    // The same service may keep (or change) its own frontend.
    let moved = ServiceRecord::from_spec(1, &spec(("10.0.0.1", 80, "any"), &[])).unwrap();
    table.check(&moved).unwrap();
    assert_eq!(table.insert(moved).unwrap(), web);
    // Another port or address is another frontend.
    for (ip, port) in [("10.0.0.1", 81), ("10.0.0.2", 80)] {
        let other = ServiceRecord::from_spec(3, &spec((ip, port, "tcp"), &[])).unwrap();
        table.check(&other).unwrap();
    }
    assert_eq!(table.len(), 1);
    assert_eq!(table.specs()[0].frontend_address.protocol, "any");
    assert!(table.remove(1).is_some());
    assert!(table.is_empty());
}

#[test]
fn frontend_display() {
    let addr = |ip: &str, port, protocol| L3n4Addr {
        ip: ip.parse().unwrap(),
        port,
        protocol,
    };
    assert_eq!(
        addr("10.0.0.1", 80, Protocol::Any).to_string(),
        "10.0.0.1:80"
    );
    assert_eq!(
        addr("10.0.0.1", 53, Protocol::Udp).to_string(),
        "10.0.0.1:53/udp"
    );
    assert_eq!(
        addr("f00d::1", 80, Protocol::Tcp).to_string(),
        "[f00d::1]:80/tcp"
    );
}
