//! Compiles the eBPF programs of `bpf-programs/` with clang (`-O2 -g -target bpf`) into
//! `$OUT_DIR`, from an explicit list, for the agent to embed. No compiler is needed where the
//! agent runs.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs, relative to `bpf-programs/`; each becomes `$OUT_DIR/<stem>.o`.
const PROGRAMS: &[&str] = &["datapath.c"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src = manifest.join("../bpf-programs");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=CLANG");
    watch(&src);

    let version = Command::new(&clang).arg("--version").output();
    if !matches!(&version, Ok(o) if o.status.success()) {
        panic!(
            "\n\nclang was not found (tried `{clang}`): the eBPF programs in bpf-programs/ are \
             compiled with clang when the agent is built.\nInstall it with `make deps` \
             (Debian: apt-get install clang llvm libbpf-dev), or point CLANG at it.\n"
        );
    }
    // <asm/types.h> lives in the multiarch include directory on Debian.
    let multiarch = format!("/usr/include/{}-linux-gnu", env::consts::ARCH);
    for program in PROGRAMS {
        let input = src.join(program);
        let stem = Path::new(program).file_stem().expect("program file name");
        let output = out.join(stem).with_extension("o");
        let result = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
            .arg("-I")
            .arg(src.join("include"))
            .arg("-I")
            .arg(&multiarch)
            .arg("-c")
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {clang}: {e}"));
        if !result.status.success() {
            panic!(
                "\n\nclang failed to compile {}:\n{}\n",
                input.display(),
                String::from_utf8_lossy(&result.stderr)
            );
        }
    }
}

/// Rebuilds when any source or header under `dir` changes.
fn watch(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            watch(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
