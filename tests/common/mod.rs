//! The one support module of the integration tests, by idea:
//! - [`run`]: running the `stagehand` binary with a scrubbed environment
//!   (and as another user, with stdin, killed at a point), kill-point traces;
//! - [`tree`]: the independent tree hasher (reads the disk with `std::fs`
//!   only, never through stagehand's library), copying and removing trees;
//! - [`demo`]: the demo artifact and the worlds each version must leave;
//! - [`sandbox`]: a state dir and a destination, snapshots, `list`/`status`;
//! - [`artifact`]: raw tar archives, layers and OCI layouts built in the test;
//! - [`cosign`]: keys, cosign 3 Sigstore bundles and their referrers, built in the test;
//! - [`certs`]: CAs and certificates made with `openssl` for the TLS tests;
//! - [`schema`]: validating `--json` output against docs/schemas/ (python3's jsonschema);
//! - [`host`]: CI or not, tools, root, mounts, ports, a hostile HTTP server;
//! - [`plmodel`], [`plstates`], [`plcheck`]: the power-loss checker (the op
//!   log's inode model, its crash states, the recorded scenarios checked);
//! - [`proof`] and [`registry`]: the flavours of the proof tests and of the
//!   registry tests (`use common::proof::*`, `use common::registry::*`);
//!   everything else is `use common::*`.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code, unused_imports)]

pub mod artifact;
pub mod certs;
pub mod cosign;
pub mod demo;
pub mod host;
pub mod plcheck;
pub mod plmodel;
pub mod plstates;
pub mod proof;
pub mod registry;
pub mod run;
pub mod sandbox;
pub mod schema;
pub mod tree;

pub use artifact::*;
pub use demo::*;
pub use host::*;
pub use run::*;
pub use sandbox::*;
pub use tree::*;
