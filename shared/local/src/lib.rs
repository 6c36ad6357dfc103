//! tocsin-local: Tocsin on one machine. A durable embedded store (SQLite)
//! implementing every port, in-process queues with at-least-once delivery
//! and a dead-letter store, console and outbox notifiers, and the stack that
//! serves every endpoint (tocsin-api's router) from one process.

pub mod layered;
pub mod notifiers;
pub mod stack;
pub mod store;
