use cilium_api::models::{EndpointChangeRequest, EndpointState};
use cilium_api::EndpointId;

use super::*;

fn request(container_id: &str) -> EndpointChangeRequest {
    EndpointChangeRequest {
        container_id: Some(container_id.into()),
        container_name: Some(format!("name-{container_id}")),
        labels: Some(vec!["k8s:id=app1".into(), "container:z".into()]),
        ..Default::default()
    }
}

fn registry_with(ids: &[(u16, &str)]) -> Registry {
    let mut reg = Registry::default();
    for (id, cid) in ids {
        reg.insert(EndpointRecord::from_request(*id, &request(cid)).unwrap());
    }
    reg
}

#[test]
fn lookup_by_every_prefix() {
    let mut reg = registry_with(&[(5, "abc"), (9, "def")]);
    reg.get_mut(9).unwrap().docker_endpoint_id = "dock9".into();
    reg.get_mut(9).unwrap().pod_name = "default:web".into();
    let cases = [
        ("5", 5),
        ("cilium-local:9", 9),
        ("container-id:abc", 5),
        ("container-name:name-def", 9),
        ("docker-endpoint:dock9", 9),
        ("pod-name:default:web", 9),
    ];
    for (s, want) in cases {
        assert_eq!(
            reg.lookup(&s.parse::<EndpointId>().unwrap()).unwrap(),
            want,
            "{s}"
        );
    }
    let missing = reg
        .lookup(&"container-id:nope".parse().unwrap())
        .unwrap_err();
    assert_eq!(missing.to_string(), "endpoint container-id:nope not found");
    assert!(matches!(
        reg.lookup(&EndpointId::CiliumLocal(6)),
        Err(EndpointError::NotFound(_))
    ));
}

#[test]
fn ambiguous_names_are_refused() {
    let mut reg = registry_with(&[(1, "a"), (2, "b")]);
    reg.get_mut(2).unwrap().container_name = "name-a".into();
    let err = reg
        .lookup(&"container-name:name-a".parse().unwrap())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "container-name:name-a matches several endpoints (1, 2); use the endpoint id"
    );
}

#[test]
fn id_allocation_moves_forward_and_wraps() {
    let mut reg = registry_with(&[(1, "a"), (2, "b")]);
    assert_eq!(reg.allocate_id().unwrap(), 3);
    reg.remove(1);
    assert_eq!(
        reg.allocate_id().unwrap(),
        4,
        "a freed id is not reused at once"
    );
    reg.insert(EndpointRecord::from_request(65535, &request("z")).unwrap());
    assert_eq!(reg.allocate_id().unwrap(), 1, "wraps to the lowest free id");
}

#[test]
fn id_exhaustion() {
    let mut reg = Registry::default();
    let template = EndpointRecord::from_request(1, &EndpointChangeRequest::default()).unwrap();
    for id in 1..=u16::MAX {
        let mut r = template.clone();
        r.id = id;
        reg.insert(r);
    }
    assert_eq!(reg.allocate_id(), Err(EndpointError::NoFreeId));
}

#[test]
fn uniqueness_of_runtime_ids() {
    let reg = registry_with(&[(1, "abc")]);
    let dup = EndpointRecord::from_request(2, &request("abc")).unwrap();
    let err = reg.check_unique(&dup).unwrap_err();
    assert_eq!(
        err.to_string(),
        "endpoint 1 already exists for container-id abc"
    );
    let ok = EndpointRecord::from_request(2, &request("xyz")).unwrap();
    reg.check_unique(&ok).unwrap();
}

#[test]
fn create_validates_fields() {
    let bad_state = EndpointChangeRequest {
        state: Some(EndpointState::Ready),
        ..request("a")
    };
    assert!(EndpointRecord::from_request(1, &bad_state)
        .unwrap_err()
        .to_string()
        .contains("state"));
    let bad_if = EndpointChangeRequest {
        interface_name: Some("a/b".into()),
        ..request("a")
    };
    assert!(EndpointRecord::from_request(1, &bad_if)
        .unwrap_err()
        .to_string()
        .contains("interface name"));
    let long_if = EndpointChangeRequest {
        interface_name: Some("x".repeat(16)),
        ..request("a")
    };
    assert!(EndpointRecord::from_request(1, &long_if).is_err());
    let bad_mac = EndpointChangeRequest {
        mac: Some("zz:00:00:00:00:00".into()),
        ..request("a")
    };
    assert!(EndpointRecord::from_request(1, &bad_mac)
        .unwrap_err()
        .to_string()
        .contains("MAC"));
    let bad_label = EndpointChangeRequest {
        labels: Some(vec!["bogus:x".into()]),
        ..request("a")
    };
    assert!(EndpointRecord::from_request(1, &bad_label)
        .unwrap_err()
        .to_string()
        .contains("bogus"));
    let swapped = EndpointChangeRequest {
        addressing: Some(cilium_api::models::AddressPair {
            ipv4: Some("f00d::1".parse().unwrap()),
            ipv6: None,
        }),
        ..request("a")
    };
    assert!(EndpointRecord::from_request(1, &swapped).is_err());
    let r = EndpointRecord::from_request(1, &request("a")).unwrap();
    assert_eq!(r.state, EndpointState::WaitingForIdentity);
    assert_eq!(r.effective_labels(), vec!["container:z", "k8s:id=app1"]);
}

#[test]
fn label_modification_all_or_nothing() {
    let mut r = EndpointRecord::from_request(1, &request("a")).unwrap();
    let l = |s: &str| s.parse::<crate::labels::Label>().unwrap();
    r.modify_labels(&[l("container:extra")], &[l("k8s:id=app1")])
        .unwrap();
    assert_eq!(r.effective_labels(), vec!["container:extra", "container:z"]);
    assert_eq!(r.labels.disabled, vec!["k8s:id=app1"]);
    let before = r.labels.clone();
    let err = r
        .modify_labels(&[l("container:more")], &[l("k8s:missing")])
        .unwrap_err();
    assert!(matches!(err, EndpointError::LabelNotFound { .. }));
    assert_eq!(r.labels, before, "nothing changed");
    // Adding a disabled orchestration label re-enables it.
    r.modify_labels(&[l("k8s:id=app1")], &[]).unwrap();
    assert!(r.labels.disabled.is_empty());
    assert!(r.matches_labels(&[l("any:id=app1")]));
    assert!(!r.matches_labels(&[l("container:id=app1")]));
}

#[test]
fn state_changes_are_logged_and_checked() {
    let mut r = EndpointRecord::from_request(1, &request("a")).unwrap();
    r.set_state(EndpointState::Regenerating, "regenerating")
        .unwrap();
    r.set_state(EndpointState::Ready, "ready").unwrap();
    assert_eq!(r.status.back().unwrap().state, EndpointState::Ready);
    let err = r.set_state(EndpointState::Creating, "back").unwrap_err();
    assert_eq!(
        err.to_string(),
        "endpoint 1 cannot go from state ready to creating"
    );
    for i in 0..40 {
        r.log(cilium_api::models::StatusCode::Ok, &format!("n{i}"));
    }
    assert_eq!(r.status.len(), 16);
}

#[test]
fn owner_tags() {
    assert_eq!(owner_tag(42), "endpoint:42");
    assert_eq!(owner_endpoint("endpoint:42"), Some(42));
    assert_eq!(owner_endpoint("docker"), None);
}
