//! The proxy's sockets, made by hand because tokio cannot set their options: transparent
//! listeners carrying the reply mark, and upstream connections carrying the upstream mark
//! (the mark is set before `connect`, so that even the SYN carries it).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    bind, listen as nix_listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrStorage,
};
use tokio::net::{TcpSocket, TcpStream};

use super::ProxyError;

/// Pending connections a listener queues.
const BACKLOG: i32 = 1024;

/// A non-blocking, close-on-exec TCP socket of `addr`'s family.
fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

/// `setsockopt(IPPROTO_IPV6, IPV6_TRANSPARENT, 1)`, which nix does not wrap.
fn set_ipv6_transparent(fd: &OwnedFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open socket; the option value is a c_int that outlives the call and
    // its size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_TRANSPARENT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A listening socket on `addr` with `IP_TRANSPARENT` / `IPV6_TRANSPARENT` (so that
/// connections steered to it with `bpf_sk_assign` for a non-local original destination can
/// be answered), `IPV6_V6ONLY` on IPv6, `SO_REUSEADDR`, and `SO_MARK = mark` (unless 0), which
/// accepted sockets inherit. An unprivileged caller gets [`ProxyError::Privilege`].
pub(super) fn listen(addr: SocketAddr, mark: u32) -> Result<std::net::TcpListener, ProxyError> {
    let fail = |op: &'static str| move |source: io::Error| ProxyError::Socket { op, addr, source };
    let privilege = |option: &'static str| {
        move |source: io::Error| match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => ProxyError::Privilege {
                option,
                addr,
                source,
            },
            _ => ProxyError::Socket {
                op: "set a socket option",
                addr,
                source,
            },
        }
    };
    let fd = tcp_socket(&addr).map_err(fail("create a socket"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)
        .map_err(io::Error::from)
        .map_err(fail("set SO_REUSEADDR"))?;
    if addr.is_ipv4() {
        setsockopt(&fd, sockopt::IpTransparent, &true)
            .map_err(io::Error::from)
            .map_err(privilege("IP_TRANSPARENT"))?;
    } else {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)
            .map_err(io::Error::from)
            .map_err(fail("set IPV6_V6ONLY"))?;
        set_ipv6_transparent(&fd).map_err(privilege("IPV6_TRANSPARENT"))?;
    }
    if mark != 0 {
        setsockopt(&fd, sockopt::Mark, &mark)
            .map_err(io::Error::from)
            .map_err(privilege("SO_MARK"))?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(io::Error::from)
        .map_err(fail("bind"))?;
    let backlog = Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN);
    nix_listen(&fd, backlog)
        .map_err(io::Error::from)
        .map_err(fail("listen"))?;
    Ok(std::net::TcpListener::from(fd))
}

/// Whether a failure to create or bind an IPv6 loopback socket means that the host has no
/// IPv6 (module not loaded, or `::1` absent because IPv6 is disabled).
pub(super) fn ipv6_unavailable(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

/// Stops a listening socket from accepting: `shutdown(2)` on a listener moves it out of the
/// listening state at once (new connections are refused, queued ones reset), while the
/// descriptor stays open until its owner drops it.
pub(super) fn stop_listening(socket: &tokio::net::TcpListener) {
    if let Err(e) = nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Both)
    {
        tracing::debug!(error = %e, "proxy: shutdown of a listener failed");
    }
}

/// An unconnected socket for `addr` with `SO_MARK = mark` (unless 0).
pub(super) fn marked_socket(addr: &SocketAddr, mark: u32) -> io::Result<TcpSocket> {
    let fd = tcp_socket(addr)?;
    if mark != 0 {
        setsockopt(&fd, sockopt::Mark, &mark).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot set SO_MARK {mark:#x} on the upstream socket: {e}"),
            )
        })?;
    }
    Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
}

