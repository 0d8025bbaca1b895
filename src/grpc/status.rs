//! gRPC status codes and the `grpc-status` / `grpc-message` trailers.

use http::HeaderMap;

/// A gRPC status code as sent in `grpc-status` (0 = OK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(pub u32);

impl Code {
    pub const OK: Code = Code(0);
    pub const CANCELLED: Code = Code(1);
    pub const UNKNOWN: Code = Code(2);
    pub const INVALID_ARGUMENT: Code = Code(3);
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    pub const NOT_FOUND: Code = Code(5);
    pub const RESOURCE_EXHAUSTED: Code = Code(8);
    pub const UNIMPLEMENTED: Code = Code(12);
    pub const INTERNAL: Code = Code(13);
    pub const UNAVAILABLE: Code = Code(14);
    pub const UNAUTHENTICATED: Code = Code(16);

    /// The code with this canonical name (`"UNAVAILABLE"`), as configs write it.
    pub fn from_name(name: &str) -> Option<Code> {
        (0..NAMES.len() as u32)
            .map(Code)
            .find(|code| code.name() == name)
    }

    /// The canonical upper-case name, as gRPC tools print it.
    pub fn name(self) -> &'static str {
        NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("NON_STANDARD")
    }
}

/// Canonical names of codes 0 to 16, by code.
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.name())
    }
}

/// A status read from a response: its code and the (percent-decoded) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The `grpc-status` value.
    pub code: Code,
    /// `grpc-message`, empty when absent.
    pub message: String,
}

/// Why a `grpc-status` header could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusError {
    /// The header is absent: the response ended without a status.
    Missing,
    /// The header is present but not a decimal number.
    Malformed,
}

/// Reads `grpc-status` and `grpc-message` from response headers or trailers.
pub fn read_status(headers: &HeaderMap) -> Result<Status, StatusError> {
    let raw = headers.get("grpc-status").ok_or(StatusError::Missing)?;
    let code = std::str::from_utf8(raw.as_bytes())
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or(StatusError::Malformed)?;
    let message = headers
        .get("grpc-message")
        .map(|value| percent_decode(value.as_bytes()))
        .unwrap_or_default();
    Ok(Status {
        code: Code(code),
        message,
    })
}

/// Encodes a status message the way gRPC's wire format wants it: percent-encoding
/// of bytes outside printable ASCII and of '%' itself.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `grpc-message`; malformed escapes are kept as they are rather than lost.
pub fn percent_decode(raw: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(high), Some(low)) = (hex_digit(raw[i + 1]), hex_digit(raw[i + 2])) {
                bytes.push((high << 4) | low);
                i += 3;
                continue;
            }
        }
        bytes.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The value of one ASCII hex digit. Not `u8::from_str_radix`: it also takes a
/// sign, which would read `%+F` as the byte 0x0F.
fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let message = percent_encode("node 50% busy\nretry");
        trailers.insert("grpc-message", message.parse().unwrap());
        let status = read_status(&trailers).unwrap();
        assert_eq!(status.code, Code::UNAVAILABLE);
        assert_eq!(status.message, "node 50% busy\nretry");
        assert_eq!(status.code.to_string(), "14 UNAVAILABLE");
    }

    #[test]
    fn missing_and_malformed_status_are_told_apart() {
        assert_eq!(read_status(&HeaderMap::new()), Err(StatusError::Missing));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "ok".parse().unwrap());
        assert_eq!(read_status(&trailers), Err(StatusError::Malformed));
    }

    #[test]
    fn bad_percent_escapes_are_kept_verbatim() {
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"a%zzb"), "a%zzb");
        assert_eq!(percent_decode(b"%41"), "A");
    }

    #[test]
    fn an_escape_is_two_hex_digits_and_no_sign() {
        // Found by tests/decode_props.rs: "%+0" decoded to "\0".
        assert_eq!(percent_decode(b"%+0"), "%+0");
        assert_eq!(percent_decode(b"%+F%-1"), "%+F%-1");
        assert_eq!(percent_decode(b"%e9%C3%A9"), "\u{fffd}\u{e9}");
        assert_eq!(percent_decode(b"%0a%7E"), "\n~");
    }
}
