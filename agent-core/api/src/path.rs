//! Percent-encoding of the values that travel in API paths and query strings (endpoint ids
//! may contain `/`, label selectors contain `=` and `,`).

/// Encodes everything but RFC 3986 unreserved characters and `:`.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` sequences (and `+` as a space when `plus_is_space`, for query strings).
/// Returns `None` on a malformed escape or a result that is not UTF-8.
pub fn decode(value: &str, plus_is_space: bool) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Splits a query string into decoded `(key, value)` pairs.
pub fn query_pairs(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            Some((decode(k, true)?, decode(v, true)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in ["pod-name:default/web", "a b", "k8s:id=app1,x", "ünï"] {
            assert_eq!(decode(&encode(s), false).unwrap(), s);
        }
        assert_eq!(encode("container-id:abc"), "container-id:abc");
    }

    #[test]
    fn malformed_escapes() {
        assert_eq!(decode("%4", false), None);
        assert_eq!(decode("%zz", false), None);
        assert_eq!(decode("%ff", false), None);
    }

    #[test]
    fn query() {
        let pairs = query_pairs("family=ipv4&owner=a%20b&flag").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("family".into(), "ipv4".into()),
                ("owner".into(), "a b".into()),
                ("flag".into(), String::new())
            ]
        );
    }
}
