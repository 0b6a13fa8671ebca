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
/// `broker::BrokerCore::with_stats_encoder`). It takes no body; one is ignored.
pub const STATS: &[u8] = b"mmi.stats";
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
