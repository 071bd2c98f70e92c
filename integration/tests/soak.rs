//! The soak run (`soak-cni`, `make soak` does 10,000 cycles) kept short for the test suite:
//! 400 CNI ADD/DEL cycles leave nothing behind and the agent's memory and file descriptors
//! flat.

use std::process::Command;

use integration::{bin, require_root, text};

#[test]
fn four_hundred_add_del_cycles_leave_nothing_behind() {
    if !require_root("four_hundred_add_del_cycles_leave_nothing_behind") {
        return;
    }
    let out = Command::new(bin("soak-cni"))
        .env("SOAK_CYCLES", "400")
        .output()
        .expect("run soak-cni");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("soak: ok"),
        "soak-cni failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("nothing left"), "{stdout}");
}
