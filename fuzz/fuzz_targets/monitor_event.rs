//! Monitor event decoding: the bytes of one `cilium_events` ring-buffer record through
//! `Event::from_bytes` (agent-core/src/datapath/abi.rs), `monitor::decode` (the packet
//! dissector) and every text form `cilium monitor` prints, then the record's JSON round trip
//! (the agent streams it on `GET /monitor`).
//!
//! Input: the raw record. Short inputs are also tried zero-padded to a full record so that
//! every input reaches the dissector. An input that is a JSON monitor record is also printed
//! the way `cilium monitor` prints what it reads from the agent.
#![no_main]

use std::mem::size_of;

use agent_core::api_server::stream::MonitorFilter;
use agent_core::datapath::abi::{Event, EVENT_DATA_LEN};
use agent_core::datapath::monitor;
use cilium_api::models::MonitorEvent;
use libfuzzer_sys::fuzz_target;

fn exercise(event: &Event) {
    assert!(event.packet().len() <= EVENT_DATA_LEN);
    let record = monitor::decode(event);
    for verbose in [false, true] {
        for hex in [false, true] {
            let _ = monitor::format_line(&record, verbose, hex);
        }
    }
    for filter in [
        MonitorFilter::Drop,
        MonitorFilter::Trace,
        MonitorFilter::Debug,
    ] {
        let _ = filter.matches(&record);
    }
    let json = serde_json::to_string(&record).expect("a monitor record serializes");
    let back: MonitorEvent = serde_json::from_str(&json).expect("a monitor record deserializes");
    assert_eq!(back, record, "JSON round trip of a monitor record");
}

fuzz_target!(|data: &[u8]| {
    let size = size_of::<Event>();
    match Event::from_bytes(data) {
        Some(event) => exercise(&event),
        None => assert!(data.len() < size, "from_bytes refused a full-size record"),
    }
    if data.len() < size {
        let mut padded = data.to_vec();
        padded.resize(size, 0);
        let event = Event::from_bytes(&padded).expect("a full-size record decodes");
        exercise(&event);
    }
    // `cilium monitor` formats the records it reads from the agent's JSON stream.
    if let Ok(record) = serde_json::from_slice::<MonitorEvent>(data) {
        for verbose in [false, true] {
            for hex in [false, true] {
                let _ = monitor::format_line(&record, verbose, hex);
            }
        }
    }
    // The `Lost N events` record, with N from the input.
    if let Some(n) = data.get(..8) {
        let n = u64::from_le_bytes(n.try_into().unwrap_or_default());
        let _ = monitor::format_line(&monitor::lost(n), true, true);
    }
});
