//! A blocking rtnetlink socket: one request at a time, acknowledged or dumped, with the
//! kernel's extended-ack message kept in the error. A socket stays bound to the network
//! namespace it was opened in, so one opened inside a container's netns configures that
//! netns from any thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::message::{
    self, find_attr, i32_at, split, Message, Request, NLMSGERR_ATTR_MSG, NLMSG_DONE, NLMSG_ERROR,
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_DUMP, NLM_F_MULTI,
};

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;

/// Receive buffer: large enough for a full dump datagram.
const RECV_BUF: usize = 64 * 1024;

/// A failed netlink exchange: the errno and the kernel's explanation, if it gave one.
#[derive(Debug)]
pub struct NetlinkFailure {
    pub source: io::Error,
    pub detail: Option<String>,
}

impl NetlinkFailure {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    fn io(source: io::Error) -> Self {
        NetlinkFailure {
            source,
            detail: None,
        }
    }
}

impl std::fmt::Display for NetlinkFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{} ({d})", self.source),
            None => write!(f, "{}", self.source),
        }
    }
}

/// An rtnetlink socket in the namespace it was opened in.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the returned descriptor is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK] {
            let one: libc::c_int = 1;
            // SAFETY: the option value is a valid c_int for the duration of the call.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            // Older kernels lack some options; the socket still works without them.
            if rc < 0 {
                tracing::debug!(option = opt, "netlink socket option not supported");
            }
        }
        // SAFETY: a zeroed sockaddr_nl is valid (port id 0 = kernel assigns, no groups).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket { fd, seq: 0 })
    }

    fn send(&mut self, request: &Request) -> Result<u32, NetlinkFailure> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = request.finish(self.seq);
        // SAFETY: `bytes` is a valid buffer of the given length.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if rc < 0 {
            return Err(NetlinkFailure::io(io::Error::last_os_error()));
        }
        Ok(self.seq)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, NetlinkFailure> {
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let rc =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(NetlinkFailure::io(err));
            }
        }
    }

    /// Sends a request that changes something and waits for the kernel's ack.
    pub fn execute(&mut self, request: &Request) -> Result<(), NetlinkFailure> {
        self.exchange(request, false).map(|_| ())
    }

    /// Sends a dump request and collects every reply message.
    pub fn dump(&mut self, request: &Request) -> Result<Vec<Message>, NetlinkFailure> {
        self.exchange(request, true)
    }

    /// Sends a get request for one object: `Ok(None)` when the kernel says it does not exist.
    pub fn get(&mut self, request: &Request) -> Result<Option<Message>, NetlinkFailure> {
        match self.exchange(request, false) {
            Ok(mut messages) => Ok(messages.pop()),
            Err(e) if matches!(e.errno(), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn exchange(&mut self, request: &Request, dump: bool) -> Result<Vec<Message>, NetlinkFailure> {
        let seq = self.send(request)?;
        let mut buf = vec![0u8; RECV_BUF];
        let mut out = Vec::new();
        loop {
            let n = self.recv(&mut buf)?;
            for msg in split(&buf[..n]) {
                if msg.seq != seq {
                    continue; // a late reply to an earlier, abandoned request
                }
                match msg.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = -i32_at(&msg.payload, 0);
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(NetlinkFailure {
                            source: io::Error::from_raw_os_error(errno),
                            detail: ext_ack_message(&msg),
                        });
                    }
                    _ => {
                        let multi = msg.flags & NLM_F_MULTI != 0;
                        out.push(msg);
                        if !dump && !multi {
                            // A get answers with one message; the ack (if asked) follows.
                            if request_wants_ack(request) {
                                continue;
                            }
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }
}

fn request_wants_ack(request: &Request) -> bool {
    let flags = request.flags();
    flags & NLM_F_ACK != 0 && flags & NLM_F_DUMP != NLM_F_DUMP
}

/// The kernel's error text from an extended ack (`NETLINK_CAP_ACK` is set, so the original
/// request is not echoed: only its 16-byte header follows the errno).
fn ext_ack_message(msg: &Message) -> Option<String> {
    if msg.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let tlvs = msg.payload.get(4 + message::HEADER_LEN..)?;
    find_attr(tlvs, NLMSGERR_ATTR_MSG)
        .map(message::attr_string)
        .filter(|s| !s.is_empty())
}
