//! Real traffic inside test namespaces: sockets are opened on a thread that has entered the
//! namespace (the socket stays bound to it), so tests exchange bytes and see exactly which
//! connection was refused, dropped or answered.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Runs `f` on a thread inside the network namespace `name` (under /var/run/netns).
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: a valid namespace fd; only this short-lived thread changes namespace.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

/// A TCP and UDP echo server on `addr` inside a namespace, stopped on drop.
#[derive(Debug)]
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(netns: &str, addr: SocketAddr) -> EchoServer {
        let (tcp, udp) = in_netns(netns, move || {
            (
                TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}")),
                UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}")),
            )
        });
        let stop = Arc::new(AtomicBool::new(false));
        tcp.set_nonblocking(true).expect("nonblocking");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let s1 = Arc::clone(&stop);
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut conn, _)) => {
                        let s = Arc::clone(&s1);
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                            let mut buf = [0u8; 65536];
                            while !s.load(Ordering::Relaxed) {
                                match conn.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if conn.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let s2 = Arc::clone(&stop);
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], peer);
                }
            }
        });
        EchoServer {
            stop,
            threads: vec![t1, t2],
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from inside `netns`; `Err` with `TimedOut` when the SYN goes unanswered.
pub fn tcp_connect(netns: &str, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    in_netns(netns, move || TcpStream::connect_timeout(&to, timeout))
}

/// Sends `msg` on an open connection and reads the echo (`Err` if none within 2 s).
pub fn tcp_exchange(stream: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    stream.read_exact(&mut got)?;
    Ok(got)
}

/// Connects, exchanges one message and closes; true when the echo came back.
pub fn tcp_works(netns: &str, to: SocketAddr) -> bool {
    match tcp_connect(netns, to, Duration::from_secs(1)) {
        Ok(mut s) => tcp_exchange(&mut s, b"ping\n").is_ok_and(|r| r == b"ping\n"),
        Err(_) => false,
    }
}

/// Like [`tcp_works`], from a socket with `SO_MARK` set to `mark` (what a host process
/// with `CAP_NET_ADMIN` can do to pass for the datapath): IPv4 only.
pub fn tcp_works_with_mark(netns: &str, to: SocketAddr, mark: u32) -> bool {
    let SocketAddr::V4(to) = to else {
        panic!("tcp_works_with_mark: IPv4 only, not {to}");
    };
    let connected = in_netns(netns, move || -> io::Result<TcpStream> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: plain socket calls on a descriptor owned right away; the option and address
        // structures outlive the calls that read them.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let raw = fd.as_raw_fd();
            let set = |name: libc::c_int, value: *const libc::c_void, len: usize| {
                let rc = libc::setsockopt(raw, libc::SOL_SOCKET, name, value, len as u32);
                if rc < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            set(libc::SO_MARK, (&mark as *const u32).cast(), 4)?;
            // A blocking connect gives up after the send timeout.
            let timeout = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            let size = std::mem::size_of::<libc::timeval>();
            set(
                libc::SO_SNDTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size,
            )?;
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: to.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*to.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::connect(raw, (&addr as *const libc::sockaddr_in).cast(), len) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(TcpStream::from(fd))
        }
    });
    match connected {
        Ok(mut s) => tcp_exchange(&mut s, b"ping\n").is_ok_and(|r| r == b"ping\n"),
        Err(_) => false,
    }
}

/// One UDP datagram to an echo server; true when it came back within 1 s.
pub fn udp_works(netns: &str, to: SocketAddr) -> bool {
    in_netns(netns, move || {
        let any: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        };
        let Ok(sock) = UdpSocket::bind(any) else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(1)));
        if sock.send_to(b"dgram", to).is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(sock.recv_from(&mut buf), Ok((5, _)))
    })
}

/// One ping from inside `netns` (1 s deadline); extra arguments such as `-I <addr>` first.
pub fn ping(netns: &str, extra: &[&str], ip: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-c", "1", "-W", "1"])
        .args(extra)
        .arg(ip)
        .output()
        .expect("run ping")
        .status
        .success()
}