/// Connects to `addr` from a socket marked with `mark`, giving up after `timeout`
/// (`ErrorKind::TimedOut`).
pub(super) async fn connect(
    addr: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = marked_socket(&addr, mark)?;
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {} s", timeout.as_secs_f64()),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::fd::AsFd;

    use nix::sys::socket::getsockopt;

    use super::*;

    /// `SO_MARK` of a socket.
    fn mark_of(socket: &impl AsFd) -> io::Result<u32> {
        getsockopt(socket, sockopt::Mark).map_err(io::Error::from)
    }

    /// Binds the first free port of `first..first + 100`, a range of one test.
    fn listen_free(ip: std::net::IpAddr, mark: u32, first: u16) -> std::net::TcpListener {
        for port in first..first + 100 {
            match listen(SocketAddr::new(ip, port), mark) {
                Ok(l) => return l,
                Err(e) if e.is_addr_in_use() => continue,
                Err(e) => panic!("listen: {e}"),
            }
        }
        panic!("no free port");
    }

    #[test]
    fn listener_options_and_inherited_mark() {
        let v4 = listen_free(Ipv4Addr::LOCALHOST.into(), 0x5a5, 30000);
        assert_eq!(mark_of(&v4).expect("mark"), 0x5a5);
        let transparent = getsockopt(&v4, sockopt::IpTransparent).expect("IP_TRANSPARENT");
        assert!(transparent);
        v4.set_nonblocking(false).expect("blocking");
        let addr = v4.local_addr().expect("addr");
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        let (mut accepted, _) = v4.accept().expect("accept");
        // An accepted socket carries the listener's mark: replies leave with it.
        assert_eq!(mark_of(&accepted).expect("mark"), 0x5a5);
        client.write_all(b"x").expect("write");
        let mut buf = [0u8; 1];
        accepted.read_exact(&mut buf).expect("read");

        let v6 = listen_free(Ipv6Addr::LOCALHOST.into(), 7, 30000);
        assert_eq!(mark_of(&v6).expect("mark"), 7);
        assert!(getsockopt(&v6, sockopt::Ipv6V6Only).expect("IPV6_V6ONLY"));
    }

    #[test]
    fn stopped_listener_refuses_connections() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let std = listen_free(Ipv4Addr::LOCALHOST.into(), 0, 30100);
            let addr = std.local_addr().expect("addr");
            let l = tokio::net::TcpListener::from_std(std).expect("tokio listener");
            TcpStream::connect(addr)
                .await
                .expect("connect while listening");
            stop_listening(&l);
            let e = TcpStream::connect(addr)
                .await
                .expect_err("refused after stop");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        });
    }

    #[test]
    fn upstream_socket_carries_the_mark() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let server = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = server.local_addr().expect("addr");
            let unconnected = marked_socket(&addr, 0xc0de).expect("socket");
            assert_eq!(mark_of(&unconnected).expect("mark"), 0xc0de);
            let stream = connect(addr, 0xbeef, Duration::from_secs(5))
                .await
                .expect("connect");
            assert_eq!(mark_of(&stream).expect("mark"), 0xbeef);
            let plain = connect(addr, 0, Duration::from_secs(5))
                .await
                .expect("connect");
            assert_eq!(mark_of(&plain).expect("mark"), 0);
        });
    }

    /// Drops CAP_NET_ADMIN and CAP_NET_RAW from the calling thread's effective set
    /// (capabilities are per thread on Linux; the thread is thrown away afterwards).
    fn drop_net_caps() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Default, Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: header and data are the layout capget(2) expects for version 3.
        let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
        assert_eq!(rc, 0, "capget: {}", io::Error::last_os_error());
        const CAP_NET_ADMIN: u32 = 12;
        const CAP_NET_RAW: u32 = 13;
        data[0].effective &= !((1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW));
        // SAFETY: as above; capset(2) only changes this thread's capabilities.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        assert_eq!(rc, 0, "capset: {}", io::Error::last_os_error());
    }

    #[test]
    fn unprivileged_listen_is_a_clear_error() {
        let error = std::thread::spawn(|| {
            drop_net_caps();
            listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 30200)), 1)
        })
        .join()
        .expect("thread")
        .expect_err("no CAP_NET_ADMIN");
        assert!(
            matches!(
                error,
                ProxyError::Privilege {
                    option: "IP_TRANSPARENT",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("CAP_NET_ADMIN"), "{error}");
    }
}
