//! Size limits applied at decode time.

use bytes::Bytes;

use crate::DecodeError;

/// Bounds applied to every decoded message.
///
/// zmq.rs has no maximum message size of its own, so a message has already been read into memory
/// when it reaches the decoder; these limits keep an oversized message from travelling further
/// (into queues, to workers) and make it a typed error the caller logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest accepted message, summing the lengths of all frames. Default 16 MiB.
    pub max_message_size: usize,
    /// Most frames accepted in one message. Default 1024.
    pub max_frames: usize,
    /// Longest accepted service name. Default 255 bytes.
    pub max_service_name: usize,
}

impl Limits {
    /// Sets `max_message_size`; the field says what it means and its default.
    pub fn max_message_size(mut self, max_message_size: usize) -> Self {
        self.max_message_size = max_message_size;
        self
    }

    /// Sets `max_frames`; the field says what it means and its default.
    pub fn max_frames(mut self, max_frames: usize) -> Self {
        self.max_frames = max_frames;
        self
    }

    /// Sets `max_service_name`; the field says what it means and its default.
    pub fn max_service_name(mut self, max_service_name: usize) -> Self {
        self.max_service_name = max_service_name;
        self
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 16 * 1024 * 1024,
            max_frames: 1024,
            max_service_name: 255,
        }
    }
}

impl Limits {
    /// Checks frame count and total size of `frames` against these limits.
    pub fn check(&self, frames: &[Bytes]) -> Result<(), DecodeError> {
        if frames.len() > self.max_frames {
            return Err(DecodeError::TooManyFrames {
                count: frames.len(),
                max: self.max_frames,
            });
        }
        let size = frames.iter().map(Bytes::len).sum::<usize>();
        if size > self.max_message_size {
            return Err(DecodeError::MessageTooLarge {
                size,
                max: self.max_message_size,
            });
        }
        Ok(())
    }

    /// Checks a service name: not empty, not longer than [`Limits::max_service_name`].
    pub fn check_service(&self, name: &Bytes) -> Result<(), DecodeError> {
        if name.is_empty() {
            return Err(DecodeError::EmptyServiceName);
        }
        if name.len() > self.max_service_name {
            return Err(DecodeError::ServiceNameTooLong {
                len: name.len(),
                max: self.max_service_name,
            });
        }
        Ok(())
    }
}
