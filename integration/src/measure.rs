//! Measurements the benchmarks share: TCP request/response latency (1-byte ping-pong on one
//! connection, like netperf TCP_RR) and stream throughput (iperf3), between two namespaces.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::traffic::in_netns;

/// Round-trip latency percentiles, µs.
#[derive(Debug, Clone, Copy)]
pub struct Rr {
    pub p50: f64,
    pub p99: f64,
}

/// `rounds` 1-byte round trips (after 500 warm-up ones) from `client` to a server in
/// `server` listening on `port` (all addresses), reached at `ip`.
pub fn request_response(client: &str, server: &str, ip: IpAddr, port: u16, rounds: usize) -> Rr {
    let addr = SocketAddr::new(ip, port);
    let listener = in_netns(server, move || {
        TcpListener::bind(SocketAddr::new(
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            port,
        ))
        .expect("bind rr")
    });
    let echo = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let _ = conn.set_nodelay(true);
        let mut b = [0u8; 1];
        while conn.read_exact(&mut b).is_ok() {
            if conn.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut conn: TcpStream = in_netns(client, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect rr")
    });
    conn.set_nodelay(true).expect("nodelay");
    let mut samples = Vec::with_capacity(rounds);
    let mut b = [1u8; 1];
    for i in 0..rounds + 500 {
        let t = Instant::now();
        conn.write_all(&b).expect("rr write");
        conn.read_exact(&mut b).expect("rr read");
        if i >= 500 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(conn);
    let _ = echo.join();
    samples.sort_by(|a, b| a.total_cmp(b));
    Rr {
        p50: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
    }
}

/// iperf3 from `client` to a one-shot server in `server` at `ip:port` for `seconds`: Gbit/s.
pub fn stream(client: &str, server: &str, ip: IpAddr, port: u16, seconds: u32) -> f64 {
    let port = port.to_string();
    let mut srv = Command::new("ip")
        .args(["netns", "exec", server, "iperf3", "-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            client,
            "iperf3",
            "-c",
            &ip.to_string(),
            "-p",
            &port,
        ])
        .args(["-t", &seconds.to_string(), "-J"])
        .output()
        .expect("iperf3 -c");
    let _ = srv.kill();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 gave no result: {v}"))
        / 1e9
}

/// The median (upper middle) of a series.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn join(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// One setup's results over the rounds of a benchmark: RR on `rr_port` (`rr_rounds` round
/// trips) and a 2 s iperf3 stream on `stream_port` per round.
#[derive(Debug, Default)]
pub struct Series {
    pub p50: Vec<f64>,
    pub p99: Vec<f64>,
    pub gbps: Vec<f64>,
}

impl Series {
    /// One round from `client` to `server` at `ip`.
    pub fn measure(
        &mut self,
        client: &str,
        server: &str,
        ip: IpAddr,
        ports: (u16, u16),
        rr_rounds: usize,
    ) {
        let rr = request_response(client, server, ip, ports.0, rr_rounds);
        self.p50.push(rr.p50);
        self.p99.push(rr.p99);
        self.gbps.push(stream(client, server, ip, ports.1, 2));
    }

    /// Prints the medians (and each round's figures); returns median RR p50 and Gbit/s.
    pub fn report(&self, label: &str) -> (f64, f64) {
        let (p50, p99, gbps) = (
            median(self.p50.clone()),
            median(self.p99.clone()),
            median(self.gbps.clone()),
        );
        println!(
            "  {label:<44} RR p50 {p50:>6.1} µs  p99 {p99:>6.1} µs   stream {gbps:>6.2} Gbit/s   (rounds: p50 {}; Gbit/s {})",
            join(&self.p50, 0),
            join(&self.gbps, 1)
        );
        (p50, gbps)
    }
}
