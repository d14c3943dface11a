//! Request limits enforced at the edge. Every limit is configurable and
//! validated once at startup (`Limits::validate`).

use kv_engine::limits::{KEY_BYTES_MAX_DEFAULT, VALUE_BYTES_LIMIT, VALUE_BYTES_MAX_DEFAULT};

use crate::native::codec::{FRAME_HEADER_BYTES, PUT_FIXED_BYTES};

/// Ceiling for the configurable frame size: a u32 length, with room left
/// for what peer frames add around a client request (Raft and forwarding
/// headers), so no frame length can overflow.
pub const FRAME_BYTES_LIMIT: usize = u32::MAX as usize - (1 << 30);

/// Requests a connection may have in flight; the server stops reading a
/// connection at this depth until answers go out (backpressure, no error).
pub const PIPELINE_DEPTH_MAX_DEFAULT: usize = 1024;
/// Client connections per node, shared evenly by the cores.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    /// Largest frame accepted; at least a maximal PUT.
    pub frame_bytes_max: usize,
    pub pipeline_depth_max: usize,
    pub connections_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            frame_bytes_max: Limits::frame_bytes_for(KEY_BYTES_MAX_DEFAULT, VALUE_BYTES_MAX_DEFAULT),
            pipeline_depth_max: PIPELINE_DEPTH_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
        }
    }
}

impl Limits {
    /// The frame that carries a PUT of a maximal key and value.
    pub fn frame_bytes_for(key_bytes_max: usize, value_bytes_max: usize) -> usize {
        FRAME_HEADER_BYTES + PUT_FIXED_BYTES + key_bytes_max + value_bytes_max
    }

    /// Checks the limits fit together, with a message a person can act on.
    pub fn validate(&self) -> Result<(), String> {
        if self.key_bytes_max == 0 || self.key_bytes_max > u32::MAX as usize / 2 {
            return Err(format!("max key size {} must be between 1 and {}", self.key_bytes_max, u32::MAX / 2));
        }
        if self.value_bytes_max > VALUE_BYTES_LIMIT {
            return Err(format!(
                "max value size {} exceeds the hard limit of {VALUE_BYTES_LIMIT} bytes",
                self.value_bytes_max
            ));
        }
        let needed = Limits::frame_bytes_for(self.key_bytes_max, self.value_bytes_max);
        if self.frame_bytes_max < needed {
            return Err(format!(
                "max frame size {} cannot carry a maximal key and value; it must be at least {needed}",
                self.frame_bytes_max
            ));
        }
        if self.frame_bytes_max > FRAME_BYTES_LIMIT {
            return Err(format!("max frame size {} exceeds {FRAME_BYTES_LIMIT}", self.frame_bytes_max));
        }
        if self.pipeline_depth_max == 0 || self.connections_max == 0 {
            return Err("pipeline depth and connection limits must be at least 1".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_combinations_are_explained() {
        Limits::default().validate().unwrap();
        let small_frame = Limits { frame_bytes_max: 1000, ..Limits::default() };
        assert!(small_frame.validate().unwrap_err().contains("at least"));
        let huge_value = Limits { value_bytes_max: VALUE_BYTES_LIMIT + 1, ..Limits::default() };
        assert!(huge_value.validate().unwrap_err().contains("hard limit"));
    }
}
