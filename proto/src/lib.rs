//! The `certfleet.v1` protocol: enrollment, the agent session stream and the admin API.
//!
//! Code is generated at build time into `OUT_DIR` from `proto/certfleet/v1/certfleet.proto`
//! with a vendored `protoc` (see `build.rs`), so building needs no system `protoc` and the
//! generated code cannot drift from the schema.

/// Generated messages and services for `certfleet.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("certfleet.v1");
}

/// Largest message either side accepts. Certificate chains and CSRs are a few KiB; anything
/// near this limit is hostile or broken.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
