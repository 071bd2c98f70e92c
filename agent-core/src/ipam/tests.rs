use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

#[test]
fn router_is_first_address_and_never_handed_out() {
    let ipam = Ipam::new(
        Some(cidr("10.2.0.0/16")),
        Some(cidr("f00d::c000:202:0:0/96")),
    )
    .unwrap();
    let addressing = ipam.node_addressing();
    assert_eq!(addressing.ipv4.ip, Some(ip("10.2.0.1")));
    assert_eq!(addressing.ipv4.alloc_range.as_deref(), Some("10.2.0.0/16"));
    assert_eq!(addressing.ipv6.ip, Some(ip("f00d::c000:202:0:1")));
    assert_eq!(
        addressing.ipv6.alloc_range.as_deref(),
        Some("f00d::c000:202:0:0/112")
    );
    let pair = ipam.allocate(None, "a").unwrap();
    assert_eq!(pair.ipv4, Some(ip("10.2.0.2")));
    assert_eq!(pair.ipv6, Some(ip("f00d::c000:202:0:2")));
    let err = ipam.reserve(ip("10.2.0.1"), "x").unwrap_err();
    assert!(err.to_string().contains("router"), "{err}");
    assert!(matches!(
        ipam.release(ip("10.2.0.1")),
        Err(IpamError::NotAllocatable { .. })
    ));
}

#[test]
fn fill_small_range_then_exhaustion() {
    // /29: .0 network, .1 router, .2-.6 endpoints, .7 broadcast.
    let ipam = Ipam::new(Some(cidr("10.9.0.0/29")), None).unwrap();
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(
            ipam.allocate(Some(Family::Ipv4), &format!("o{i}"))
                .unwrap()
                .ipv4
                .unwrap(),
        );
    }
    let want: Vec<IpAddr> = (2..=6).map(|n| ip(&format!("10.9.0.{n}"))).collect();
    assert_eq!(got, want);
    let err = ipam.allocate(Some(Family::Ipv4), "late").unwrap_err();
    assert_eq!(err.to_string(), "no free ipv4 address left in 10.9.0.0/29");
    assert_eq!(ipam.pool(Family::Ipv4).unwrap().used(), 5);
}

#[test]
fn released_address_is_not_reused_at_once() {
    let ipam = Ipam::new(Some(cidr("10.9.0.0/28")), None).unwrap();
    let a = ipam
        .allocate(Some(Family::Ipv4), "a")
        .unwrap()
        .ipv4
        .unwrap();
    assert_eq!(ipam.release(a).unwrap(), "a");
    let b = ipam
        .allocate(Some(Family::Ipv4), "b")
        .unwrap()
        .ipv4
        .unwrap();
    assert_ne!(a, b, "cursor must move past a released address");
    // Once the cursor wraps, the released address is found again.
    let mut seen = HashSet::new();
    while let Ok(pair) = ipam.allocate(Some(Family::Ipv4), "fill") {
        seen.insert(pair.ipv4.unwrap());
    }
    assert!(
        seen.contains(&a),
        "the wrap-around must reach the released address"
    );
}

#[test]
fn reserve_conflicts_and_range_checks() {
    let ipam = Ipam::new(Some(cidr("10.9.0.0/24")), Some(cidr("f00d::/112"))).unwrap();
    ipam.reserve(ip("10.9.0.50"), "docker").unwrap();
    let err = ipam.reserve(ip("10.9.0.50"), "other").unwrap_err();
    assert_eq!(
        err,
        IpamError::AlreadyAllocated {
            ip: ip("10.9.0.50"),
            owner: "docker".into()
        }
    );
    let err = ipam.reserve(ip("10.10.0.5"), "x").unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 10.10.0.5 is outside the allocation range 10.9.0.0/24"
    );
    assert!(matches!(
        ipam.reserve(ip("10.9.0.255"), "x"),
        Err(IpamError::NotAllocatable { .. })
    ));
    assert!(matches!(
        ipam.reserve(ip("10.9.0.0"), "x"),
        Err(IpamError::NotAllocatable { .. })
    ));
    assert!(matches!(
        ipam.release(ip("10.9.0.51")),
        Err(IpamError::NotAllocated { .. })
    ));
    // The allocator skips reserved addresses.
    for _ in 0..60 {
        let got = ipam
            .allocate(Some(Family::Ipv4), "n")
            .unwrap()
            .ipv4
            .unwrap();
        assert_ne!(got, ip("10.9.0.50"));
    }
    assert_eq!(ipam.owner(&ip("10.9.0.50")).as_deref(), Some("docker"));
}

