//! The rtnetlink wire format: building requests (header, fixed part, attributes, nested
//! attributes) and walking the attributes of replies. Only what the agent sends and reads.

/// `struct nlmsghdr` length.
pub const HEADER_LEN: usize = 16;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// In an ack: the extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_GETNEIGH: u16 = 30;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_NET_NS_FD: u16 = 28;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const VETH_INFO_PEER: u16 = 1;

pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_FLAGS: u16 = 8;
pub const IFA_F_NODAD: u32 = 0x02;

pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_PREFSRC: u16 = 7;
pub const RTA_TABLE: u16 = 15;

pub const NDA_DST: u16 = 1;
pub const NDA_LLADDR: u16 = 2;

/// Extended ack attribute carrying the kernel's error message.
pub const NLMSGERR_ATTR_MSG: u16 = 1;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A request under construction: header, fixed-size family message, attributes.
#[derive(Debug, Clone)]
pub struct Request {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Request {
    /// Starts a message of `kind` with `flags` (NLM_F_REQUEST is added) and the fixed part.
    pub fn new(kind: u16, flags: u16, fixed: &[u8]) -> Request {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set by the socket
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        buf.extend_from_slice(fixed);
        pad(&mut buf);
        Request {
            buf,
            nests: Vec::new(),
        }
    }

    /// Appends raw bytes inside the current attribute (e.g. the `ifinfomsg` of a veth peer).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        pad(&mut self.buf);
        self
    }

    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        pad(&mut self.buf);
        self
    }

    pub fn attr_u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    /// Opens a nested attribute; close it with [`Request::end_nested`].
    pub fn begin_nested(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end_nested(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    pub fn flags(&self) -> u16 {
        u16_at(&self.buf, 6)
    }

    /// The finished message with `seq` and its length filled in.
    pub fn finish(&self, seq: u32) -> Vec<u8> {
        let mut out = self.buf.clone();
        let len = out.len() as u32;
        out[0..4].copy_from_slice(&len.to_ne_bytes());
        out[8..12].copy_from_slice(&seq.to_ne_bytes());
        out
    }
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(align4(buf.len()), 0);
}

/// One message of a reply: its type and everything after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// Splits a datagram into messages. Truncated trailing bytes are ignored.
pub fn split(mut data: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while data.len() >= HEADER_LEN {
        let len = u32_at(data, 0) as usize;
        if len < HEADER_LEN || len > data.len() {
            break;
        }
        out.push(Message {
            kind: u16_at(data, 4),
            flags: u16_at(data, 6),
            seq: u32_at(data, 8),
            payload: data[HEADER_LEN..len].to_vec(),
        });
        data = &data[align4(len).min(data.len())..];
    }
    out
}

/// Iterates the attributes in `data`: `(type without flags, payload)`.
pub fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16_at(data, 0) as usize;
        if len < 4 || len > data.len() {
            return None;
        }
        let kind = u16_at(data, 2) & NLA_TYPE_MASK;
        let payload = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((kind, payload))
    })
}

/// The first attribute of `kind` in `data`.
pub fn find_attr(data: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(data).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// A string attribute without its NUL terminator.
pub fn attr_string(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

pub fn u16_at(data: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    if let Some(s) = data.get(at..at + 2) {
        b.copy_from_slice(s);
    }
    u16::from_ne_bytes(b)
}

pub fn u32_at(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = data.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_ne_bytes(b)
}

pub fn i32_at(data: &[u8], at: usize) -> i32 {
    u32_at(data, at) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_with_nested_attributes() {
        let mut req = Request::new(RTM_NEWLINK, NLM_F_ACK, &[0u8; 16]);
        req.attr_str(IFLA_IFNAME, "lxc1")
            .begin_nested(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .end_nested();
        let bytes = req.finish(7);
        assert_eq!(u32_at(&bytes, 0) as usize, bytes.len());
        assert_eq!(u16_at(&bytes, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&bytes, 6), NLM_F_ACK | NLM_F_REQUEST);
        assert_eq!(u32_at(&bytes, 8), 7);
        let body = &bytes[HEADER_LEN + 16..];
        let found: Vec<(u16, Vec<u8>)> = attrs(body).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, IFLA_IFNAME);
        assert_eq!(attr_string(&found[0].1), "lxc1");
        assert_eq!(found[1].0, IFLA_LINKINFO);
        let kind = find_attr(&found[1].1, IFLA_INFO_KIND).unwrap();
        assert_eq!(attr_string(kind), "veth");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn split_stops_at_truncated_messages() {
        let a = Request::new(NLMSG_DONE, 0, &[1, 2, 3, 4]).finish(1);
        let b = Request::new(NLMSG_ERROR, 0, &[0; 8]).finish(2);
        let mut data = [a.clone(), b].concat();
        let messages = split(&data);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].kind, NLMSG_DONE);
        assert_eq!(messages[0].payload, vec![1, 2, 3, 4]);
        assert_eq!(messages[1].seq, 2);
        data.truncate(a.len() + 10);
        assert_eq!(split(&data).len(), 1);
    }

    #[test]
    fn malformed_attributes_end_the_walk() {
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(attrs(&[200, 0, 1, 0, 0, 0]).count(), 0);
        assert_eq!(attrs(&[5, 0, 1, 0, 9, 0, 0, 0]).count(), 1);
    }
}
