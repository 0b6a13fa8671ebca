//! How peers are named: the routing identities a ZMTP guard assigns, and their display in logs.
//!
//! A ROUTER socket names each peer by a routing identity. A peer may choose its own (libzmq's
//! `ZMQ_ROUTING_ID`); otherwise the accepting side makes one up. Identities that begin with a
//! zero byte are reserved for the accepting side (libzmq generates `0x00` + a 32-bit counter),
//! and the ZMTP guard of `majordomo-zmtp` uses that room to name a peer by its address:
//!
//! ```text
//! 0x00  family (4 or 6)  connection number (u32, big-endian)  IP address (4 or 16)  port (u16)
//! 0x00  0x01 (local)     connection number (u32, big-endian)
//! ```
//!
//! The second form names a peer on a Unix socket (`ipc://`), which has no address.
//!
//! [`Peer`] displays such an identity as `203.0.113.7:40122#15` in every log line that names the
//! peer, so the broker's logs carry addresses although zmq.rs never reports one. Other
//! identities display as [`crate::Hex`] does.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::Hex;

/// The first byte of every identity the accepting side assigns.
pub const ASSIGNED: u8 = 0x00;

/// The identity the guard assigns to connection number `connection` from `addr`.
pub fn assigned_identity(connection: u32, addr: SocketAddr) -> Vec<u8> {
    let mut id = Vec::with_capacity(24);
    id.push(ASSIGNED);
    match addr.ip() {
        IpAddr::V4(ip) => {
            id.push(4);
            id.extend_from_slice(&connection.to_be_bytes());
            id.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            id.push(6);
            id.extend_from_slice(&connection.to_be_bytes());
            id.extend_from_slice(&ip.octets());
        }
    }
    id.extend_from_slice(&addr.port().to_be_bytes());
    id
}

/// The family byte of an identity the guard assigns to a peer on a Unix socket.
const LOCAL: u8 = 1;

/// The identity the guard assigns to connection number `connection` on a Unix socket.
pub fn assigned_local_identity(connection: u32) -> Vec<u8> {
    let mut id = Vec::with_capacity(6);
    id.extend_from_slice(&[ASSIGNED, LOCAL]);
    id.extend_from_slice(&connection.to_be_bytes());
    id
}

/// The connection number in an identity made by [`assigned_local_identity`], if it is one.
pub fn parse_assigned_local(identity: &[u8]) -> Option<u32> {
    match identity {
        [ASSIGNED, LOCAL, a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// The address and connection number in an identity made by [`assigned_identity`], if it is one.
pub fn parse_assigned(identity: &[u8]) -> Option<(SocketAddr, u32)> {
    let (&[ASSIGNED, family], rest) = identity.split_first_chunk::<2>()? else {
        return None;
    };
    let (connection, rest) = rest.split_first_chunk::<4>()?;
    let connection = u32::from_be_bytes(*connection);
    let ip = match (family, rest.len()) {
        (4, 6) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&rest[..4]).ok()?)),
        (6, 18) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&rest[..16]).ok()?)),
        _ => return None,
    };
    let port = u16::from_be_bytes(rest[rest.len() - 2..].try_into().ok()?);
    Some((SocketAddr::new(ip, port), connection))
}

/// Displays a peer's routing identity for logs: `address:port#connection` for an identity the
/// guard assigned (`local#connection` on a Unix socket), otherwise as [`Hex`].
#[derive(Clone, Copy)]
pub struct Peer<'a>(pub &'a [u8]);

impl fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((addr, connection)) = parse_assigned(self.0) {
            return write!(f, "{addr}#{connection}");
        }
        match parse_assigned_local(self.0) {
            Some(connection) => write!(f, "local#{connection}"),
            None => fmt::Display::fmt(&Hex(self.0), f),
        }
    }
}

impl fmt::Debug for Peer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_identities_round_trip_and_display_as_addresses() {
        let v4: SocketAddr = "203.0.113.7:40122".parse().unwrap();
        let id = assigned_identity(15, v4);
        assert_eq!(id.len(), 12);
        assert_eq!(parse_assigned(&id), Some((v4, 15)));
        assert_eq!(Peer(&id).to_string(), "203.0.113.7:40122#15");

        let v6: SocketAddr = "[2001:db8::1]:5555".parse().unwrap();
        let id = assigned_identity(u32::MAX, v6);
        assert_eq!(id.len(), 24);
        assert_eq!(parse_assigned(&id), Some((v6, u32::MAX)));
        assert_eq!(Peer(&id).to_string(), "[2001:db8::1]:5555#4294967295");

        let local = assigned_local_identity(9);
        assert_eq!(parse_assigned_local(&local), Some(9));
        assert_eq!(parse_assigned(&local), None);
        assert_eq!(Peer(&local).to_string(), "local#9");
        assert_eq!(parse_assigned_local(&id), None);
    }

    #[test]
    fn other_identities_display_as_hex() {
        assert_eq!(Peer(b"worker-1").to_string(), "worker-1");
        // libzmq's own generated identities: 0x00 and a 32-bit counter.
        assert_eq!(Peer(&[0, 0, 0, 0, 7]).to_string(), "0x0000000007");
        assert_eq!(parse_assigned(&[0, 4, 0, 0, 0, 1, 127, 0, 0, 1, 0]), None);
        assert_eq!(
            parse_assigned(&[0, 5, 0, 0, 0, 1, 127, 0, 0, 1, 0, 1]),
            None
        );
    }
}
