//! A private etcd server per test ([`Etcd`]): `/usr/bin/etcd` on free loopback ports (client
//! and peer) with its own data directory, optionally over TLS with client certificates made
//! by the `openssl` command. It can be stopped and started again on the same data and ports
//! (outage tests); on drop the process is killed (by its pid only) and everything removed.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_core::kvstore::{self, Kvstore};

use crate::{stop_child, tail, text};

/// The etcd server of Debian's `etcd-server` package.
pub const ETCD: &str = "/usr/bin/etcd";

/// How long a start may take until the server answers.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether etcd tests can run: `/usr/bin/etcd` (and for TLS `openssl`) must be installed.
/// Outside CI they are skipped with a printed reason; under `CI=true` they must run.
pub fn require_etcd(test: &str, tls: bool) -> bool {
    let mut missing = Vec::new();
    if !Path::new(ETCD).exists() {
        missing.push(format!("{ETCD} (apt-get install etcd-server)"));
    }
    if tls && !program_exists("openssl") {
        missing.push("openssl".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: needs {}, and CI=true forbids skipping",
            missing.join(", ")
        );
    }
    eprintln!("SKIPPED {test}: needs {}", missing.join(", "));
    false
}

/// Whether `program` is on PATH.
pub fn program_exists(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Two distinct free loopback ports (bound together, then released).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local address").port())
}

/// The TLS files of a server started with [`Etcd::start_tls`].
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A private etcd server.
#[derive(Debug)]
pub struct Etcd {
    /// Data, log, certificates and configuration files; removed on drop.
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
    pub tls: Option<TlsFiles>,
    /// The network namespace it runs in (`None`: the test's own).
    pub netns: Option<String>,
    /// The address it listens on for clients and peers.
    pub host: std::net::IpAddr,
    child: Option<Child>,
}

