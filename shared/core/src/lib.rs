//! tocsin-core: the domain of Tocsin. Events and their providers, signatures,
//! the incident state machine, routing and message rendering, and the ports
//! (async traits) with the services that use them. No AWS SDK, no runtime,
//! no HTTP server: fast to compile, easy to test and fuzz.

pub mod answer;
pub mod auth;
pub mod config;
pub mod contacts;
#[cfg(feature = "contract")]
pub mod contract;
pub mod dedup;
pub mod dispatch;
pub mod escalation;
pub mod event;
pub mod health;
pub mod heartbeat;
pub mod incident;
pub mod ingest;
pub mod limits;
pub mod links;
pub mod maintenance;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod ports;
pub mod process;
pub mod providers;
pub mod ratelimit;
pub mod records;
pub mod render;
pub mod secrets;
pub mod signature;
pub mod slack;
pub mod sns;
pub mod throttle;
pub mod timeline;
