//! The datapath programs on their own, through `BPF_PROG_TEST_RUN` with crafted packets:
//! `bpf-programs/tests/unit.py` loads a private copy of the object (maps pinned under a
//! private directory) and checks the verdict, the drop reason counter and the rewritten
//! packet for every parsing edge case (truncated headers, IPv4 options, IPv6 extension
//! headers, fragments, ND/MLD), the source checks, conntrack states and lifetimes, related
//! ICMP errors, the policy lookup order, local delivery rewrites and the events.

use std::path::Path;
use std::process::Command;

use integration::require_root;

#[test]
fn datapath_edge_cases_through_bpf_prog_test_run() {
    if !require_root("datapath_edge_cases_through_bpf_prog_test_run") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bpf-programs");
    let out = Command::new("python3")
        .arg("tests/unit.py")
        .current_dir(&dir)
        .output()
        .expect("run python3 bpf-programs/tests/unit.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\n0 failure(s)"),
        "unit.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran the cases (a silent early exit is a failure too).
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(passed >= 40, "only {passed} cases ran:\n{stdout}");
}
