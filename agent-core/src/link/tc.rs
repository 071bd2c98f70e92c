//! tc: the `clsact` qdisc of a device and the `cls_bpf` filters (direct action) that run the
//! datapath programs on its ingress and egress hooks.
//!
//! Why tc and not TCX links: on this kind of host a TCX attach or detach waits for an RCU
//! grace period (8–20 ms each, measured), which put ~40 ms into every CNI ADD; a cls_bpf
//! filter is added in ~0.1 ms. A filter holds its own reference on the program, so the
//! programs keep running while the agent is stopped, and a restarted agent replaces the
//! program of an existing filter atomically (same handle and priority).

use std::os::fd::{AsRawFd, BorrowedFd};

use super::message::*;
use super::rtnl::Rtnl;
use super::LinkError;

const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;

const TC_H_CLSACT: u32 = 0xffff_fff1;
const TC_H_MIN_INGRESS: u32 = 0xfff2;
const TC_H_MIN_EGRESS: u32 = 0xfff3;
/// The handle and priority of the agent's filter on each hook.
pub const FILTER_HANDLE: u32 = 1;
pub const FILTER_PRIORITY: u16 = 1;
const ETH_P_ALL: u16 = 0x0003;

/// The hook of a filter on a device's clsact qdisc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn parent(self) -> u32 {
        let minor = match self {
            Hook::Ingress => TC_H_MIN_INGRESS,
            Hook::Egress => TC_H_MIN_EGRESS,
        };
        (TC_H_CLSACT & 0xffff_0000) | minor
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        })
    }
}

/// `struct tcmsg`: family, padding, ifindex, handle, parent, info.
fn tcmsg(index: u32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&handle.to_ne_bytes());
    m[12..16].copy_from_slice(&parent.to_ne_bytes());
    m[16..20].copy_from_slice(&info.to_ne_bytes());
    m
}

/// A filter's `tcm_info`: priority in the upper half, protocol (network order) below.
fn filter_info(priority: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be())
}

/// The `bpf` filter request for `program` on `hook` of device `index`.
fn filter_request(index: u32, hook: Hook, program: BorrowedFd<'_>, name: &str) -> Request {
    let mut req = Request::new(
        RTM_NEWTFILTER,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        &tcmsg(
            index,
            FILTER_HANDLE,
            hook.parent(),
            filter_info(FILTER_PRIORITY),
        ),
    );
    req.attr_str(TCA_KIND, "bpf")
        .begin_nested(TCA_OPTIONS)
        .attr_u32(TCA_BPF_FD, program.as_raw_fd() as u32)
        .attr_str(TCA_BPF_NAME, name)
        .attr_u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT)
        .end_nested();
    req
}

impl Rtnl {
    /// Adds the clsact qdisc to device `index` unless it has one.
    pub fn ensure_clsact(&mut self, index: u32, name: &str) -> Result<(), LinkError> {
        let mut req = Request::new(
            RTM_NEWQDISC,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &tcmsg(index, TC_H_CLSACT & 0xffff_0000, TC_H_CLSACT, 0),
        );
        req.attr_str(TCA_KIND, "clsact");
        match self.socket.execute(&req) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(self.fail("add the clsact qdisc to", name, e)),
        }
    }

    /// Runs `program` on `hook` of device `index` in direct-action mode, replacing the
    /// program of the agent's filter there (atomically) if it has one.
    pub fn attach_bpf(
        &mut self,
        index: u32,
        name: &str,
        hook: Hook,
        program: BorrowedFd<'_>,
        program_name: &str,
    ) -> Result<(), LinkError> {
        let req = filter_request(index, hook, program, program_name);
        self.socket
            .execute(&req)
            .map_err(|e| self.fail("attach a bpf filter to", format!("{name} {hook}"), e))
    }

    /// Removes the clsact qdisc of device `index` with its filters. `Ok(false)` when the
    /// device or the qdisc is gone already.
    pub fn remove_clsact(&mut self, index: u32, name: &str) -> Result<bool, LinkError> {
        let req = Request::new(
            RTM_DELQDISC,
            NLM_F_ACK,
            &tcmsg(index, TC_H_CLSACT & 0xffff_0000, TC_H_CLSACT, 0),
        );
        match self.socket.execute(&req) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)) => {
                Ok(false)
            }
            Err(e) => Err(self.fail("remove the clsact qdisc of", name, e)),
        }
    }

    /// The names of the bpf filters on `hook` of device `index`.
    pub fn bpf_filters(
        &mut self,
        index: u32,
        name: &str,
        hook: Hook,
    ) -> Result<Vec<String>, LinkError> {
        let req = Request::new(
            RTM_GETTFILTER,
            NLM_F_DUMP,
            &tcmsg(index, 0, hook.parent(), 0),
        );
        let messages = match self.socket.dump(&req) {
            Ok(m) => m,
            Err(e) if matches!(e.errno(), Some(libc::ENODEV | libc::EINVAL | libc::ENOENT)) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(self.fail("list the filters of", format!("{name} {hook}"), e)),
        };
        Ok(messages
            .iter()
            .filter_map(|m| {
                let attrs = m.payload.get(20..)?;
                let kind = find_attr(attrs, TCA_KIND).map(attr_string)?;
                if kind != "bpf" {
                    return None;
                }
                let options = find_attr(attrs, TCA_OPTIONS)?;
                find_attr(options, TCA_BPF_NAME).map(attr_string)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_request_layout() {
        let fd = std::fs::File::open("/dev/null").unwrap();
        let req = filter_request(
            7,
            Hook::Egress,
            std::os::fd::AsFd::as_fd(&fd),
            "to_container",
        );
        let bytes = req.finish(1);
        assert_eq!(u16_at(&bytes, 4), RTM_NEWTFILTER);
        assert_eq!(
            u16_at(&bytes, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        let tc = &bytes[HEADER_LEN..HEADER_LEN + 20];
        assert_eq!(i32_at(tc, 4), 7);
        assert_eq!(u32_at(tc, 8), FILTER_HANDLE);
        assert_eq!(u32_at(tc, 12), 0xffff_fff3);
        // Priority 1, ETH_P_ALL in network order.
        assert_eq!(u32_at(tc, 16), (1 << 16) | u32::from(3u16.to_be()));
        let attrs_ = &bytes[HEADER_LEN + 20..];
        assert_eq!(attr_string(find_attr(attrs_, TCA_KIND).unwrap()), "bpf");
        let options = find_attr(attrs_, TCA_OPTIONS).unwrap();
        assert_eq!(
            attr_string(find_attr(options, TCA_BPF_NAME).unwrap()),
            "to_container"
        );
        assert_eq!(
            u32_at(find_attr(options, TCA_BPF_FLAGS).unwrap(), 0),
            TCA_BPF_FLAG_ACT_DIRECT
        );
        assert_eq!(Hook::Ingress.parent(), 0xffff_fff2);
    }
}
