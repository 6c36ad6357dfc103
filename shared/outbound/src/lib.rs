//! Tocsin's outbound HTTPS, shared by the Lambda functions and the local
//! stack: one reqwest client with rustls per notifier, built at start-up.

pub mod slack;
pub mod sns;
pub mod webhook;
