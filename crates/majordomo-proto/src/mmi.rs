//! 8/MMI, the Majordomo Management Interface.
//!
//! "An MMI broker implementation MUST handle all services that start with "mmi." internally. It
//! MUST disconnect any workers that attempt to register services in this namespace."

use bytes::Bytes;

/// The namespace prefix the broker answers itself.
pub const PREFIX: &[u8] = b"mmi.";
/// `mmi.service`: is at least one worker registered for the service named in the body?
pub const SERVICE: &[u8] = b"mmi.service";
/// Reply of `mmi.service` when a worker serves the name.
pub const FOUND: &[u8] = b"200";
/// Reply of `mmi.service` when none does.
pub const NOT_FOUND: &[u8] = b"404";
/// `mmi.stats`, an extension of this implementation (8/MMI reserves the namespace for the broker
/// and lets it define services there): the reply is `200` and one frame with the broker's
/// counters and, under `per_service`, each service's queued requests and idle and busy workers
/// (see `broker::BrokerStats`), as of the request (counted among `requests`; its own reply is not
/// yet among `replies`), encoded by the driver (JSON in `majordomo-broker`; see
/// `broker::BrokerCore::with_stats_encoder`). With an empty body (as stock clients send) it
/// lists the busiest services, counting the rest in `services_omitted`; a body naming a page
/// ([`StatsQuery`]) lists that page instead. `mmi.*` requests, this one included, are counted in
/// `mmi_requests`, apart from the client traffic in `requests` and `replies`.
pub const STATS: &[u8] = b"mmi.stats";
/// `mmi.workers`, an extension of this implementation for the same reason as `mmi.stats` (8/MMI
/// defines only `mmi.service`, and an operator asking which workers serve what, and which of
/// them are stuck busy, has no other way to see it): the reply is `200` and one frame with a
/// page of the registered workers (see `broker::WorkersPage`), by service name then identity:
/// each worker's service, ROUTER identity (hex in JSON), whether it is idle or busy, and how
/// long it has been so and since it registered, as of the request, and the address it connects
/// from when its identity names it (the ZMTP guard's identities do; a worker that chose its own
/// has none listed). The body is a [`StatsQuery`] whose `prefix` selects services
/// and whose `offset` and `limit` count workers; an empty body asks for the first
/// [`DEFAULT_PAGE`] workers. At most `broker::MAX_WORKERS_PAGE` are listed, so the reply stays
/// well under the message limit; `workers_omitted` counts the rest. Encoded by the driver (JSON
/// in `majordomo-broker`; see `broker::BrokerCore::with_workers_encoder`); without an encoder,
/// `501`. Like every `mmi.*` service it is subject to the access rules (`access`: calling it
/// needs a rule allowing `mmi.workers` or `mmi.*`).
pub const WORKERS: &[u8] = b"mmi.workers";
/// `mmi.envelope`, an extension of this implementation: `200` means that the broker routes
/// extended reply envelopes (a client's frames before the empty delimiter come back before
/// every reply to it; see `broker::split_route`), so that a client may tag requests on one
/// connection. Brokers without it answer `501` (or `404`, as an unknown service): a client
/// must then send no frame before the delimiter.
pub const ENVELOPE: &[u8] = b"mmi.envelope";
/// Status of a successful extension reply.
pub const OK: &[u8] = b"200";
/// Reply to every other `mmi.*` service: "Any unimplemented services in the "mmi." namespace MUST
/// result in a reply "501" (Not implemented)."
pub const NOT_IMPLEMENTED: &[u8] = b"501";

/// Whether `service` is in the `mmi.` namespace.
pub fn is_mmi(service: &[u8]) -> bool {
    service.starts_with(PREFIX)
}

/// The status code frame for an `mmi.service` lookup.
pub fn service_status(found: bool) -> Bytes {
    Bytes::from_static(if found { FOUND } else { NOT_FOUND })
}

/// The page of services an `mmi.stats` request asks for: its first body frame, as text,
/// `key=value` pairs separated by spaces or `&`: `prefix=NAME` (services whose name starts with
/// it), `offset=N` (services to skip, in name order) and `limit=N` (most to list; the broker caps
/// it). Unknown keys and malformed values are ignored; an empty body asks for no page (the
/// busiest services).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsQuery {
    /// Only services whose name starts with this.
    pub prefix: Bytes,
    /// Services skipped, in name order.
    pub offset: usize,
    /// Most services listed.
    pub limit: usize,
}

/// Services listed by a page that names no `limit`.
pub const DEFAULT_PAGE: usize = 100;

impl StatsQuery {
    /// The page `body` asks for, or `None` for an empty (or absent) first frame.
    pub fn parse(body: &[Bytes]) -> Option<Self> {
        let text = body.first().filter(|frame| !frame.is_empty())?;
        let mut query = Self {
            limit: DEFAULT_PAGE,
            ..Self::default()
        };
        for pair in text
            .split(|b| *b == b' ' || *b == b'&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => continue,
            };
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
            };
            match key {
                b"prefix" => query.prefix = text.slice_ref(value),
                b"offset" => query.offset = number().unwrap_or(query.offset),
                b"limit" => query.limit = number().unwrap_or(query.limit),
                _ => {}
            }
        }
        Some(query)
    }

    /// The first body frame that asks for this page.
    pub fn encode(&self) -> Bytes {
        let mut text = format!("offset={} limit={}", self.offset, self.limit).into_bytes();
        if !self.prefix.is_empty() {
            text.extend_from_slice(b" prefix=");
            text.extend_from_slice(&self.prefix);
        }
        Bytes::from(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_queries_parse_and_round_trip() {
        assert_eq!(StatsQuery::parse(&[]), None);
        assert_eq!(StatsQuery::parse(&[Bytes::new()]), None);
        let q = StatsQuery::parse(&[Bytes::from_static(b"offset=5&limit=7 prefix=ab junk x=1")])
            .unwrap();
        assert_eq!(
            q,
            StatsQuery {
                prefix: Bytes::from_static(b"ab"),
                offset: 5,
                limit: 7
            }
        );
        assert_eq!(StatsQuery::parse(&[q.encode()]), Some(q));
        let defaults = StatsQuery::parse(&[Bytes::from_static(b"limit=nope")]).unwrap();
        assert_eq!(defaults.limit, DEFAULT_PAGE);
    }
}
