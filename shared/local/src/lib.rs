//! tocsin-local: Tocsin on one machine. A durable embedded store (SQLite)
//! implementing every port, in-process queues with at-least-once delivery
//! and a dead-letter store, console and outbox notifiers, and the HTTP
//! router that serves every endpoint in one process.

pub mod notifiers;
pub mod router;
pub mod stack;
pub mod store;
