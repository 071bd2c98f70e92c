//! The endpoint state machine (seed §3.3): which state may follow which.
//!
//! ```text
//! creating → waiting-for-identity → regenerating → ready
//!                  ↑      ↓              ↓   ↑       │
//!                  └─ not-ready ←────────┘   └───────┘
//! any state → disconnected (the endpoint is being removed; terminal)
//! ```

use cilium_api::models::EndpointState::{self, *};

/// Whether an endpoint in state `from` may move to `to`.
pub fn can_transition(from: EndpointState, to: EndpointState) -> bool {
    if from == to {
        return true;
    }
    match (from, to) {
        (Disconnected, _) => false,
        (_, Disconnected) => true,
        (_, Creating) => false,
        (Creating, WaitingForIdentity) => true,
        (Creating, _) => false,
        (WaitingForIdentity | NotReady | Regenerating | Ready, WaitingForIdentity) => true,
        (WaitingForIdentity | Regenerating | Ready, NotReady) => true,
        (WaitingForIdentity | NotReady | Ready, Regenerating) => true,
        (Regenerating | WaitingForIdentity, Ready) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_life() {
        let path = [
            Creating,
            WaitingForIdentity,
            Regenerating,
            Ready,
            Regenerating,
            Ready,
        ];
        for pair in path.windows(2) {
            assert!(
                can_transition(pair[0], pair[1]),
                "{} -> {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn disconnected_is_terminal_and_reachable_from_all() {
        for s in EndpointState::ALL {
            assert!(can_transition(s, Disconnected));
            if s != Disconnected {
                assert!(!can_transition(Disconnected, s));
            }
        }
    }

    #[test]
    fn nothing_goes_back_to_creating_and_creating_must_wait_for_identity() {
        for s in EndpointState::ALL {
            if s != Creating {
                assert!(!can_transition(s, Creating));
            }
        }
        assert!(!can_transition(Creating, Ready));
        assert!(!can_transition(NotReady, Ready));
    }
}
