//! The native binary protocol: [`codec`] (bytes, shared with the client) and
//! [`server`] (one task per connection on the core that accepted it).

pub mod codec;
pub mod server;