#[test]
fn single_family_modes() {
    let v4 = Ipam::new(Some(cidr("10.9.0.0/24")), None).unwrap();
    let pair = v4.allocate(None, "a").unwrap();
    assert!(pair.ipv4.is_some() && pair.ipv6.is_none());
    assert_eq!(
        v4.allocate(Some(Family::Ipv6), "a"),
        Err(IpamError::FamilyDisabled(Family::Ipv6))
    );
    assert_eq!(
        v4.reserve(ip("f00d::5"), "a"),
        Err(IpamError::FamilyDisabled(Family::Ipv6))
    );
    assert!(!v4.node_addressing().ipv6.enabled);

    let v6 = Ipam::new(None, Some(cidr("f00d::/112"))).unwrap();
    let pair = v6.allocate(None, "a").unwrap();
    assert!(pair.ipv4.is_none() && pair.ipv6 == Some(ip("f00d::2")));
    assert_eq!(
        v6.allocate(Some(Family::Ipv4), "a"),
        Err(IpamError::FamilyDisabled(Family::Ipv4))
    );
}

#[test]
fn dual_allocation_is_all_or_nothing() {
    // IPv6 /126: ::0 network, ::1 router, ::2 and ::3 free; IPv4 has plenty.
    let ipam = Ipam::new(Some(cidr("10.9.0.0/24")), Some(cidr("f00d::/126"))).unwrap();
    ipam.allocate(None, "a").unwrap();
    ipam.allocate(None, "b").unwrap();
    let before = ipam.pool(Family::Ipv4).unwrap().used();
    assert!(matches!(
        ipam.allocate(None, "c"),
        Err(IpamError::Exhausted { .. })
    ));
    assert_eq!(
        ipam.pool(Family::Ipv4).unwrap().used(),
        before,
        "IPv4 rolled back"
    );
}

#[test]
fn too_small_ranges_are_refused() {
    assert!(matches!(
        Ipam::new(Some(cidr("10.9.0.0/31")), None),
        Err(IpamError::RangeTooSmall { .. })
    ));
    assert!(matches!(
        Ipam::new(Some(cidr("10.9.0.4/32")), None),
        Err(IpamError::RangeTooSmall { .. })
    ));
    assert!(Ipam::new(Some(cidr("10.9.0.4/30")), None).is_ok());
}

#[test]
fn many_threads_get_distinct_addresses() {
    let ipam = Arc::new(Ipam::new(Some(cidr("10.9.0.0/20")), Some(cidr("f00d::/112"))).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let ipam = Arc::clone(&ipam);
            std::thread::spawn(move || {
                (0..400)
                    .map(|i| ipam.allocate(None, &format!("t{t}-{i}")).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut v4 = HashSet::new();
    let mut v6 = HashSet::new();
    for t in threads {
        for pair in t.join().unwrap() {
            assert!(v4.insert(pair.ipv4.unwrap()), "duplicate IPv4");
            assert!(v6.insert(pair.ipv6.unwrap()), "duplicate IPv6");
        }
    }
    assert_eq!(v4.len(), 3200);
    assert_eq!(ipam.allocations().len(), 6400);
}

#[test]
fn state_round_trip_keeps_owners_and_cursor() {
    let ipam = Ipam::new(Some(cidr("10.9.0.0/24")), Some(cidr("f00d::/112"))).unwrap();
    let a = ipam.allocate(None, "a").unwrap();
    ipam.reserve(ip("10.9.0.77"), "docker").unwrap();
    let released = ipam
        .allocate(Some(Family::Ipv4), "tmp")
        .unwrap()
        .ipv4
        .unwrap();
    ipam.release(released).unwrap();
    let json = serde_json::to_string(&ipam.to_state()).unwrap();

    let restored = Ipam::new(Some(cidr("10.9.0.0/24")), Some(cidr("f00d::/112"))).unwrap();
    restored
        .restore(&serde_json::from_str(&json).unwrap())
        .unwrap();
    assert_eq!(restored.allocations(), ipam.allocations());
    assert_eq!(restored.owner(&a.ipv4.unwrap()).as_deref(), Some("a"));
    let next = restored
        .allocate(Some(Family::Ipv4), "n")
        .unwrap()
        .ipv4
        .unwrap();
    assert_ne!(next, released, "cursor survives the restart");
    assert_ne!(next, a.ipv4.unwrap());
}

#[test]
fn restore_into_a_different_range_is_refused_whole() {
    let old = Ipam::new(Some(cidr("10.9.0.0/24")), Some(cidr("f00d::/112"))).unwrap();
    old.allocate(None, "a").unwrap();
    let state = old.to_state();
    let new = Ipam::new(Some(cidr("10.9.0.0/24")), Some(cidr("f00e::/112"))).unwrap();
    let err = new.restore(&state).unwrap_err();
    assert!(err.to_string().contains("f00d::2"), "{err}");
    assert_eq!(new.allocations().len(), 0, "nothing loaded, not even IPv4");

    let v4_only = Ipam::new(Some(cidr("10.9.0.0/24")), None).unwrap();
    let err = v4_only.restore(&state).unwrap_err();
    assert!(matches!(
        err,
        IpamError::SavedFamilyDisabled {
            family: Family::Ipv6,
            count: 1,
            ..
        }
    ));
}
