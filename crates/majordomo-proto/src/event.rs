//! What a core reports happened, for its driver to count.
//!
//! The sans-IO cores record no metrics themselves: they queue [`Event`]s, and the driver polls
//! them after each call (`poll_event` on [`crate::broker::BrokerCore`] and
//! [`crate::pirate::PirateQueue`]) and turns them into counters and histograms. The queue is
//! bounded by [`MAX_EVENTS`], so a user of a core that never polls holds no more than that.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::drops::DropReason;

/// Most events a core holds unpolled; past it, the oldest is forgotten. A driver that polls
/// after every call holds a handful.
pub const MAX_EVENTS: usize = 4096;

/// Something a core did that a driver may count.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A request was dropped unanswered (`majordomo_dropped_requests_total{reason}`).
    Dropped {
        /// Why.
        reason: DropReason,
    },
    /// `count` requests were dropped at once for the same reason (at shutdown, what was still
    /// held: [`DropReason::Drain`]); counted as `count` [`Event::Dropped`]s.
    DroppedMany {
        /// Why.
        reason: DropReason,
        /// How many.
        count: u64,
    },
    /// A message failed to decode and was dropped
    /// (`majordomo_protocol_errors_total{kind}`, `kind` from [`crate::DecodeError::kind`]).
    ProtocolError {
        /// The kind of error.
        kind: &'static str,
    },
    /// The broker forgot `service`: it has had neither workers nor queued requests for
    /// [`crate::broker::BrokerConfig::service_idle_grace`], or a new service took its place. A
    /// driver that keeps something per service (a metric series) forgets it too.
    ServiceForgotten {
        /// The service forgotten.
        service: Bytes,
    },
    /// A worker's reply to a request of `service` was taken, `latency` after the request
    /// arrived (`majordomo_request_duration_seconds{service}`).
    Replied {
        /// The service that answered.
        service: Bytes,
        /// From the request's arrival to its reply.
        latency: Duration,
    },
}

/// A bounded queue of [`Event`]s.
#[derive(Debug, Default)]
pub(crate) struct Events(VecDeque<Event>);

impl Events {
    /// Queues `event`, forgetting the oldest past [`MAX_EVENTS`].
    pub(crate) fn push(&mut self, event: Event) {
        if self.0.len() >= MAX_EVENTS {
            self.0.pop_front();
        }
        self.0.push_back(event);
    }

    /// The oldest event not yet polled.
    pub(crate) fn pop(&mut self) -> Option<Event> {
        self.0.pop_front()
    }
}
