//! End-to-end tests: the real `tocsin` binary started as a process on a free
//! port and driven over HTTP, as a user or a monitoring tool would.
//!
//! Build the binary first (`cargo build -p tocsin`; tests/run does it), or
//! point TOCSIN_BIN at one.

mod alertmanager;
mod app;
mod aws_proxy;
mod aws_requests;
mod aws_stack;
mod aws_timeline;
mod bad_input;
mod browser;
mod cli;
mod config;
mod contacts;
mod cost;
mod escalation;
mod events_v2;
mod fault_injection;
mod generic;
mod health;
mod heartbeats;
mod incidents_api;
mod lambda_pipeline;
mod links;
mod maintenance;
mod prometheus;
mod providers;
mod rate_limit;
mod redelivery;
mod restart;
mod routing;
mod runtime_api;
mod secrets;
mod ses_feedback;
mod slack_interactions;
mod slack_threads;
mod template;
mod throttle;
mod timeline;
mod webhook;
mod webhook_secrets;
mod webhooks;