impl Etcd {
    /// Starts a plain-HTTP server and waits until it answers.
    pub fn start() -> Etcd {
        Etcd::launch(false, None, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// Starts a plain-HTTP server inside network namespace `netns`, listening on `host` (an
    /// address of that namespace), for agents running in other namespaces of a test.
    pub fn start_in(netns: Option<&str>, host: std::net::IpAddr) -> Etcd {
        Etcd::launch(false, netns.map(str::to_string), host)
    }

    /// Starts a server that speaks only TLS to clients and requires a client certificate
    /// signed by its own CA (made in its directory), and waits until it answers.
    pub fn start_tls() -> Etcd {
        Etcd::launch(true, None, std::net::Ipv4Addr::LOCALHOST.into())
    }

    fn launch(tls: bool, netns: Option<String>, host: std::net::IpAddr) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("cilium-it-etcd-")
            .tempdir()
            .expect("temp dir");
        let tls = tls.then(|| make_certificates(dir.path()));
        let [client_port, peer_port] = free_ports::<2>();
        let mut etcd = Etcd {
            dir,
            client_port,
            peer_port,
            tls,
            netns,
            host,
            child: None,
        };
        if etcd.tls.is_some() {
            etcd.write_config_file();
        }
        // Another process may take a port between our probe and etcd's bind: new ports.
        for attempt in 0..3 {
            match etcd.try_start() {
                Ok(()) => return etcd,
                Err(log) if attempt < 2 && log.contains("address already in use") => {
                    let [c, p] = free_ports::<2>();
                    etcd.client_port = c;
                    etcd.peer_port = p;
                    let _ = std::fs::remove_dir_all(etcd.data_dir());
                    if etcd.tls.is_some() {
                        etcd.write_config_file();
                    }
                }
                Err(log) => panic!("etcd did not start:\n{}", tail(&log, 30)),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts the server again on the same data directory and ports, after [`Etcd::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        if let Err(log) = self.try_start() {
            panic!("etcd did not start again:\n{}", tail(&log, 30));
        }
    }

    /// Stops the server (SIGTERM to its pid, SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
    }

    /// The pid of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:<port>` (https with TLS).
    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!(
            "{scheme}://{}",
            std::net::SocketAddr::new(self.host, self.client_port)
        )
    }

    /// The `etcd.config` file (endpoints and, with TLS, the CA and client certificate).
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("etcd.config.yaml")
    }

    /// The `--kvstore-opt` pairs of a client: `etcd.config` with TLS, else `etcd.address`.
    pub fn kvstore_opts(&self) -> Vec<(String, String)> {
        if self.tls.is_some() {
            vec![(
                "etcd.config".to_string(),
                self.config_file().display().to_string(),
            )]
        } else {
            vec![("etcd.address".to_string(), self.client_url())]
        }
    }

    /// A client through [`kvstore::connect`].
    pub fn client(&self) -> std::sync::Arc<dyn Kvstore> {
        kvstore::connect("etcd", &self.kvstore_opts(), &self.dir.path().join("state"))
            .unwrap_or_else(|e| panic!("connect to etcd: {e}"))
    }

    /// Watches of `prefixes`, opened from the server's namespace (their connections stay
    /// there): what any node sees change under them. They end with the returned client.
    pub fn watch<const N: usize>(
        &self,
        prefixes: [&'static str; N],
    ) -> (std::sync::Arc<dyn Kvstore>, [kvstore::Watch; N]) {
        let opts = self.kvstore_opts();
        let state = self.dir.path().join("state");
        let open = move || {
            let client = kvstore::connect("etcd", &opts, &state)
                .unwrap_or_else(|e| panic!("connect to etcd: {e}"));
            let watches = prefixes.map(|p| {
                client
                    .watch_prefix(p)
                    .unwrap_or_else(|e| panic!("watch {p}: {e}"))
            });
            (client, watches)
        };
        match &self.netns {
            Some(netns) => crate::traffic::in_netns(netns, open),
            None => open(),
        }
    }

    /// The keys under `prefix` and their values, read from the server's namespace.
    pub fn list(&self, prefix: &'static str) -> Vec<(String, Vec<u8>)> {
        let opts = self.kvstore_opts();
        let state = self.dir.path().join("state");
        let read = move || {
            let client = kvstore::connect("etcd", &opts, &state)
                .unwrap_or_else(|e| panic!("connect to etcd: {e}"));
            client
                .list_prefix(prefix)
                .unwrap_or_else(|e| panic!("list {prefix}: {e}"))
                .into_iter()
                .map(|(k, e)| (k, e.value))
                .collect()
        };
        match &self.netns {
            Some(netns) => crate::traffic::in_netns(netns, read),
            None => read(),
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        text(&std::fs::read(self.log_file()).unwrap_or_default())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn write_config_file(&self) {
        let mut yaml = format!("---\nendpoints:\n- {}\n", self.client_url());
        if let Some(tls) = &self.tls {
            yaml.push_str(&format!(
                "ca-file: '{}'\n# client authentication\nkey-file: '{}'\ncert-file: '{}'\n",
                tls.ca.display(),
                tls.client_key.display(),
                tls.client_cert.display()
            ));
        }
        std::fs::write(self.config_file(), yaml).expect("write the etcd config file");
    }

    /// Spawns etcd and waits until it answers; `Err(log)` if it exits or never answers.
    fn try_start(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("etcd log file");
        let peer = format!(
            "http://{}",
            std::net::SocketAddr::new(self.host, self.peer_port)
        );
        let client = self.client_url();
        let mut cmd = match &self.netns {
            // `ip netns exec` execs etcd: the child's pid is etcd's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, ETCD]);
                c
            }
            None => Command::new(ETCD),
        };
        cmd.arg("--name=it")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=it={peer}"))
            .arg("--initial-cluster-state=new")
            .arg(format!("--initial-cluster-token=it-{}", self.client_port))
            .arg("--logger=zap")
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {ETCD}: {e}"));
        self.child = Some(child);
        let (opts, state, netns) = (
            self.kvstore_opts(),
            self.dir.path().join("state"),
            self.netns.clone(),
        );
        // A client in etcd's namespace (its sockets are made on a thread that entered it).
        let answers = move || {
            let (opts, state) = (opts.clone(), state.clone());
            let probe =
                move || kvstore::connect("etcd", &opts, &state).is_ok_and(|kv| kv.status().is_ok());
            match &netns {
                Some(ns) => crate::traffic::in_netns(ns, probe),
                None => probe(),
            }
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("etcd exited ({status})\n{}", self.log()));
                }
            }
            if answers() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "etcd did not answer within {START_TIMEOUT:?}\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Its data goes away with the directory: no need to wait for a clean stop.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes a CA and, signed by it, a server certificate for 127.0.0.1/localhost (also usable
/// as a client certificate: etcd's gateway connects to its own gRPC port with it) and a
/// client certificate, with the `openssl` command.
fn make_certificates(dir: &Path) -> TlsFiles {
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("openssl: {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            text(&out.stderr)
        );
    };
    std::fs::write(
        path("ca.cnf"),
        "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n\
         [dn]\nCN = cilium-it-etcd-ca\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .expect("write ca.cnf");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-config", "ca.cnf", "-days", "2"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(&ca);
    for (name, cn, usage) in [
        ("server", "127.0.0.1", "serverAuth,clientAuth"),
        ("client", "cilium-it-client", "clientAuth"),
    ] {
        std::fs::write(
            path(&format!("{name}.ext")),
            format!(
                "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage = {usage}\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n"
            ),
        )
        .expect("write extensions");
        let subject = format!("/CN={cn}");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut req = vec!["req", "-new", "-subj", subject.as_str()];
        req.extend(ec);
        req.extend(["-keyout", key.as_str(), "-out", csr.as_str()]);
        openssl(&req);
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
    }
    TlsFiles {
        ca: path("ca.crt"),
        server_cert: path("server.crt"),
        server_key: path("server.key"),
        client_cert: path("client.crt"),
        client_key: path("client.key"),
    }
}
