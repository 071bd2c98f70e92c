//! `cilium monitor --type drop -o json` of an agent, read in the background, for tests that
//! assert what was dropped and with which identities.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cilium_api::models::MonitorEvent;

use crate::{bin, Agent};

/// `cilium monitor --type drop -o json` running in the background.
#[derive(Debug)]
pub struct DropMonitor {
    child: Child,
    events: mpsc::Receiver<MonitorEvent>,
}

impl DropMonitor {
    pub fn start(agent: &Agent) -> DropMonitor {
        let host = format!("unix://{}", agent.socket.display());
        let mut child = Command::new(bin("cilium"))
            .args(["-H", &host, "monitor", "--type", "drop", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cilium monitor");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(ev) = serde_json::from_str::<MonitorEvent>(&line) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        });
        // Let the subscription reach the agent.
        std::thread::sleep(Duration::from_millis(300));
        DropMonitor { child, events }
    }

    /// The first drop event matching `pred` within 5 s.
    pub fn expect(&self, what: &str, pred: impl Fn(&MonitorEvent) -> bool) -> MonitorEvent {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(ev) if pred(&ev) => return ev,
                Ok(ev) => seen.push(ev),
                Err(_) => break,
            }
        }
        panic!("no monitor event {what}; saw {seen:#?}");
    }
}

impl Drop for DropMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
