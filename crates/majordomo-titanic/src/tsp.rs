//! 9/TSP on the wire: the three services, their status frames, and the UUID format.
//!
//! "Every reply from a TSP service contains a status frame followed by zero or more content
//! frames. The status frame contains a string formatted as three digits, optionally followed by
//! a space and descriptive text. A client MUST NOT treat the text as significant in any way."

use bytes::Bytes;

/// The service that stores a new request: `[service, body...]` -> `[status, uuid]`.
pub const REQUEST_SERVICE: &str = "titanic.request";
/// The service that returns a reply if there is one: `[uuid]` -> `[status, body...]`.
pub const REPLY_SERVICE: &str = "titanic.reply";
/// The service that forgets a request and its reply: `[uuid]` -> `[status]`.
pub const CLOSE_SERVICE: &str = "titanic.close";

/// A TSP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 200: done (for `titanic.reply`, the service answered).
    Ok,
    /// 300: not yet; "The client SHOULD retry the request at a later time."
    Pending,
    /// 400: "an invalid or unknown UUID and SHOULD NOT retry."
    Unknown,
    /// 500: "The server cannot complete the request due to some internal error. The client
    /// SHOULD retry at some later time."
    Error,
}

impl Status {
    /// The three digits.
    pub fn code(self) -> u16 {
        match self {
            Self::Ok => 200,
            Self::Pending => 300,
            Self::Unknown => 400,
            Self::Error => 500,
        }
    }

    /// The status frame: the three digits.
    pub fn frame(self) -> Bytes {
        Bytes::from_static(match self {
            Self::Ok => b"200",
            Self::Pending => b"300",
            Self::Unknown => b"400",
            Self::Error => b"500",
        })
    }

    /// Reads a status frame: three digits, perhaps followed by a space and text (ignored).
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let (digits, rest) = frame.split_at_checked(3)?;
        if !(rest.is_empty() || rest[0] == b' ') {
            return None;
        }
        match digits {
            b"200" => Some(Self::Ok),
            b"300" => Some(Self::Pending),
            b"400" => Some(Self::Unknown),
            b"500" => Some(Self::Error),
            _ => None,
        }
    }
}

/// A request's identity: "The UUID MUST be formatted as 32 hexadecimal characters ('0' to '9'
/// and 'A' to 'Z' or 'a' to 'z')." Sent as 32 lowercase hex digits, read in either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A new random (version 4) UUID.
    pub fn new_v4() -> Self {
        Self(*uuid::Uuid::new_v4().as_bytes())
    }

    /// A new time-ordered (version 7) UUID: 48 bits of milliseconds then 74 random bits.
    pub fn new_v7() -> Self {
        Self(*uuid::Uuid::now_v7().as_bytes())
    }

    /// Reads 32 hex digits; `None` for anything else.
    pub fn parse(text: &[u8]) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in text.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Self(out))
    }

    /// The 32 lowercase hex digits, as a frame.
    pub fn frame(&self) -> Bytes {
        Bytes::from(self.to_string())
    }
}

impl std::fmt::Display for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A reply of `status` alone.
pub fn status_only(status: Status) -> Vec<Bytes> {
    vec![status.frame()]
}

/// Reads the one-frame `[uuid]` request of `titanic.reply` and `titanic.close`.
pub fn parse_uuid_request(frames: &[Bytes]) -> Option<Uuid> {
    match frames {
        [uuid] => Uuid::parse(uuid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_32_hex_digits_in_either_case() {
        let uuid = Uuid([0xab; 16]);
        assert_eq!(uuid.to_string(), "ab".repeat(16));
        assert_eq!(Uuid::parse("AB".repeat(16).as_bytes()), Some(uuid));
        assert_eq!(Uuid::parse(b"ab"), None);
        assert_eq!(Uuid::parse("zz".repeat(16).as_bytes()), None);
        assert_ne!(Uuid::new_v4(), Uuid::new_v4());
    }

    #[test]
    fn status_frames_are_three_digits_and_optional_text() {
        assert_eq!(Status::parse(b"200"), Some(Status::Ok));
        assert_eq!(Status::parse(b"300 pending"), Some(Status::Pending));
        assert_eq!(Status::parse(b"400x"), None);
        assert_eq!(Status::parse(b"404"), None);
        assert_eq!(Status::parse(b"20"), None);
        for status in [Status::Ok, Status::Pending, Status::Unknown, Status::Error] {
            assert_eq!(Status::parse(&status.frame()), Some(status));
            assert_eq!(status.frame(), status.code().to_string().as_bytes());
        }
    }
}
