//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (aya 0.14 has no batch calls): a
//! policy of thousands of entries is written with a handful of system calls instead of one
//! per entry.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use aya::Pod;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per system call: bounds the time the kernel spends in one call.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One batch call; on failure, how many elements the kernel processed before the error.
fn call(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> Result<(), (usize, io::Error)> {
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: count as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix for the batch commands; `keys` (and
    // `values` for updates) point to `count` contiguous elements of the map's key (value)
    // size, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        return Err((attr.count as usize, io::Error::last_os_error()));
    }
    Ok(())
}

/// Writes `keys[i] => values[i]` for every i. On failure: how many were written, and why
/// the next one was not.
pub fn update<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0;
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        call(
            BPF_MAP_UPDATE_BATCH,
            fd,
            k.as_ptr().cast(),
            v.as_ptr().cast(),
            k.len(),
        )
        .map_err(|(n, e)| (done + n, e))?;
        done += k.len();
    }
    Ok(())
}

/// Deletes every key; keys already absent are skipped. Returns how many other failures
/// there were.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> usize {
    let mut failed = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        match call(
            BPF_MAP_DELETE_BATCH,
            fd,
            rest.as_ptr().cast(),
            std::ptr::null(),
            n,
        ) {
            Ok(()) => rest = &rest[n..],
            Err((done, e)) => {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    failed += 1;
                }
                // Skip the key that failed and go on with the next.
                rest = &rest[(done + 1).min(rest.len())..];
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_matches_the_kernel_layout() {
        // union bpf_attr's batch member: 4 u64, 2 u32, 2 u64.
        assert_eq!(std::mem::size_of::<BatchAttr>(), 56);
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(std::mem::offset_of!(BatchAttr, elem_flags), 40);
    }
}
